"""Go duration strings ("10s", "1m30s", "72h", "150ms"), as Consul's API and config use them."""

from __future__ import annotations

import math
import re

from .errors import InvalidRequest

__all__ = ["parse_duration", "format_duration", "MAX_DURATION"]

# Go's time.Duration is an int64 of nanoseconds (about 292 years): Consul cannot hold
# a longer one, and a datetime or timer built from it would overflow.
MAX_DURATION = ((1 << 63) - 1) / 1e9

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
        raise InvalidRequest(f"Invalid {what}: {_show(text)}")
    if isinstance(text, int | float):
        if isinstance(text, float) and math.isnan(text):
            raise InvalidRequest(f"Invalid {what}: {_show(text)}")
        if text < 0:
            raise InvalidRequest(f"Invalid {what}: {_show(text)} is negative")
        return _bounded(float(text) if text <= MAX_DURATION else math.inf, text, what)
    if not isinstance(text, str):
        raise InvalidRequest(f"Invalid {what}: {_show(text)}")
    s = text.strip()
    sign = 1.0
    if s.startswith(("-", "+")):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise InvalidRequest(f"Invalid {what}: {_show(text)}")
    total, pos = 0.0, 0
    for match in _PART.finditer(s):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise InvalidRequest(f"Invalid {what}: {_show(text)} (expected a duration such as \"10s\" or \"1m30s\")")
    if sign < 0 and total:
        raise InvalidRequest(f"Invalid {what}: {_show(text)} is negative")
    return _bounded(total, text, what)


def _bounded(seconds: float, text: object, what: str) -> float:
    if not seconds <= MAX_DURATION:
        raise InvalidRequest(f"Invalid {what}: {_show(text)} is out of range (at most 2562047h)")
    return seconds


def _show(text: object) -> str:
    """The input as the error message quotes it, cut short: it may be hostile and huge."""
    shown = repr(text) if not isinstance(text, int) or abs(text) < 10**20 else "a number too large"
    return shown if len(shown) <= 60 else shown[:57] + "..."


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
