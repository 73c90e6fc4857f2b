"""Whether a failed attempt is tried again, when, and within what budget. Pure: time
and randomness come in.

The policy is a route's (routes.py), read as Consul configures Envoy's retry policy:

- `RetryOn` conditions (Consul's accepted values):
  `5xx` any 5xx, or no response at all (connect failure, reset, per-try timeout);
  `gateway-error` 502, 503, 504, or no response at all (Envoy counts resets here too);
  `reset` no response: reset, per-try timeout, connect failure;
  `connect-failure` the connection to an instance could not be made;
  `refused-stream` the peer refused the stream before any of it reached the app;
  `retriable-4xx` 409; `envoy-ratelimited` 429 (Envoy wants its own
  `x-envoy-ratelimited` header as well; no Envoy sits behind our upstreams, so a 429
  is taken as the rate limit);
  `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`
  are gRPC statuses: accepted, but they never match on this HTTP/1.1 path.
- `RetryOnConnectFailure` adds `connect-failure`; `RetryOnStatusCodes` retries those
  statuses.
- `NumRetries`: retries after the first attempt; 0 while a condition is set means
  Consul's (Envoy's) default of 1. A route with no condition never retries, whatever
  its `NumRetries` (as with Consul: Envoy retries on nothing).

Safety, which Consul leaves to the application and we do not:

- Only idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
  are retried once the request may have reached the app. A request that provably
  never did (connect failure, refused stream) is retried whatever its method.
- A `RetryBudget` bounds retries to a share of requests (Finagle / Linkerd): when an
  upstream fails everywhere, retries would multiply its load exactly when it can
  least take it.
- `backoff` spaces retries as Envoy does: 25 ms base, full jitter, doubling, 250 ms cap.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .routes import Route

__all__ = [
    "CONNECT_FAILURE", "RESET", "REFUSED_STREAM", "PER_TRY_TIMEOUT", "Outcome", "IDEMPOTENT_METHODS",
    "RETRY_ON_VALUES", "RetryPolicy", "RetryVerdict", "RetryBudget", "decide_retry", "backoff",
]

# what happened to an attempt: one of these, or the response status (int)
CONNECT_FAILURE = "connect_failure"
RESET = "reset"
REFUSED_STREAM = "refused_stream"
PER_TRY_TIMEOUT = "timeout"
Outcome = str | int

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_GRPC_ONLY = frozenset({"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"})
RETRY_ON_VALUES = frozenset({
    "5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx", "refused-stream",
}) | _GRPC_ONLY

_NO_RESPONSE = frozenset({CONNECT_FAILURE, RESET, PER_TRY_TIMEOUT, REFUSED_STREAM})
# which conditions retry each outcome that is not a status
_BY_FAILURE = {
    CONNECT_FAILURE: frozenset({"connect-failure", "5xx", "gateway-error", "reset"}),
    RESET: frozenset({"reset", "5xx", "gateway-error"}),
    PER_TRY_TIMEOUT: frozenset({"reset", "5xx", "gateway-error"}),
    REFUSED_STREAM: frozenset({"refused-stream", "5xx", "gateway-error", "reset"}),
}
_NEVER_REACHED = frozenset({CONNECT_FAILURE, REFUSED_STREAM})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A route's retry policy, resolved (defaults applied, conditions merged)."""

    num_retries: int = 0
    retry_on: frozenset[str] = frozenset()
    status_codes: frozenset[int] = frozenset()

    @classmethod
    def from_route(cls, route: Route) -> RetryPolicy:
        if not route.has_retry_features:
            return NO_RETRIES
        unknown = route.retry_on - RETRY_ON_VALUES
        if unknown:
            raise ValueError(f"{route.name}: unknown RetryOn value {sorted(unknown)[0]!r}")
        conditions = set(route.retry_on - _GRPC_ONLY)
        if route.retry_on_connect_failure:
            conditions.add("connect-failure")
        if not conditions and not route.retry_on_status_codes:
            return NO_RETRIES
        return cls(route.num_retries or 1, frozenset(conditions), route.retry_on_status_codes)

    def retries(self, outcome: Outcome) -> bool:
        """Whether the conditions cover this outcome (attempts and method aside)."""
        if isinstance(outcome, int):
            if outcome in self.status_codes:
                return True
            if 500 <= outcome <= 599 and "5xx" in self.retry_on:
                return True
            if outcome in (502, 503, 504) and "gateway-error" in self.retry_on:
                return True
            if outcome == 409 and "retriable-4xx" in self.retry_on:
                return True
            return outcome == 429 and "envoy-ratelimited" in self.retry_on
        return not self.retry_on.isdisjoint(_BY_FAILURE.get(outcome, ()))


NO_RETRIES = RetryPolicy()


@dataclass(frozen=True, slots=True)
class RetryVerdict:
    """Retry or not, and why (for the access log and metrics)."""

    retry: bool
    reason: str


def decide_retry(
    policy: RetryPolicy,
    attempt: int,
    outcome: Outcome,
    method: str,
    reached_app: bool,
    budget: RetryBudget | None = None,
) -> RetryVerdict:
    """Whether to try again after attempt number `attempt` (1 for the first) ended in
    `outcome`. `reached_app`: the request may have been seen by an application (it was
    written to a connection the peer accepted); connect failures and refused streams
    never reached one, whatever the caller says. With a `budget`, a yes spends from it."""
    if not policy.retries(outcome):
        return RetryVerdict(False, f"not retriable: {_show(outcome)}")
    if attempt > policy.num_retries:
        return RetryVerdict(False, f"retries exhausted ({policy.num_retries})")
    if reached_app and outcome not in _NEVER_REACHED and method not in IDEMPOTENT_METHODS:
        return RetryVerdict(False, f"{method} is not idempotent and may have reached the app")
    if budget is not None and not budget.try_spend():
        return RetryVerdict(False, "retry budget exhausted")
    return RetryVerdict(True, f"retry {attempt} of {policy.num_retries}: {_show(outcome)}")


def _show(outcome: Outcome) -> str:
    return f"status {outcome}" if isinstance(outcome, int) else outcome.replace("_", " ")


@dataclass
class RetryBudget:
    """Retries allowed: `ratio` of the requests of the last `window` seconds, plus
    `min_per_second` × `window` so that a quiet upstream can still be retried. Counts
    are kept per second (at most `window` buckets), so both calls are O(1) amortized."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    clock: Callable[[], float] = time.monotonic
    window: int = 10
    _buckets: deque[list[int]] = field(default_factory=deque)  # [second, requests, retries]
    _requests: int = 0
    _retries: int = 0

    def _current(self) -> list[int]:
        second = int(self.clock())
        while self._buckets and self._buckets[0][0] <= second - self.window:
            _, requests, retries = self._buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0])
        return self._buckets[-1]

    def record_request(self) -> None:
        """Count one request (first attempts only)."""
        self._current()[1] += 1
        self._requests += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when none is left."""
        bucket = self._current()
        if self._retries + 1 > self.ratio * self._requests + self.min_per_second * self.window:
            return False
        bucket[2] += 1
        self._retries += 1
        return True


BASE_BACKOFF = 0.025
MAX_BACKOFF = 0.25


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first): uniform in
    [0, (2^attempt - 1) × 25 ms), capped at 250 ms (Envoy's fully jittered backoff)."""
    ceiling = ((1 << min(max(attempt, 1), 16)) - 1) * BASE_BACKOFF
    return min(rng.random() * ceiling, MAX_BACKOFF)
