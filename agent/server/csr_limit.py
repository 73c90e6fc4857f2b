"""The servers' guard against signing storms: Consul's CSRMaxPerSecond and
CSRMaxConcurrent, per server, as a token bucket and an in-flight count.

Both are off at 0, mesh's default: a server here signs thousands of leaves a second
(bench/ca_sign.py), so a fixed cap like Consul's 50/s would only stretch a root
rotation out. Operators who share servers with other work can set them; a refused
signing is a RateLimited error the agent retries with jittered backoff.
"""

from __future__ import annotations

from mesh.catalog.errors import RateLimited

__all__ = ["CSRLimiter"]


class CSRLimiter:
    def __init__(self) -> None:
        self._tokens = 0.0
        self._last = 0.0
        self.in_flight = 0

    def acquire(self, now: float, per_second: float, max_concurrent: int) -> None:
        """Take a slot or raise RateLimited; pair each success with `release`."""
        if max_concurrent > 0 and self.in_flight >= max_concurrent:
            raise RateLimited("rate limit reached, try again later (CSRMaxConcurrent)")
        if per_second > 0:
            burst = max(1.0, per_second)  # a second's worth may arrive together
            self._tokens = min(burst, self._tokens + (now - self._last) * per_second) if self._last else burst
            self._last = now
            if self._tokens < 1.0:
                raise RateLimited("rate limit reached, try again later (CSRMaxPerSecond)")
            self._tokens -= 1.0
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
