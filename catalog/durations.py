"""Go duration strings ("10s", "1m30s", "72h", "150ms"), as Consul's API and config use them."""

from __future__ import annotations

import re

from .errors import InvalidRequest

__all__ = ["parse_duration", "format_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str | int | float, *, what: str = "duration") -> float:
    """Seconds in a Go duration. Numbers are taken as seconds (config files allow it);
    "0" alone is zero, as in Go. Anything else raises InvalidRequest naming `what`."""
    if isinstance(text, bool):
        raise InvalidRequest(f"Invalid {what}: {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise InvalidRequest(f"Invalid {what}: {text!r} is negative")
        return float(text)
    if not isinstance(text, str):
        raise InvalidRequest(f"Invalid {what}: {text!r}")
    s = text.strip()
    sign = 1.0
    if s.startswith(("-", "+")):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidRequest(f"Invalid {what}: {text!r}")
    total, pos = 0.0, 0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise InvalidRequest(f"Invalid {what}: {text!r} (expected a duration such as \"10s\" or \"1m30s\")")
    if sign < 0 and total:
        raise InvalidRequest(f"Invalid {what}: {text!r} is negative")
    return total


def format_duration(seconds: float) -> str:
    """Go's String() for a duration, enough for what Consul echoes back ("10s", "1m30s", "0s")."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}µs"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    out += f"{secs:g}s"
    return out
