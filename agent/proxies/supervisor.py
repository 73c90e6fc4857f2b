"""The agent's loop over its sidecar proxy processes: applies plan.py, nothing more.

Every second (sooner when local state changes, a process ends or a restart is due) it
collects the processes that ended, asks `wanted()` which sidecars this agent has, and
applies the plan: launch `<python> -m mesh connect proxy -sidecar-for <parent id>`,
SIGTERM and drain, SIGKILL past the drain, forget. A proxy learns everything else
from the agent's HTTP API; its environment carries only where that is and how to
authenticate:

    CONSUL_HTTP_ADDR       the agent's HTTP listener (127.0.0.1:<port> for a wildcard -client)
    CONSUL_HTTP_TOKEN      the sidecar's registration token, else the agent's default; unset if none
    CONNECT_SIDECAR_FOR    the parent service ID (as the -sidecar-for flag)
    MESH_PROXY_SUPERVISED  "1": started by the agent (a proxy started by hand for a
                           supervised sidecar refuses to run; see /v1/agent/mesh/proxies)

On start, pidfiles left by a previous agent are read first: a live process that is
verifiably a proxy for that sidecar is adopted (never a second one started), anything
else has its pidfile removed. `stop()` (a graceful agent stop) drains and stops every
proxy; an agent that dies without it leaves them serving, to be adopted next time.
With -dev there is no data-dir: files go to a private temporary directory that
`stop()` removes. All methods run on the event loop; none blocks for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.errors import MeshError

from ..logging import get_logger
from ..tasks import cancel_all
from .files import LOG_MAX_BYTES, PidFile, ProxyFiles
from .metrics import ADOPTIONS, EXITS, KILLS, LOOPS, PROXIES, RESTARTS, STARTS
from .plan import (
    Action,
    Forget,
    Kill,
    Policy,
    ProxyProcess,
    Start,
    State,
    Stop,
    adopted,
    became_ready,
    exited,
    kill_sent,
    launched,
    next_due,
    plan,
    spawn_failed,
    stop_requested,
)
from .process import ProxyHandle, adopt, spawn
from .procfs import adoption_problem, boot_id, read_proc
from .readiness import ReadyReport, format_time
from .view import Seen, proxy_entry, signal_name

__all__ = ["SidecarInfo", "SupervisorSettings", "ProxySupervisor", "ReportRejected", "default_command"]

log = get_logger("proxies")

# inherited variables that would point a proxy elsewhere than this agent, or (the
# client TLS ones) make it speak HTTPS to the plain HTTP address it is given
_SCRUBBED = ("MESH_HTTP_ADDR", "MESH_HTTP_TOKEN", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONNECT_PROXY_ID",
             "CONNECT_SIDECAR_FOR", "MESH_HTTP_SSL", "CONSUL_HTTP_SSL")


@dataclass(frozen=True)
class SidecarInfo:
    """What the supervisor needs of one sidecar registration."""

    parent_id: str
    token: str = ""


def default_command(parent_id: str) -> list[str]:
    """The agent's own interpreter running the mesh CLI: no PATH lookup, and the same
    installation as the agent."""
    return [sys.executable, "-m", "mesh", "connect", "proxy", "-sidecar-for", parent_id]


@dataclass(frozen=True)
class SupervisorSettings:
    enabled: bool = True
    directory: str = ""  # "": a private temporary directory, removed by stop() (-dev)
    default_token: str = ""
    policy: Policy = field(default_factory=Policy)
    tick: float = 1.0
    log_max_bytes: int = LOG_MAX_BYTES
    command: Callable[[str], list[str]] = default_command


class ReportRejected(MeshError):
    """A ready report from a process other than the one the agent supervises."""


class ProxySupervisor:
    def __init__(self, settings: SupervisorSettings, wanted: Callable[[], Mapping[str, SidecarInfo]], *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        """`wanted()`: proxy service ID -> SidecarInfo for every sidecar this agent
        should run a proxy for, read from local state at each step."""
        self.settings = settings
        self._wanted = wanted
        self._clock = clock
        self._wall = wall
        self._procs: dict[str, ProxyProcess] = {}
        self._handles: dict[str, ProxyHandle] = {}
        self._started_wall: dict[str, float] = {}
        self._reports: dict[str, tuple[ReadyReport, float]] = {}
        self._last_wanted: Mapping[str, SidecarInfo] = {}
        self._files: ProxyFiles | None = None
        self._temporary = False
        self._http_addr = ""
        self._boot = ""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopped = False

    @property
    def supervising(self) -> bool:
        return self.settings.enabled and not self._stopped

    @property
    def directory(self) -> str:
        return self._files.directory if self._files is not None else ""

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self, http_addr: str) -> None:
        """Adopt what a previous agent left running, then supervise. `http_addr` is the
        host:port proxies reach this agent's HTTP API at."""
        if not self.settings.enabled:
            log.info("proxy_supervision_off")
            return
        self._http_addr = http_addr
        directory = self.settings.directory
        if not directory:
            directory, self._temporary = tempfile.mkdtemp(prefix="mesh-proxies-"), True
        self._files = ProxyFiles(directory, self.settings.log_max_bytes)
        self._files.ensure_dir()
        self._boot = boot_id()
        self._adopt_all()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="proxy-supervisor")
        log.info("proxy_supervision_started", directory=directory, adopted=len(self._procs), agent=http_addr)

    async def stop(self) -> None:
        """Drain and stop every proxy (SIGTERM, SIGKILL past the drain timeout), all at
        once and bounded: the drain timeout plus two seconds."""
        self._stopped = True
        await self._cancel_loop()
        if self._files is None:
            return
        loop_deadline = self._clock() + self.settings.policy.drain_timeout + 2.0
        while self._procs and self._clock() < loop_deadline:
            self._wake.clear()
            self._step({})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake.wait()
        for proxy_id, proc in self._procs.items():
            log.error("proxy_not_stopped", proxy=proxy_id, pid=proc.pid, state=proc.state)
        self._release()
        if self._temporary:
            shutil.rmtree(self._files.directory, ignore_errors=True)
        log.info("proxy_supervision_stopped")

    async def detach(self) -> None:
        """Stop supervising and leave every proxy running with its pidfile, as an
        agent that crashed would (tests; a later supervisor adopts them)."""
        self._stopped = True
        await self._cancel_loop()
        self._release()

    async def _cancel_loop(self) -> None:
        if self._task is not None:
            await cancel_all([self._task])
            self._task = None

    def _release(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def wake(self) -> None:
        """Local state changed (or a process ended): look again now."""
        self._wake.set()

    # ---- the loop ------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                self._step(self._read_wanted())
            except Exception:  # a bug here must not end supervision for good
                log.exception("proxy_supervisor_step_failed")
            LOOPS.inc()
            delay = self.settings.tick
            due = next_due(self._procs)
            if due is not None:
                delay = max(0.01, min(delay, due - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _read_wanted(self) -> Mapping[str, SidecarInfo]:
        try:
            self._last_wanted = dict(self._wanted())
        except Exception:  # keep the last answer rather than stop every proxy
            log.exception("proxy_wanted_failed")
        return self._last_wanted

    def _step(self, wanted: Mapping[str, SidecarInfo]) -> None:
        now = self._clock()
        self._collect_exits(now)
        for action in plan({pid: info.parent_id for pid, info in wanted.items()}, self._procs, now):
            self._apply(action, wanted, now)
        self._publish()

    def _collect_exits(self, now: float) -> None:
        assert self._files is not None
        for proxy_id, handle in list(self._handles.items()):
            ended = handle.poll(now)
            if ended is None:
                continue
            handle.close()
            del self._handles[proxy_id]
            self._files.remove_pidfile(proxy_id)
            self._reports.pop(proxy_id, None)
            proc = self._procs[proxy_id]
            after = exited(proc, ended, self.settings.policy)
            fields = {"proxy": proxy_id, "pid": proc.pid, "code": ended.code, "signal": signal_name(ended.signal)}
            if after is None:
                EXITS.labels("stopped").inc()
                log.info("proxy_stopped", **fields)
                del self._procs[proxy_id]
                self._started_wall.pop(proxy_id, None)
                continue
            EXITS.labels("crashed").inc()
            log.warning("proxy_exited", **fields, ran=round(ended.at - proc.started_at, 3),
                        restart_in=round(after.restart_at - now, 3), failures=after.failures,
                        log_file=self._files.log_path(proxy_id), reason=ended.reason or None)
            self._procs[proxy_id] = after

    def _apply(self, action: Action, wanted: Mapping[str, SidecarInfo], now: float) -> None:
        proxy_id = action.proxy_id
        if isinstance(action, Start):
            self._launch(proxy_id, wanted[proxy_id], now)
            return
        if isinstance(action, Forget):
            self._procs.pop(proxy_id, None)
            self._started_wall.pop(proxy_id, None)
            self._reports.pop(proxy_id, None)
            return
        proc, handle = self._procs[proxy_id], self._handles.get(proxy_id)
        if isinstance(action, Stop):
            sent = handle.send(signal.SIGTERM) if handle is not None else False
            self._procs[proxy_id] = stop_requested(proc, now, self.settings.policy)
            log.info("proxy_stopping", proxy=proxy_id, pid=proc.pid, drain=self.settings.policy.drain_timeout,
                     signalled=sent)
        elif isinstance(action, Kill):
            if handle is not None:
                handle.kill()
            self._procs[proxy_id] = kill_sent(proc)
            KILLS.inc()
            log.warning("proxy_killed", proxy=proxy_id, pid=proc.pid,
                        reason=f"still running {self.settings.policy.drain_timeout}s after SIGTERM")
        if handle is None:  # cannot happen: a live state always has a handle; do not wait forever
            self._procs.pop(proxy_id, None)

    def _launch(self, proxy_id: str, info: SidecarInfo, now: float) -> None:
        assert self._files is not None
        prev = self._procs.get(proxy_id)
        argv = self.settings.command(info.parent_id)
        try:
            log_fd = self._files.open_log(proxy_id)
            try:
                handle = spawn(argv, self._environment(info), log_fd)
            finally:
                os.close(log_fd)
        except OSError as exc:
            after = spawn_failed(prev, proxy_id, info.parent_id, f"launch failed: {exc.strerror or exc}", now,
                                 self.settings.policy)
            self._procs[proxy_id] = after
            EXITS.labels("spawn_failed").inc()
            log.error("proxy_launch_failed", proxy=proxy_id, command=argv, error=exc.strerror or str(exc),
                      restart_in=round(after.restart_at - now, 3))
            return
        self._procs[proxy_id] = launched(prev, proxy_id, info.parent_id, handle.pid, handle.start_time, now)
        self._handles[proxy_id] = handle
        self._started_wall[proxy_id] = self._wall()
        self._reports.pop(proxy_id, None)
        handle.watch(asyncio.get_running_loop(), self.wake)
        record = PidFile(proxy_id, info.parent_id, handle.pid, handle.start_time, self._boot,
                         self._started_wall[proxy_id])
        try:
            self._files.write_pidfile(record)
        except OSError as exc:
            # it runs, but an agent restarted after a crash would not find it
            log.error("proxy_pidfile_write_failed", proxy=proxy_id, error=exc.strerror)
        STARTS.inc()
        if prev is not None:
            RESTARTS.inc()
        log.info("proxy_started", proxy=proxy_id, pid=handle.pid, restarts=self._procs[proxy_id].restarts,
                 command=argv, log_file=self._files.log_path(proxy_id))

    def _environment(self, info: SidecarInfo) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env["CONSUL_HTTP_ADDR"] = self._http_addr
        token = info.token or self.settings.default_token
        if token:
            env["CONSUL_HTTP_TOKEN"] = token
        env["CONNECT_SIDECAR_FOR"] = info.parent_id
        env["MESH_PROXY_SUPERVISED"] = "1"
        return env

    def _adopt_all(self) -> None:
        assert self._files is not None
        now = self._clock()
        for path, record in self._files.pidfiles():
            if record is None:
                log.warning("proxy_pidfile_unreadable", path=path)
                self._files.remove_path(path)
                continue
            problem = adoption_problem(read_proc(record.pid), record.start_time, record.boot_id, self._boot,
                                       record.parent_id)
            if problem is None and record.proxy_id in self._procs:
                problem = "another pidfile already names a process for this proxy"
            if problem is not None:
                log.info("proxy_pidfile_removed", proxy=record.proxy_id, pid=record.pid, reason=problem)
                self._files.remove_path(path)
                continue
            handle = adopt(record.pid, record.start_time)
            handle.watch(asyncio.get_running_loop(), self.wake)
            self._handles[record.proxy_id] = handle
            proc = adopted(record.proxy_id, record.parent_id, record.pid, record.start_time, now)
            early = self._reports.get(record.proxy_id)
            if early is not None and early[0].pid in (0, record.pid):
                # it reported between the HTTP listener's start and this adoption
                proc = became_ready(proc, now)
            self._procs[record.proxy_id] = proc
            self._started_wall[record.proxy_id] = record.started_wall
            ADOPTIONS.inc()
            log.info("proxy_adopted", proxy=record.proxy_id, pid=record.pid,
                     started=format_time(record.started_wall))

    def _publish(self) -> None:
        counts = dict.fromkeys(State, 0)
        for proc in self._procs.values():
            counts[proc.state] += 1
        for state, count in counts.items():
            PROXIES.labels(state.value).set(count)

    # ---- what the HTTP API reads and writes ------------------------------------------------
    def report_ready(self, proxy_id: str, report: ReadyReport) -> None:
        """A proxy says its listeners are open (and what it serves); a report with a
        body replaces the previous one. Raises ReportRejected when a different process
        than the supervised one reports."""
        proc = self._procs.get(proxy_id)
        if proc is not None and proc.pid and report.pid and report.pid != proc.pid:
            raise ReportRejected(f"proxy {proxy_id} is supervised by this agent as pid {proc.pid}; "
                                 f"this report came from pid {report.pid}")
        previous = self._reports.get(proxy_id)
        if report == ReadyReport() and previous is not None:
            report = previous[0]  # an empty body says "still ready": what it reported stands
        self._reports[proxy_id] = (report, self._wall())
        if proc is not None:
            after = became_ready(proc, self._clock())
            if after.state != proc.state:
                log.info("proxy_ready", proxy=proxy_id, pid=proc.pid,
                         after=round(self._clock() - proc.started_at, 3), public=report.public or None)
            self._procs[proxy_id] = after
            self._publish()

    def describe(self) -> dict[str, dict[str, Any]]:
        """Every sidecar proxy of this agent, keyed by proxy service ID, for
        GET /v1/agent/mesh/proxies."""
        wanted = self._read_wanted()
        ids = sorted(set(wanted) | set(self._procs))
        for stale in set(self._reports) - set(ids):
            del self._reports[stale]
        return {proxy_id: self._entry(proxy_id, wanted.get(proxy_id)) for proxy_id in ids}

    def _entry(self, proxy_id: str, info: SidecarInfo | None) -> dict[str, Any]:
        proc = self._procs.get(proxy_id)
        report, reported_at = self._reports.get(proxy_id, (None, None))
        parent = info.parent_id if info is not None else proc.parent_id if proc is not None else ""
        log_file = self._files.log_path(proxy_id) if self._files is not None and self.supervising else ""
        seen = Seen(proxy_id, parent, self.supervising, proc, report, reported_at,
                    self._started_wall.get(proxy_id), log_file)
        return proxy_entry(seen, self._clock(), self._wall())
