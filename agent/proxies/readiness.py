"""A proxy's report that it is ready: `PUT /v1/agent/mesh/proxies/<id>/ready`.

The agent knows nothing of a proxy's insides; the proxy tells it, once its listeners
are open and again every so often, what it is serving. The body is optional (an empty
PUT just says "ready"); keys are read case- and underscore-insensitively::

    {"PID": 4242,
     "Listeners": {"Public": "0.0.0.0:21000", "Upstreams": {"api": "127.0.0.1:9191"}},
     "LeafExpires": "2025-01-02T03:04:05Z",      # or epoch seconds
     "ConfigAge": 0.4}                            # seconds since its config last changed

Pure: parsing and validation only; every problem is an InvalidRequest (400) naming the
field.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fields import Fields

__all__ = ["ReadyReport", "parse_ready_report", "format_time"]

_MAX_UPSTREAMS = 1024
_MAX_ADDRESS = 300
# epoch seconds a leaf may claim: 2000-01-01 .. 9999-12-31
_EPOCH_MIN, _EPOCH_MAX = 946684800.0, 253402300799.0


@dataclass(frozen=True)
class ReadyReport:
    pid: int = 0
    public: str = ""
    upstreams: dict[str, str] = field(default_factory=dict)
    leaf_expires: float | None = None  # epoch seconds
    config_age: float | None = None


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_ADDRESS:
        raise InvalidRequest(f"{what} must be an address (host:port)")
    return value


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise InvalidRequest(f"{what} must be a non-negative number of seconds")
    return float(value)


def _expiry(value: Any) -> float:
    """Epoch seconds from a number or an RFC 3339 time."""
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidRequest(f"LeafExpires: {value[:40]!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.UTC)
        return parsed.timestamp()
    seconds = _seconds(value, "LeafExpires")
    if not _EPOCH_MIN <= seconds <= _EPOCH_MAX:
        raise InvalidRequest("LeafExpires: epoch seconds out of range")
    return seconds


def parse_ready_report(body: Any) -> ReadyReport:
    """The report in a ready call's body (None for an empty body)."""
    if body is None:
        return ReadyReport()
    f = Fields(body, "body")
    listeners = Fields(f.obj("Listeners"), "Listeners")
    upstreams = listeners.obj("Upstreams")
    if len(upstreams) > _MAX_UPSTREAMS:
        raise InvalidRequest(f"Listeners.Upstreams: at most {_MAX_UPSTREAMS} upstreams")
    return ReadyReport(
        pid=f.int("PID", "Pid", lo=0, hi=(1 << 31) - 1),
        public=_address(listeners.raw("Public") or "", "Listeners.Public"),
        upstreams={str(name): _address(addr, f"Listeners.Upstreams.{name}") for name, addr in upstreams.items()},
        leaf_expires=_expiry(f.raw("LeafExpires")) if f.has("LeafExpires") else None,
        config_age=_seconds(f.raw("ConfigAge"), "ConfigAge") if f.has("ConfigAge") else None,
    )


def format_time(epoch: float | None) -> str | None:
    """RFC 3339 in UTC, as the rest of the API writes times; None stays None."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
