"""The proxy supervisor's decisions, pure: no processes, no files, no clocks.

The agent keeps one sidecar proxy process per sidecar service it registered. This
module holds what it knows about each process (`ProxyProcess`, a frozen value replaced
at every event) and decides what to do next (`plan`): start what is wanted and not
running, restart what crashed once its backoff has passed, drain what is no longer
wanted and kill what outstays its drain. The shell (supervisor.py) applies the actions
and reports what happened through the transition functions; `now` is always the
caller's monotonic time, so tests run any schedule with a fake clock.

States::

    (none) --Start--> starting --ready report--> ready
    adopted from a pidfile: running --ready report--> ready
    starting|running|ready --exit--> backoff --restart_at passed, still wanted--> starting
    starting|running|ready --not wanted--> stopping (SIGTERM) --drain passed--> SIGKILL
    stopping --exit--> (none)          backoff --not wanted--> (none)

Backoff: a process that dies sooner than `reset_after` after its start counts one more
consecutive failure; the delay before the next start is `initial * 2**(failures-1)`,
capped at `max_backoff`. A run of `reset_after` or longer resets the count, so a proxy
that crashes once a day restarts after `initial` every time. A clean exit (code 0) of a
wanted proxy is treated as a crash: it is meant to run until told to stop.

Only one process per proxy service ID is ever tracked, so a sidecar re-registered while
its old process drains gets a new one only after the old one is gone (no two processes
bind the same port).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

__all__ = [
    "State",
    "Policy",
    "Exit",
    "ProxyProcess",
    "Start",
    "Stop",
    "Kill",
    "Forget",
    "Action",
    "backoff_delay",
    "launched",
    "adopted",
    "became_ready",
    "exited",
    "spawn_failed",
    "stop_requested",
    "kill_sent",
    "plan",
    "next_due",
    "LIVE_STATES",
]


class State(enum.StrEnum):
    STARTING = "starting"  # launched by this agent, not reported ready yet
    RUNNING = "running"  # adopted from a previous agent; ready again at its next report
    READY = "ready"  # the proxy said its listeners are open
    BACKOFF = "backoff"  # exited while wanted; starts again at restart_at
    STOPPING = "stopping"  # sent SIGTERM; SIGKILL at stop_deadline


# states in which a process exists and may be signalled
LIVE_STATES = frozenset({State.STARTING, State.RUNNING, State.READY, State.STOPPING})


@dataclass(frozen=True)
class Policy:
    """Restart and drain timing. Defaults: 1 s doubling to 30 s, reset after a 60 s
    run (kubelet's CrashLoopBackOff shape, shorter: a proxy is cheap to start), 5 s to
    drain (a proxy closes its listeners at once and lets open connections finish)."""

    initial_backoff: float = 1.0
    max_backoff: float = 30.0
    reset_after: float = 60.0
    drain_timeout: float = 5.0


@dataclass(frozen=True)
class Exit:
    """How a process ended. `code` and `signal` are None when unknown: a process
    adopted from a previous agent is not our child, so only its absence is seen."""

    at: float
    code: int | None = None
    signal: int | None = None
    reason: str = ""  # e.g. a launch failure's error


@dataclass(frozen=True)
class ProxyProcess:
    """What the supervisor knows about the process of one sidecar proxy."""

    proxy_id: str
    parent_id: str
    state: State
    pid: int = 0
    start_time: int = 0  # /proc/<pid>/stat starttime: tells this process from a recycled pid
    adopted: bool = False
    started_at: float = 0.0  # when launched or adopted
    restarts: int = 0  # launches after the first one
    failures: int = 0  # consecutive short runs: the backoff exponent
    restart_at: float = 0.0  # BACKOFF: when it may start again
    stop_deadline: float = 0.0  # STOPPING: when SIGTERM turns into SIGKILL
    killed: bool = False  # STOPPING: SIGKILL already sent
    ready_at: float | None = None
    last_exit: Exit | None = None


@dataclass(frozen=True)
class Start:
    proxy_id: str


@dataclass(frozen=True)
class Stop:
    """SIGTERM, then wait up to the drain timeout."""

    proxy_id: str


@dataclass(frozen=True)
class Kill:
    """SIGKILL: the drain timeout has passed."""

    proxy_id: str


@dataclass(frozen=True)
class Forget:
    """Drop the record of a proxy waiting in backoff that is no longer wanted."""

    proxy_id: str


Action = Start | Stop | Kill | Forget


def backoff_delay(failures: int, policy: Policy) -> float:
    """Seconds to wait before the next start after `failures` consecutive short runs."""
    if failures <= 0:
        return 0.0
    # capped before the power grows: a proxy failing for weeks must not overflow
    exponent = min(failures - 1, 62)
    return float(min(policy.max_backoff, policy.initial_backoff * 2.0**exponent))


def launched(prev: ProxyProcess | None, proxy_id: str, parent_id: str, pid: int, start_time: int,
             now: float) -> ProxyProcess:
    """A process was started; `prev` is the record it replaces (in backoff), if any."""
    if prev is None:
        return ProxyProcess(proxy_id, parent_id, State.STARTING, pid, start_time, started_at=now)
    return replace(prev, parent_id=parent_id, state=State.STARTING, pid=pid, start_time=start_time,
                   adopted=False, started_at=now, restarts=prev.restarts + 1, restart_at=0.0,
                   stop_deadline=0.0, killed=False, ready_at=None)


def adopted(proxy_id: str, parent_id: str, pid: int, start_time: int, now: float) -> ProxyProcess:
    """A live process of a previous agent, found through its pidfile. Whether it is
    ready is unknown until it reports again (proxies repeat their report)."""
    return ProxyProcess(proxy_id, parent_id, State.RUNNING, pid, start_time, adopted=True, started_at=now)


def became_ready(proc: ProxyProcess, now: float) -> ProxyProcess:
    """The proxy reported its listeners open. A stopping process stays stopping."""
    if proc.state not in (State.STARTING, State.RUNNING, State.READY):
        return proc
    return replace(proc, state=State.READY, ready_at=proc.ready_at if proc.ready_at is not None else now)


def exited(proc: ProxyProcess, exit_: Exit, policy: Policy) -> ProxyProcess | None:
    """The process is gone. None when it was being stopped (nothing left to track);
    otherwise a BACKOFF record that says when to start it again."""
    if proc.state == State.STOPPING:
        return None
    ran = exit_.at - proc.started_at
    failures = 1 if ran >= policy.reset_after else proc.failures + 1
    return replace(proc, state=State.BACKOFF, pid=0, start_time=0, failures=failures,
                   restart_at=exit_.at + backoff_delay(failures, policy), ready_at=None, killed=False,
                   last_exit=exit_)


def spawn_failed(prev: ProxyProcess | None, proxy_id: str, parent_id: str, reason: str, now: float,
                 policy: Policy) -> ProxyProcess:
    """The launch itself failed (no interpreter, no log file): a crash of zero length."""
    failures = (prev.failures if prev is not None else 0) + 1
    base = prev if prev is not None else ProxyProcess(proxy_id, parent_id, State.BACKOFF)
    return replace(base, parent_id=parent_id, state=State.BACKOFF, pid=0, start_time=0, failures=failures,
                   restart_at=now + backoff_delay(failures, policy), ready_at=None,
                   last_exit=Exit(at=now, reason=reason))


def stop_requested(proc: ProxyProcess, now: float, policy: Policy) -> ProxyProcess:
    """SIGTERM was sent: the proxy drains until the deadline."""
    if proc.state == State.STOPPING:
        return proc
    return replace(proc, state=State.STOPPING, stop_deadline=now + policy.drain_timeout, killed=False)


def kill_sent(proc: ProxyProcess) -> ProxyProcess:
    return replace(proc, killed=True)


def plan(wanted: Mapping[str, str], procs: Mapping[str, ProxyProcess], now: float) -> list[Action]:
    """What to do now, in a stable order (by proxy ID). `wanted` maps each proxy
    service ID the agent should run to its parent service ID; a process running for
    another parent (the sidecar was re-registered for a different service) is stopped
    and, once gone, started again with the new one."""
    actions: list[Action] = []
    for proxy_id in sorted(set(wanted) | set(procs)):
        proc = procs.get(proxy_id)
        parent = wanted.get(proxy_id)
        if parent is not None and (proc is None or proc.state == State.STOPPING or proc.parent_id == parent):
            if proc is None or (proc.state == State.BACKOFF and now >= proc.restart_at):
                actions.append(Start(proxy_id))
        elif proc is not None:
            if proc.state == State.BACKOFF:
                actions.append(Forget(proxy_id))
            elif proc.state in (State.STARTING, State.RUNNING, State.READY):
                actions.append(Stop(proxy_id))
        if proc is not None and proc.state == State.STOPPING and not proc.killed and now >= proc.stop_deadline:
            actions.append(Kill(proxy_id))
    return actions


def next_due(procs: Mapping[str, ProxyProcess]) -> float | None:
    """The earliest time at which `plan` would act without any event: a restart or a
    drain deadline. None when nothing is scheduled."""
    times = [p.restart_at for p in procs.values() if p.state == State.BACKOFF]
    times += [p.stop_deadline for p in procs.values() if p.state == State.STOPPING and not p.killed]
    return min(times) if times else None
