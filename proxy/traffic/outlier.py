"""Passive health checking: setting aside an instance that keeps failing (an upstream's
`passive_health_check`, Envoy's outlier detection on consecutive 5xx). Pure: time and
randomness come in.

Consul always gives Envoy an outlier detection block, so an upstream without
`passive_health_check` gets Envoy's defaults: eject after 5 consecutive failures, for
30 s × the number of times ejected (at most max(30 s, 300 s)), at most 10% of the
instances at once, checked every 10 s.

- `record` counts each response: a status below 500 ends the host's failure streak; a
  5xx, a reset or a failed connect extends it. The streak reaching `max_failures` starts
  it again from 0 and ejects the host if an enforcing roll passes and the cap allows.
- The cap: ejected hosts stay within `max_ejection_percent` of the hosts, except that
  one host may always be ejected when none is (a positive percentage of a small
  upstream is less than one host; 10% of 5 instances would otherwise never eject
  anything). Envoy ejects that one host only with `always_eject_one_host`, off by
  default, so this is deliberately more eager than Envoy for upstreams of < 10 hosts.
  A percentage of 0 ejects nothing, as in Envoy.
- Hosts come back only at a `sweep` (every `interval`) once their time is up. At each
  sweep a host that is not ejected has its ejection count lowered by one, so a host
  that recovered for good is, after a while, ejected again for the base time only.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .fields import Section

__all__ = ["PassiveHealthCheck", "OutlierDetector", "MAX_EJECTION_TIME"]

MAX_EJECTION_TIME = 300.0  # Envoy's max_ejection_time default; Consul does not set it


@dataclass(frozen=True, slots=True)
class PassiveHealthCheck:
    """An upstream's `passive_health_check`, defaults applied (Envoy's)."""

    interval: float = 10.0
    max_failures: int = 5
    enforcing_consecutive_5xx: int = 100  # percent chance that reaching max_failures ejects
    max_ejection_percent: int = 10
    base_ejection_time: float = 30.0

    @property
    def max_ejection_time(self) -> float:
        return max(self.base_ejection_time, MAX_EJECTION_TIME)

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, path: str = "passive_health_check") -> PassiveHealthCheck:
        """Zero `interval` and `max_failures` mean the default (Consul leaves zeros out
        of Envoy's config); zero percentages are taken as written."""
        section = Section.of(raw, path)
        if section is None:
            return cls()
        default = cls()
        base = section.duration("base_ejection_time", default.base_ejection_time)
        if base <= 0:
            raise section.error("base_ejection_time", f"must be more than 0, got {section.raw('base_ejection_time')!r}")
        return cls(
            interval=section.duration("interval", 0.0) or default.interval,
            max_failures=section.whole("max_failures", 0) or default.max_failures,
            enforcing_consecutive_5xx=section.whole("enforcing_consecutive_5xx", default.enforcing_consecutive_5xx,
                                                    hi=100),
            max_ejection_percent=section.whole("max_ejection_percent", default.max_ejection_percent, hi=100),
            base_ejection_time=base,
        )


@dataclass(slots=True)
class _Host:
    streak: int = 0  # consecutive failures
    times_ejected: int = 0  # multiplies the ejection time; lowered at sweeps while healthy
    ejected_at: float = 0.0
    duration: float = 0.0


class OutlierDetector:
    """The ejection state of one upstream's hosts, by endpoint key ("addr:port")."""

    def __init__(self, config: PassiveHealthCheck, rng: random.Random) -> None:
        self.config = config
        self._rng = rng
        self._state: dict[str, _Host] = {}
        self._hosts: set[str] = set()
        self._ejected: set[str] = set()
        self.ejections_total = 0  # hosts ejected, ever
        self.ejections_overflow_total = 0  # ejections the percentage cap prevented

    def set_hosts(self, keys: Collection[str]) -> None:
        """The upstream's current hosts: what `max_ejection_percent` is a share of."""
        self._hosts = set(keys)

    def ejected(self, key: str) -> bool:
        return key in self._ejected

    def current_ejections(self) -> int:
        return len(self._ejected)

    def times_ejected(self, key: str) -> int:
        host = self._state.get(key)
        return host.times_ejected if host is not None else 0

    def record(self, key: str, ok: bool, now: float) -> bool:
        """Count one outcome for `key` (`ok`: a response below 500). True when this call
        ejected the host."""
        host = self._state.get(key)
        if host is None:
            if ok:
                return False  # nothing to remember about a healthy host
            host = self._state[key] = _Host()
            self._hosts.add(key)
        if ok:
            host.streak = 0
            return False
        host.streak += 1
        if host.streak < self.config.max_failures:
            return False
        host.streak = 0  # the next ejection attempt takes another full streak
        if key in self._ejected:
            return False
        if not self._room():
            self.ejections_overflow_total += 1
            return False
        if not self._rng.random() * 100 < self.config.enforcing_consecutive_5xx:
            return False
        host.times_ejected += 1
        host.ejected_at = now
        host.duration = min(self.config.base_ejection_time * host.times_ejected, self.config.max_ejection_time)
        self._ejected.add(key)
        self.ejections_total += 1
        return True

    def _room(self) -> bool:
        percent = self.config.max_ejection_percent
        if percent <= 0:
            return False
        if not self._ejected:
            return True
        hosts = len(self._hosts | self._ejected)
        return (len(self._ejected) + 1) * 100 <= percent * hosts

    def sweep(self, now: float, hosts: Collection[str]) -> list[str]:
        """The periodic check (every `config.interval`): returns to service the ejected
        hosts whose time is up (their keys are returned), lowers the ejection count of
        hosts in service, and forgets hosts no longer in `hosts` unless ejected (a host
        that leaves and comes back while ejected stays ejected)."""
        self.set_hosts(hosts)
        returned: list[str] = []
        for key, host in list(self._state.items()):
            if key in self._ejected:
                if now < host.ejected_at + host.duration:
                    continue
                self._ejected.discard(key)
                host.streak = 0
                returned.append(key)
            elif host.times_ejected > 0:
                host.times_ejected -= 1
            if key not in self._hosts:
                del self._state[key]
        return returned
