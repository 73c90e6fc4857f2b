"""Which instance of a target gets the next request or connection, and which are set aside.

Consul's built-in proxy picks an instance uniformly at random and never learns from a
failure (consul.md §6.5, issue #7505). Here every target of every upstream has a
`Balancer` that joins two pure parts:

- a picker by the resolver's `LoadBalancer` policy (traffic/lb.py: round_robin,
  random, least_request over the in-flight counts kept here, ring_hash, maglev);
- passive health checking (traffic/outlier.py), with Envoy's semantics as Consul
  configures them from `PassiveHealthCheck`: consecutive 5xx or connect failures
  eject an instance for a growing time, never more than the allowed share at once.

When every candidate is ejected the picker uses them anyway rather than refuse traffic
(a health check, not a guess from failures, is what takes the last instance away).
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from .endpoint import Endpoint
from .traffic.lb import LoadBalancerConfig, make_picker, never_ejected
from .traffic.outlier import OutlierDetector, PassiveHealthCheck

__all__ = ["Endpoint", "Balancer", "POLICIES"]

POLICIES = ("round_robin", "random", "least_request", "ring_hash", "maglev")


class Balancer:
    """One target's instances: the picker, the outlier detector and in-flight counts."""

    def __init__(self, lb: LoadBalancerConfig | None = None, passive: PassiveHealthCheck | None = None,
                 rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.lb = lb or LoadBalancerConfig()
        self.passive = passive or PassiveHealthCheck()
        self.picker = make_picker(self.lb, self.rng)
        self.outlier = OutlierDetector(self.passive, self.rng)
        self.uses_hash = bool(self.lb.hash_policies)
        self._active: dict[str, int] = {}
        self.last_sweep = 0.0

    def fits(self, lb: LoadBalancerConfig, passive: PassiveHealthCheck) -> bool:
        return (lb is self.lb or lb == self.lb) and (passive is self.passive or passive == self.passive)

    def pick(self, endpoints: Sequence[Endpoint], now: float, exclude: Collection[str] = (),
             key: int | None = None) -> Endpoint | None:
        """The instance for the next request or connection, None when there is none to
        try. `exclude`: keys already tried; `key`: the request's hash (hash policies)."""
        outlier = self.outlier
        return self.picker.pick(endpoints, key=key, exclude=exclude,
                                ejected=outlier.ejected if outlier.current_ejections() else never_ejected,
                                active=self._active_of)

    def _active_of(self, key: str) -> int:
        return self._active.get(key, 0)

    def started(self, key: str) -> None:
        self._active[key] = self._active.get(key, 0) + 1

    def finished(self, key: str) -> None:
        count = self._active.get(key, 0)
        if count > 1:
            self._active[key] = count - 1
        elif count:
            del self._active[key]

    def succeeded(self, key: str, now: float = 0.0) -> None:
        self.outlier.record(key, True, now)

    def failed(self, key: str, now: float) -> bool:
        """A 5xx, a reset or a failed dial; True when it ejected the instance."""
        return self.outlier.record(key, False, now)

    def ejected(self, key: str) -> bool:
        return self.outlier.ejected(key)

    def sweep(self, now: float, keys: Collection[str]) -> list[str]:
        """Every `passive_health_check.interval`: instances whose time is up return."""
        self.last_sweep = now
        return self.outlier.sweep(now, keys)

    def ejected_count(self) -> int:
        return self.outlier.current_ejections()
