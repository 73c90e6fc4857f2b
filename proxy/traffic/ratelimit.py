"""Instance-level rate limits on inbound requests (a service-defaults entry's
`RateLimits.InstanceLevel`). Pure: time comes in.

    RateLimits { InstanceLevel { RequestsPerSecond, RequestsMaxBurst,
                                 Routes [ { PathExact | PathPrefix | PathRegex,
                                            RequestsPerSecond, RequestsMaxBurst } ] } }

A request is counted against the first route whose path matches, in that route's own
bucket, and only there (a route overrides the instance-wide limit, as Consul documents);
a request no route matches is counted against the instance-wide bucket, if there is one.
`RequestsMaxBurst` defaults to `RequestsPerSecond`; an instance-wide
`RequestsPerSecond` of 0 means no instance-wide limit.

Buckets refill continuously (a fraction of a token at a time) where Envoy's local rate
limit adds `RequestsPerSecond` tokens once a second: the same long-run rate and burst,
without a whole second's worth of requests being let through at each tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mesh.catalog.regex import compile_re2

from .fields import Section

__all__ = ["RateLimits", "RouteLimit", "TokenBucket", "RateLimiter", "Verdict"]

_MATCHES = ("PathExact", "PathPrefix", "PathRegex")


@dataclass(frozen=True, slots=True)
class RouteLimit:
    """One entry of `Routes`: a path match and its own rate."""

    kind: str  # one of "PathExact", "PathPrefix", "PathRegex"
    value: str
    rate: int
    burst: int
    regex: Any = None  # compiled RE2 for PathRegex

    def matches(self, path: str) -> bool:
        if self.kind == "PathExact":
            return path == self.value
        if self.kind == "PathPrefix":
            return path.startswith(self.value)
        return self.regex.fullmatch(path) is not None

    @classmethod
    def parse(cls, section: Section | None, path: str) -> RouteLimit:
        if section is None:
            raise ValueError(f"{path}: must set one of {', '.join(_MATCHES)}")
        given = [name for name in _MATCHES if section.text(name)]
        if len(given) != 1:
            raise ValueError(f"{path}: must set exactly one of {', '.join(_MATCHES)}, got {len(given)}")
        kind = given[0]
        value = section.text(kind)
        regex = None
        if kind == "PathRegex":
            try:
                regex = compile_re2(value)
            except ValueError as exc:
                raise section.error(kind, str(exc)) from None
        rate = section.whole("RequestsPerSecond", 0)
        if rate == 0:
            raise section.error("RequestsPerSecond", "must be a whole number ≥ 1 on a route")
        return cls(kind, value, rate, section.whole("RequestsMaxBurst", 0) or rate, regex)


@dataclass(frozen=True, slots=True)
class RateLimits:
    """A service's instance-level limits; false when nothing is limited, so the caller
    can skip the check altogether."""

    rate: int = 0  # instance-wide requests per second; 0: no instance-wide limit
    burst: int = 0
    routes: tuple[RouteLimit, ...] = ()

    def __bool__(self) -> bool:
        return self.rate > 0 or bool(self.routes)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, path: str = "RateLimits") -> RateLimits:
        outer = Section.of(raw, path)
        if outer is None:
            return cls()
        for misplaced in ("RequestsPerSecond", "RequestsMaxBurst", "Routes"):
            if outer.has(misplaced):  # silently unlimited would be the worst reading
                raise outer.error(misplaced, "belongs inside InstanceLevel")
        section = outer.section("InstanceLevel")
        if section is None:
            return cls()
        rate = section.whole("RequestsPerSecond", 0)
        burst = section.whole("RequestsMaxBurst", 0) or rate
        routes = tuple(
            RouteLimit.parse(route, f"{section.path}.Routes[{i}]") for i, route in enumerate(section.sections("Routes"))
        )
        return cls(rate, burst, routes)


class TokenBucket:
    """`burst` tokens at most, refilled at `rate` a second; starts full."""

    def __init__(self, rate: float, burst: float) -> None:
        if not rate > 0 or not burst >= 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst ≥ 1, got {rate} and {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> float:
        """0.0 when a token was taken; otherwise the seconds until one will be there
        (and nothing is taken). A clock going backwards adds nothing."""
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


@dataclass(frozen=True, slots=True)
class Verdict:
    """`route`: the metrics label of the bucket that decided ("route-<index>",
    "instance", or "" when the request is not limited). `retry_after`: whole seconds
    for a Retry-After header when refused, 0 when allowed."""

    allowed: bool
    route: str
    retry_after: int = 0


_UNLIMITED = Verdict(True, "")


class RateLimiter:
    """The buckets of one service instance, kept across requests."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._routes = [(f"route-{i}", r, TokenBucket(r.rate, r.burst)) for i, r in enumerate(limits.routes)]
        self._instance = TokenBucket(limits.rate, limits.burst) if limits.rate > 0 else None

    def check(self, path: str, now: float) -> Verdict:
        """Whether a request for `path` (normalized, without the query) may pass now."""
        for label, route, bucket in self._routes:
            if route.matches(path):
                return _decide(label, bucket, now)
        if self._instance is None:
            return _UNLIMITED
        return _decide("instance", self._instance, now)


def _decide(label: str, bucket: TokenBucket, now: float) -> Verdict:
    wait = bucket.take(now)
    if wait == 0.0:
        return Verdict(True, label)
    return Verdict(False, label, max(1, math.ceil(wait)))
