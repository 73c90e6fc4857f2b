"""A consistent hash ring (Karger et al.; Envoy's `ring_hash`). Pure.

Each host is placed on a 64-bit circle at many points ("virtual nodes") and a key
belongs to the first point at or after its own hash, wrapping around. Removing a host
hands only its own arcs to its neighbours, so about 1/N of the keys move and the others
stay where they were: the point of hashing a session to an instance.

Replicas per host: the smallest power of two that gives the ring at least
`min_size` entries, then cut so that it holds at most `max_size` (itself capped at
`MAX_ENTRIES`). Envoy uses ceil(min_size / N) per host, which changes with nearly
every change in N and so inserts new points for hosts that stayed, moving some of
their keys between them; rounding to a power of two keeps the count (and every point of
a staying host) unchanged until N crosses a power-of-two boundary, for at most twice
the memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

from .hashing import hash64

__all__ = ["HashRing", "MAX_ENTRIES", "replicas_per_host", "walk"]

# Consul's MaximumRingSize default is 8,388,608 (Envoy's); a ring of that many Python
# ints is ~0.5 GB and seconds to build. 65,536 points keep the spread within a few
# percent for hundreds of hosts, which is as many as one upstream has here.
MAX_ENTRIES = 65536


def replicas_per_host(hosts: int, min_size: int, max_size: int) -> int:
    """Points each host gets on a ring of `hosts` hosts (see the module docstring)."""
    if hosts <= 0:
        return 0
    need = -(-max(min_size, 1) // hosts)
    replicas = 1 << (need - 1).bit_length()
    cap = min(max_size, MAX_ENTRIES)
    if replicas * hosts > cap:
        replicas = max(1, cap // hosts)
    return replicas


class HashRing:
    """The ring of one set of hosts; `lookup` returns an index into `hosts`."""

    def __init__(self, hosts: Sequence[str], min_size: int = 1024, max_size: int = MAX_ENTRIES) -> None:
        self.hosts = tuple(hosts)
        replicas = replicas_per_host(len(self.hosts), min_size, max_size)
        points = sorted(
            (hash64(f"{host}_{i}"), index) for index, host in enumerate(self.hosts) for i in range(replicas)
        )
        self._hashes = [h for h, _ in points]
        self._owners = [index for _, index in points]

    def __len__(self) -> int:
        return len(self._hashes)

    def lookup(self, key: int, accept: Callable[[int], bool] = lambda index: True) -> int | None:
        """The host owning `key` (a 64-bit hash): the first point at or after it whose
        host is accepted, walking on past refused ones. None when no host is accepted."""
        start = bisect.bisect_left(self._hashes, key)
        return walk(self._owners, start, len(self.hosts), accept, set())


def walk(owners: Sequence[int], start: int, hosts: int, accept: Callable[[int], bool],
         refused: set[int]) -> int | None:
    """The first owner from `owners[start]` on, wrapping, that is accepted; each host is
    asked once (`refused` holds those already refused). None once all `hosts` refused."""
    size = len(owners)
    if len(refused) >= hosts:
        return None
    for step in range(size):
        owner = owners[(start + step) % size]
        if owner in refused:
            continue
        if accept(owner):
            return owner
        refused.add(owner)
        if len(refused) >= hosts:
            return None
    return None
