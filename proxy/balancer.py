"""Which instance of an upstream gets the next connection. Pure: time and randomness come in.

Consul's built-in proxy picks an instance uniformly at random and never learns from a
failure (consul.md §6.5, issue #7505). Here every upstream has a `Balancer` that

- picks by policy: `round_robin` (default), `random`, or `least_request`, which is the
  power of two choices (two random candidates, the one with fewer active connections
  wins): nearly as good as a full scan at O(1), and it does not herd every proxy onto the
  same "least loaded" instance the way a global minimum does;
- sets aside an instance that keeps failing (passive ejection at L4): after
  `eject_after` consecutive failures it is skipped for `base_ejection` seconds, doubled
  for each ejection in a row up to `max_ejection`. A success ends the streak. When every
  candidate is set aside the balancer ignores ejection rather than refuse traffic (a
  health check, not a guess from failures, is what takes the last instance away).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

__all__ = ["Endpoint", "Balancer", "POLICIES"]

POLICIES = ("round_robin", "random", "least_request")


@dataclass(frozen=True)
class Endpoint:
    """One healthy instance of an upstream, as its sidecar is reached."""

    address: str
    port: int
    service: str  # the destination service name its certificate must carry
    datacenter: str = ""
    node: str = ""
    service_id: str = ""
    key: str = field(default="", compare=False)  # "address:port", set once (read on every request)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.address}:{self.port}")


@dataclass
class _Health:
    failures: int = 0  # consecutive
    ejections: int = 0  # consecutive ejections, for the growing set-aside time
    ejected_until: float = 0.0
    active: int = 0


@dataclass
class Balancer:
    policy: str = "round_robin"
    rng: random.Random = field(default_factory=random.Random)
    eject_after: int = 3
    base_ejection: float = 5.0
    max_ejection: float = 300.0
    _health: dict[str, _Health] = field(default_factory=dict)
    _next: int = 0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"load_balancer must be one of {', '.join(POLICIES)}; got {self.policy!r}")

    def pick(self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[str] = ()) -> Endpoint | None:
        """The instance for the next connection, None when there is none to try.
        `exclude`: keys already tried for this connection."""
        candidates = [e for e in endpoints if e.key not in exclude]
        if not candidates:
            return None
        usable = [e for e in candidates if not self.ejected(e.key, now)]
        pool = usable or candidates
        if len(pool) == 1:
            return pool[0]
        if self.policy == "random":
            return self.rng.choice(pool)
        if self.policy == "least_request":
            a, b = self.rng.sample(pool, 2)
            return a if self._active(a.key) <= self._active(b.key) else b
        self._next += 1
        return pool[self._next % len(pool)]

    def ejected(self, key: str, now: float) -> bool:
        health = self._health.get(key)
        return health is not None and health.ejected_until > now

    def _active(self, key: str) -> int:
        health = self._health.get(key)
        return health.active if health is not None else 0

    def started(self, key: str) -> None:
        self._health.setdefault(key, _Health()).active += 1

    def finished(self, key: str) -> None:
        health = self._health.get(key)
        if health is not None and health.active > 0:
            health.active -= 1

    def succeeded(self, key: str) -> None:
        health = self._health.get(key)
        if health is not None:
            health.failures = 0
            health.ejections = 0

    def failed(self, key: str, now: float) -> bool:
        """Record a failed dial or an instance whose app was unreachable; True when this
        failure set the instance aside."""
        health = self._health.setdefault(key, _Health())
        health.failures += 1
        if health.failures < self.eject_after or health.ejected_until > now:
            return False
        seconds = min(self.max_ejection, self.base_ejection * (2 ** health.ejections))
        health.ejections += 1
        health.failures = 0
        health.ejected_until = now + seconds
        return True

    def forget_except(self, keys: Collection[str]) -> None:
        """Drop the state of instances that left the upstream (bounded memory), keeping
        those with connections still open so their counts stay right."""
        for key in [k for k, h in self._health.items() if k not in keys and h.active == 0]:
            del self._health[key]

    def ejected_count(self, now: float) -> int:
        return sum(1 for h in self._health.values() if h.ejected_until > now)
