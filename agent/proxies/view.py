"""One proxy as GET /v1/agent/mesh/proxies shows it, built from what the supervisor
knows (its ProxyProcess record) and what the proxy last reported. Pure: times are
passed in; monotonic times are shown as wall-clock RFC 3339 through `now`/`wall`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from .plan import ProxyProcess, State
from .readiness import ReadyReport, format_time

__all__ = ["Seen", "proxy_entry", "signal_name"]


def signal_name(number: int | None) -> str | None:
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


@dataclass(frozen=True)
class Seen:
    """Everything known about one sidecar proxy at one moment."""

    proxy_id: str
    parent_id: str  # from the registration, else from the process record
    supervising: bool
    proc: ProxyProcess | None
    report: ReadyReport | None
    reported_at: float | None  # wall clock
    started_wall: float | None
    log_file: str


def _state(seen: Seen) -> str:
    if seen.proc is not None:
        return seen.proc.state.value
    if seen.supervising:
        return "pending"  # wanted; the supervisor's next step starts it
    return "ready" if seen.report is not None else "unsupervised"


def proxy_entry(seen: Seen, now: float, wall: float) -> dict[str, Any]:
    proc, report = seen.proc, seen.report
    last = proc.last_exit if proc is not None else None
    pid = proc.pid if proc is not None and proc.pid else (report.pid if report is not None else 0)
    return {
        "ProxyServiceID": seen.proxy_id,
        "DestinationServiceID": seen.parent_id,
        "Supervised": seen.supervising,
        "PID": pid,
        "State": _state(seen),
        "Restarts": proc.restarts if proc is not None else 0,
        "Adopted": proc.adopted if proc is not None else False,
        "StartedAt": format_time(seen.started_wall) if proc is not None and proc.pid else None,
        "RestartIn": round(max(0.0, proc.restart_at - now), 3)
        if proc is not None and proc.state == State.BACKOFF else None,
        "LastExit": None if last is None else {
            "Code": last.code, "Signal": signal_name(last.signal), "Reason": last.reason,
            "At": format_time(wall - (now - last.at))},
        "Listeners": None if report is None else {"Public": report.public, "Upstreams": dict(report.upstreams)},
        "LeafExpires": format_time(report.leaf_expires) if report is not None else None,
        "ConfigAge": report.config_age if report is not None else None,
        "ReportedAt": format_time(seen.reported_at),
        "LogFile": seen.log_file,
    }
