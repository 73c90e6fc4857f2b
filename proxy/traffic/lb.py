"""Which instance of an upstream gets the next request: a service-resolver's
`LoadBalancer`, as Consul configures Envoy with it. Pure: randomness comes in.

- `LoadBalancerConfig.parse` reads and validates the entry's `LoadBalancer` object.
- `make_picker` gives the `Picker` of its policy: `round_robin` (the default),
  `random`, `least_request` (power of `ChoiceCount` choices on in-flight requests),
  `ring_hash` (ring.py) and `maglev` (maglev.py). The hash policies read a request key
  from `request_hash` (hash_policy.py, re-exported here).

Every picker filters the same way: instances already tried for this request
(`exclude`) are out; ejected ones (outlier.py) are avoided while any other is left,
and used when none is: ejection is a guess from failures, and refusing all traffic on a
guess turns a partial outage into a full one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.proxy.endpoint import Endpoint

from .fields import Section
from .hash_policy import CookieConfig, HashPolicy, HashResult, cookie_value, request_hash
from .hashing import mix64
from .maglev import MaglevTable
from .ring import HashRing

__all__ = [
    "POLICIES", "LoadBalancerConfig", "Picker", "make_picker", "RoundRobinPicker", "RandomPicker",
    "LeastRequestPicker", "RingHashPicker", "MaglevPicker", "never_ejected",
    "CookieConfig", "HashPolicy", "HashResult", "request_hash", "cookie_value",
]

POLICIES = ("random", "round_robin", "least_request", "ring_hash", "maglev")
HASH_POLICIES = frozenset({"ring_hash", "maglev"})
DEFAULT_CHOICE_COUNT = 2
DEFAULT_MIN_RING = 1024
DEFAULT_MAX_RING = 8388608  # Consul's and Envoy's; what is built is capped (ring.MAX_ENTRIES)


@dataclass(frozen=True, slots=True)
class LoadBalancerConfig:
    """A resolver's `LoadBalancer`, defaults applied. Zero values mean the default, as
    Consul leaves zero fields out of Envoy's config."""

    policy: str = "round_robin"
    choice_count: int = DEFAULT_CHOICE_COUNT
    min_ring_size: int = DEFAULT_MIN_RING
    max_ring_size: int = DEFAULT_MAX_RING
    hash_policies: tuple[HashPolicy, ...] = ()

    @property
    def hashes(self) -> bool:
        """Whether requests need a key (`request_hash`) for this policy."""
        return self.policy in HASH_POLICIES

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, path: str = "LoadBalancer") -> LoadBalancerConfig:
        section = Section.of(raw, path)
        if section is None:
            return cls()
        policy = section.text("Policy") or "round_robin"
        if policy not in POLICIES:
            raise section.error("Policy", f"must be one of {', '.join(POLICIES)}, got {policy!r}")
        least = section.section("LeastRequestConfig")
        if least is not None and policy != "least_request":
            raise section.error("LeastRequestConfig", f"does not apply to Policy {policy!r}")
        ring = section.section("RingHashConfig")
        if ring is not None and policy != "ring_hash":
            raise section.error("RingHashConfig", f"does not apply to Policy {policy!r}")
        if section.raw("HashPolicies") and policy not in HASH_POLICIES:
            raise section.error("HashPolicies", f"need a hash-based Policy (ring_hash or maglev), not {policy!r}")
        choice_count = DEFAULT_CHOICE_COUNT
        if least is not None:
            choice_count = least.whole("ChoiceCount", 0) or DEFAULT_CHOICE_COUNT
            if choice_count < 2:
                raise least.error("ChoiceCount", f"must be a whole number ≥ 2, got {choice_count}")
        min_ring, max_ring = DEFAULT_MIN_RING, DEFAULT_MAX_RING
        if ring is not None:
            min_ring = ring.whole("MinimumRingSize", 0, hi=DEFAULT_MAX_RING) or DEFAULT_MIN_RING
            max_ring = ring.whole("MaximumRingSize", 0, hi=DEFAULT_MAX_RING) or DEFAULT_MAX_RING
            if min_ring > max_ring:
                raise ring.error("MinimumRingSize", f"must not exceed MaximumRingSize ({max_ring}), got {min_ring}")
        policies = tuple(HashPolicy.parse(s) for s in section.sections("HashPolicies"))
        return cls(policy, choice_count, min_ring, max_ring, policies)


def never_ejected(key: str) -> bool:
    """The `ejected` of a pick when nothing is ejected (recognized, and skipped)."""
    return False


def _idle(key: str) -> int:
    return 0


class Picker:
    """Picks one instance per request. Subclasses choose among the usable instances."""

    def pick(
        self,
        endpoints: Sequence[Endpoint],
        *,
        key: int | None = None,
        exclude: Collection[str] = (),
        ejected: Callable[[str], bool] = never_ejected,
        active: Callable[[str], int] = _idle,
    ) -> Endpoint | None:
        """The instance for this request, None only when every one is excluded.
        `key`: the request's hash (hash policies only); `exclude`: keys already tried;
        `ejected(key)`: set aside by outlier detection; `active(key)`: in-flight requests."""
        candidates = [e for e in endpoints if e.key not in exclude] if exclude else list(endpoints)
        if not candidates:
            return None
        if ejected is never_ejected:  # nothing is ejected: the common case costs no call per instance
            pool = candidates
        else:
            pool = [e for e in candidates if not ejected(e.key)] or candidates
        if len(pool) == 1:
            return pool[0]
        return self._choose(endpoints, pool, key, active)

    def _choose(self, endpoints: Sequence[Endpoint], pool: list[Endpoint], key: int | None,
                active: Callable[[str], int]) -> Endpoint:
        raise NotImplementedError


class RoundRobinPicker(Picker):
    """Each usable instance in turn (a counter over the current pool)."""

    def __init__(self) -> None:
        self._next = -1

    def _choose(self, endpoints, pool, key, active):
        self._next += 1
        return pool[self._next % len(pool)]


class RandomPicker(Picker):
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def _choose(self, endpoints, pool, key, active):
        return self._rng.choice(pool)


class LeastRequestPicker(Picker):
    """The instance with fewest in-flight requests among `choice_count` drawn at random
    (power of choices): near a full scan's balance at constant cost, and unlike a global
    minimum it does not send every proxy to the same idle instance at once. Drawn
    without replacement (Envoy draws with), so an instance is never compared with
    itself; with `choice_count` ≥ the pool, every instance is compared, ties at random."""

    def __init__(self, rng: random.Random, choice_count: int = DEFAULT_CHOICE_COUNT) -> None:
        self._rng = rng
        self._choices = choice_count

    def _choose(self, endpoints, pool, key, active):
        drawn = self._rng.sample(pool, min(self._choices, len(pool)))
        return min(drawn, key=lambda e: active(e.key))


class _HashPicker(Picker):
    """Looks a request key up in a structure built over all instances (excluded and
    ejected ones are walked past, so the structure only changes with the set of
    instances). Built once per set: the last list of keys is the cache key, and a new
    list holding the same keys in another order does not rebuild. Without a
    key (no hash policy matched) the pick is random, as Envoy's."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._cached: tuple[str, ...] = ()
        self._hosts: list[str] = []
        self._lookup: Any = None

    def _build(self, hosts: list[str]) -> Any:
        raise NotImplementedError

    def _structure(self, endpoints: Sequence[Endpoint]) -> tuple[list[str], Any]:
        keys = tuple(e.key for e in endpoints)
        if self._lookup is None or keys != self._cached:
            self._cached = keys
            hosts = sorted(set(keys))  # the order instances arrive in does not matter
            if self._lookup is None or hosts != self._hosts:
                self._hosts = hosts
                self._lookup = self._build(hosts)
        return self._hosts, self._lookup

    def _choose(self, endpoints, pool, key, active):
        if key is None:
            return self._rng.choice(pool)
        hosts, structure = self._structure(endpoints)
        usable = {e.key: e for e in pool}
        index = structure.lookup(mix64(key), lambda i: hosts[i] in usable)
        return usable[hosts[index]]


class RingHashPicker(_HashPicker):
    def __init__(self, rng: random.Random, min_size: int = DEFAULT_MIN_RING, max_size: int = DEFAULT_MAX_RING) -> None:
        super().__init__(rng)
        self._min, self._max = min_size, max_size

    def _build(self, hosts: list[str]) -> HashRing:
        return HashRing(hosts, self._min, self._max)


class MaglevPicker(_HashPicker):
    def _build(self, hosts: list[str]) -> MaglevTable:
        return MaglevTable(hosts)


def make_picker(config: LoadBalancerConfig, rng: random.Random) -> Picker:
    """The picker of `config.policy`; one per upstream, kept across requests (it holds the
    round-robin position and the hash structure)."""
    if config.policy == "random":
        return RandomPicker(rng)
    if config.policy == "least_request":
        return LeastRequestPicker(rng, config.choice_count)
    if config.policy == "ring_hash":
        return RingHashPicker(rng, config.min_ring_size, config.max_ring_size)
    if config.policy == "maglev":
        return MaglevPicker(rng)
    return RoundRobinPicker()
