"""Runs the local checks: one runner task per check with a kind, kept in step with
the local state (`sync()` after every change), plus the reaper for
`deregister_critical_service_after`.

Runner results go to LocalState.update_check, which wakes anti-entropy, so a status
change reaches the catalog at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.catalog.errors import InvalidRequest, NotFound
from mesh.catalog.structs import CRITICAL

from ..checks.runners import SCRIPTS_DISABLED, TTLCheck, make_runner
from ..logging import get_logger
from ..reads import ReadOptions
from .definitions import CheckDefinition

__all__ = ["CheckManager", "scripts_allowed"]

log = get_logger("checks")


def scripts_allowed(cfg: Any, source: str) -> bool:
    """Whether a script check from `source` (LocalState's: config, api, internal) may
    run. enable_script_checks allows any; enable_local_script_checks only those of
    config files, so an HTTP client cannot make the agent run a command."""
    return bool(cfg.enable_script_checks or (source == "config" and cfg.enable_local_script_checks))


class CheckManager:
    def __init__(self, agent: Any) -> None:
        self._agent = agent
        self._running: dict[str, tuple[CheckDefinition, Any, asyncio.Task[None]]] = {}
        self._critical_since: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._probes: dict[str, asyncio.Task[None]] = {}  # run_now probes in flight, by check ID

    def validate(self, defn: CheckDefinition) -> None:
        """A check registered through the API (HTTP, `mesh services register`): a
        script needs enable_script_checks; enable_local_script_checks is for the
        agent's own config files only, as in Consul."""
        if defn.kind == "script" and not scripts_allowed(self._agent.cfg, "api"):
            raise InvalidRequest(SCRIPTS_DISABLED)

    @staticmethod
    def maintenance_definition(check_id: str, name: str, notes: str, service_id: str) -> CheckDefinition:
        return CheckDefinition(check_id=check_id, name=name, notes=notes, service_id=service_id, kind="",
                               status=CRITICAL)

    def sync(self) -> None:
        """Start runners for new or changed checks, stop those of removed ones."""
        wanted = self._agent.local.checks
        for cid in list(self._running):
            defn, _, task = self._running[cid]
            if cid not in wanted or wanted[cid].defn != defn:
                task.cancel()
                probe = self._probes.pop(cid, None)
                if probe is not None:  # its result belongs to the old definition
                    probe.cancel()
                del self._running[cid]
                self._critical_since.pop(cid, None)
        now = time.monotonic()
        for cid, local in wanted.items():
            if local.status == CRITICAL and local.defn.deregister_critical_service_after:
                self._critical_since.setdefault(cid, now)  # critical from the start counts too
            if cid in self._running or not local.defn.kind:
                continue
            try:
                runner = make_runner(local.defn, self._on_update,
                                     enable_script_checks=scripts_allowed(self._agent.cfg, local.source),
                                     alias_fetch=self._alias_fetch(local.defn),
                                     output_max_size=self._agent.cfg.check_output_max_size)
            except InvalidRequest as exc:
                log.warning("check_not_started", check=cid, error=str(exc))
                continue
            if runner is None:
                continue
            task = asyncio.get_running_loop().create_task(self._guarded(cid, runner.run, "check_runner_crashed"),
                                                          name=f"check:{cid}")
            self._running[cid] = (local.defn, runner, task)
        if self._reaper is None and any(c.defn.deregister_critical_service_after for c in wanted.values()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop(), name="check-reaper")

    async def _guarded(self, cid: str, work: Callable[[], Awaitable[Any]], event: str) -> None:
        """A runner's loop or one probe: a bug in it is logged, never raised into the loop."""
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(event, check=cid)

    def run_now(self, service_id: str) -> list[str]:
        """Probe the service's checks at once, outside their intervals, and return the
        check IDs probed. A sidecar proxy calls for this when its listeners open, so
        its TCP check passes now rather than up to an interval later. TTL checks have
        nothing to probe; a check with a probe already in flight is not probed twice,
        so a client repeating the call cannot pile probes up."""
        loop = asyncio.get_running_loop()
        started: list[str] = []
        for cid, (defn, runner, _) in self._running.items():
            if defn.service_id != service_id or isinstance(runner, TTLCheck) or cid in self._probes:
                continue
            task = loop.create_task(self._guarded(cid, runner.check_once, "check_probe_now_failed"),
                                    name=f"check-now:{cid}")
            self._probes[cid] = task
            task.add_done_callback(lambda t, cid=cid: self._probe_done(cid, t))
            started.append(cid)
        return started

    def _probe_done(self, cid: str, task: asyncio.Task[None]) -> None:
        if self._probes.get(cid) is task:
            del self._probes[cid]

    def _on_update(self, check_id: str, status: str, output: str) -> None:
        if status == CRITICAL:
            self._critical_since.setdefault(check_id, time.monotonic())
        else:
            self._critical_since.pop(check_id, None)
        self._agent.local.update_check(check_id, status, output)

    def ttl_update(self, check_id: str, status: str, output: str) -> None:
        local = self._agent.local.checks.get(check_id)
        if local is None:
            raise NotFound(f"Unknown check ID {check_id!r}")
        entry = self._running.get(check_id)
        if entry is None or not isinstance(entry[1], TTLCheck):
            raise InvalidRequest(f"CheckID {check_id!r} does not have associated TTL")
        entry[1].update(status, output)

    def _alias_fetch(self, defn: CheckDefinition) -> Any:
        if defn.kind != "alias":
            return None
        agent = self._agent

        async def fetch() -> list[str] | None:
            node = defn.alias_node or agent.cfg.node_name
            if node == agent.cfg.node_name and defn.alias_service:
                if defn.alias_service not in agent.local.services:
                    return None
                return [c.status for c in agent.local.service_checks(defn.alias_service)]
            result = await agent.backend.read("health.node", {"name": node}, ReadOptions(stale=True))
            rows = result.value or []
            if defn.alias_service:
                rows = [r for r in rows if not r["ServiceID"] or r["ServiceID"] == defn.alias_service]
                if not any(r["ServiceID"] == defn.alias_service for r in rows):
                    return None
            return [r["Status"] for r in rows] if rows else None

        return fetch

    async def _reap_loop(self) -> None:
        """Deregister a service whose check stayed critical past its
        deregister_critical_service_after."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for cid, since in list(self._critical_since.items()):
                local = self._agent.local.checks.get(cid)
                if local is None:
                    self._critical_since.pop(cid, None)
                    continue
                limit = local.defn.deregister_critical_service_after
                if limit and now - since > limit and local.defn.service_id:
                    log.info("service_reaped", service=local.defn.service_id, check=cid)
                    self._agent.local.remove_service(local.defn.service_id)
                    self._critical_since.pop(cid, None)
                    self.sync()

    async def stop(self) -> None:
        tasks = [t for _, _, t in self._running.values()] + list(self._probes.values())
        if self._reaper is not None:
            tasks.append(self._reaper)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()
