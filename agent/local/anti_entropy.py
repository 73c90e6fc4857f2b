"""Anti-entropy: the agent is the authority for its own node's catalog entries.

`plan_sync` (pure) compares what the agent holds locally with what the catalog holds
for its node and says what to register and deregister; `AntiEntropy` runs it: at once
after a local change (debounced), and in full about every minute (scaled with the
cluster size as Consul does, jittered), retrying sooner after a failure. Something the
catalog lost or that somebody deregistered through the catalog API comes back;
something the agent no longer has is removed. `serfHealth` belongs to the servers
and is left alone, except that a node the catalog holds without one gets it (passing:
the agent is evidently alive) with its first registration, so the leader can fail the
node even if none of its heartbeats ever reached it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest, encode
from mesh.catalog.errors import MeshError
from mesh.catalog.health import SERF_CHECK_ID, serf_check
from mesh.catalog.structs import PASSING, Check, Node, Service, evolve, row_from_wire, same_content

from ..backend import Backend
from ..logging import get_logger
from ..metrics import AE
from ..reads import ReadOptions

__all__ = ["SyncPlan", "plan_sync", "AntiEntropy", "scaled_interval"]

log = get_logger("anti_entropy")


@dataclass
class SyncPlan:
    register_node: bool = False
    add_serf_check: bool = False
    services: list[str] = field(default_factory=list)
    deregister_services: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    deregister_checks: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.register_node or self.add_serf_check or self.services or self.deregister_services
                    or self.checks or self.deregister_checks)


def _node_differs(local: Node, remote: Node) -> bool:
    return (local.address, local.id, local.tagged_addresses, local.meta) != (
        remote.address, remote.id, remote.tagged_addresses, remote.meta)


def plan_sync(
    node: Node,
    services: dict[str, Service],
    checks: dict[str, Check],
    remote: dict[str, Any] | None,
) -> SyncPlan:
    """What to write so the catalog's view of this node equals the local one."""
    plan = SyncPlan()
    if remote is None:
        plan.register_node = True
        plan.add_serf_check = True
        plan.services = sorted(services)
        plan.checks = sorted(c for c in checks if c != SERF_CHECK_ID)
        return plan
    r_node: Node = remote["node"]
    r_services: dict[str, Service] = remote["services"]
    r_checks: dict[str, Check] = remote["checks"]
    plan.register_node = _node_differs(node, r_node)
    plan.add_serf_check = SERF_CHECK_ID not in r_checks
    for sid, svc in sorted(services.items()):
        other = r_services.get(sid)
        if other is None:
            plan.services.append(sid)
            continue
        mine = evolve(svc, node=other.node)
        if svc.enable_tag_override:
            mine = evolve(mine, tags=other.tags)  # tags edited through the catalog survive
        if not same_content(mine, other):
            plan.services.append(sid)
    plan.deregister_services = sorted(set(r_services) - set(services))
    for cid, check in sorted(checks.items()):
        if cid == SERF_CHECK_ID:
            continue
        other_check = r_checks.get(cid)
        if other_check is None:
            plan.checks.append(cid)
            continue
        mine_check = evolve(check, node=other_check.node, service_name=other_check.service_name,
                            service_tags=other_check.service_tags)
        if not same_content(mine_check, other_check):
            plan.checks.append(cid)
    plan.deregister_checks = sorted(
        cid for cid in set(r_checks) - set(checks)
        if cid != SERF_CHECK_ID and r_checks[cid].service_id not in plan.deregister_services
    )
    return plan


def scaled_interval(base: float, nodes: int, rng: random.Random) -> float:
    """Consul's full-sync period: base + random(0, factor * base), factor growing with
    log2 of the cluster size past 128 nodes."""
    factor = 1 if nodes <= 128 else math.ceil(math.log2(nodes) - math.log2(128)) + 1
    return base + rng.random() * factor * base


class AntiEntropy:
    """Runs plan_sync against the servers. `view()` returns the local truth."""

    def __init__(
        self,
        backend: Backend,
        view: Callable[[], tuple[Node, dict[str, Service], dict[str, Check]]],
        interval: float,
        rng: random.Random | None = None,
        service_token: Callable[[str], str] = lambda service_id: "",
    ) -> None:
        """`service_token(id)`: the token a local service was registered with; its
        writes carry it (as Consul's agents do), and the agent's own token when none."""
        self._backend = backend
        self._view = view
        self._service_token = service_token
        self._interval = interval
        self._rng = rng or random.Random()
        self._trigger = asyncio.Event()
        self._cluster_size = 1
        self.synced = asyncio.Event()

    def trigger(self) -> None:
        """A local change: sync soon (changes within a few ms are pushed together)."""
        self._trigger.set()

    async def run(self) -> None:
        delay = 0.0
        while True:
            try:
                await asyncio.wait_for(self._trigger.wait(), delay)
                await asyncio.sleep(0.02)  # debounce a burst of local changes
            except TimeoutError:
                pass
            self._trigger.clear()
            AE.runs.inc()
            try:
                await self.sync_once()
                self.synced.set()
                delay = scaled_interval(self._interval, self._cluster_size, self._rng)
            except MeshError as exc:
                AE.failures.inc()
                log.warning("anti_entropy_failed", error=str(exc))
                delay = 2.0 + self._rng.random() * 3.0  # servers unreachable: retry soon

    async def sync_once(self) -> SyncPlan:
        node, services, checks = self._view()
        result = await self._backend.read("internal.node_state", {"name": node.node}, ReadOptions(stale=True))
        remote = _remote_rows(result.value)
        if result.value is not None and "cluster_size" in result.value:
            self._cluster_size = int(result.value["cluster_size"])
        plan = plan_sync(node, services, checks, remote)
        if plan.empty:
            return plan
        writes: list[tuple[bytes, str | None]] = []
        service_checks = {cid: c for cid, c in checks.items() if c.service_id}
        done_checks: set[str] = set()
        for sid in plan.services:
            own = tuple(c for c in service_checks.values() if c.service_id == sid)
            done_checks.update(c.check_id for c in own)
            writes.append((_register(node, services[sid], own), self._service_token(sid) or None))
        rest = tuple(checks[cid] for cid in plan.checks if cid not in done_checks)
        if plan.add_serf_check:
            rest += (serf_check(PASSING),)
        if rest or (plan.register_node and not plan.services):
            writes.append((_register(node, None, rest), None))
        for sid in plan.deregister_services:
            writes.append((encode(MessageType.DEREGISTER, DeregisterRequest(node.node, service_id=sid),
                                  _rid(self._rng)), None))
        for cid in plan.deregister_checks:
            writes.append((encode(MessageType.DEREGISTER, DeregisterRequest(node.node, check_id=cid),
                                  _rid(self._rng)), None))
        results = await asyncio.gather(*(self._backend.apply(raw, token) for raw, token in writes),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException) or (isinstance(r, dict) and "Error" in r)]
        AE.writes.inc(len(writes))
        if errors:
            first = errors[0]
            raise MeshError(str(first["Error"]) if isinstance(first, dict) else str(first))
        log.debug("anti_entropy_synced", services=plan.services, deregistered=plan.deregister_services,
                  checks=plan.checks, deregistered_checks=plan.deregister_checks)
        return plan


def _rid(rng: random.Random) -> bytes:
    return rng.getrandbits(128).to_bytes(16, "big")


def _register(node: Node, service: Service | None, checks: tuple[Check, ...]) -> bytes:
    req = RegisterRequest(node=node, service=service, checks=checks)
    return encode(MessageType.REGISTER, req, random.getrandbits(128).to_bytes(16, "big"))


def _remote_rows(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None or value.get("node") is None:
        return None
    return {
        "node": row_from_wire(Node, value["node"]),
        "services": {k: row_from_wire(Service, v) for k, v in value["services"].items()},
        "checks": {k: row_from_wire(Check, v) for k, v in value["checks"].items()},
    }
