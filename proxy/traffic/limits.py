"""Circuit breaking: how much one upstream may be asked of at once (an upstream's
`limits`, Envoy's circuit breaker thresholds). Pure.

    limits { max_connections, max_pending_requests, max_concurrent_requests }

What is over a limit is refused at once rather than queued: an upstream that is slow
because it is overloaded gets no more work from this sidecar, and the caller gets a
fast 503 it can retry elsewhere instead of a timeout.

An absent limit is unlimited. A limit of 0 is unlimited too: Consul passes 0 to Envoy,
which then refuses every connection or request, a configuration no one means (Consul's
own zero-value convention reads an unset field as 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .fields import Section

__all__ = ["Limits", "Breaker", "KINDS"]

KINDS = ("connections", "pending", "requests")


@dataclass(frozen=True, slots=True)
class Limits:
    """Maximum connections, pending requests (waiting for a connection) and concurrent
    requests; None is unlimited."""

    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_concurrent_requests: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_connections, self.max_pending_requests,
                                           self.max_concurrent_requests))

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, path: str = "limits") -> Limits:
        section = Section.of(raw, path)
        if section is None:
            return cls()
        return cls(*(section.whole(name, 0) or None
                     for name in ("max_connections", "max_pending_requests", "max_concurrent_requests")))


class Breaker:
    """The in-flight counts of one upstream against its `Limits`. Each start that
    returns True must be matched by one end; a refused start changed nothing and must not
    be. Counts never go below zero, so a stray extra end is harmless."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.active = dict.fromkeys(KINDS, 0)
        self.overloaded_total = dict.fromkeys(KINDS, 0)
        self._max = dict(zip(KINDS, (limits.max_connections, limits.max_pending_requests,
                                     limits.max_concurrent_requests), strict=True))

    def start(self, kind: str) -> bool:
        """Count one more of `kind` (one of KINDS); False, counted as an overload and
        changing nothing else, when that would pass its limit."""
        limit = self._max[kind]
        if limit is not None and self.active[kind] >= limit:
            self.overloaded_total[kind] += 1
            return False
        self.active[kind] += 1
        return True

    def end(self, kind: str) -> None:
        self.active[kind] = max(0, self.active[kind] - 1)

    def open_connection(self) -> bool:
        return self.start("connections")

    def close_connection(self) -> None:
        self.end("connections")

    def start_pending(self) -> bool:
        """A request starts waiting for a connection to be made."""
        return self.start("pending")

    def end_pending(self) -> None:
        self.end("pending")

    def start_request(self) -> bool:
        return self.start("requests")

    def end_request(self) -> None:
        self.end("requests")
