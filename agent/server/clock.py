"""The server role's clock: every duty that decides by time takes one (DESIGN.md
principle 4), so one-process tests move time by hand instead of sleeping.

`monotonic()` orders events (heartbeats, liveness, rate limits); `time()` is wall time
for what is stamped or shown (certificate validity, when a node left).
"""

from __future__ import annotations

import datetime
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "ManualClock", "utc_now"]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    """The process's clocks."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told: `advance(seconds)` moves both readings."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._mono = start
        self._wall = wall

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._wall

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._wall += seconds


def utc_now(clock: Clock) -> datetime.datetime:
    """The clock's wall time as an aware UTC datetime (what the CA manager takes)."""
    return datetime.datetime.fromtimestamp(clock.time(), datetime.UTC)
