"""The consistent hash ring: stable, even, and minimal movement when a host leaves."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.traffic.hashing import mix64
from mesh.proxy.traffic.ring import MAX_ENTRIES, HashRing, replicas_per_host

HOSTS = [f"10.0.0.{i}:8080" for i in range(10)]
KEYS = [mix64(i) for i in range(10_000)]


def owners(ring: HashRing, keys=KEYS) -> list[str]:
    return [ring.hosts[ring.lookup(k)] for k in keys]


def test_replicas_reach_the_minimum_as_a_power_of_two():
    assert replicas_per_host(10, 1024, 8388608) == 128
    assert replicas_per_host(9, 1024, 8388608) == 128  # unchanged: staying hosts keep their points
    assert replicas_per_host(1, 1024, 8388608) == 1024
    assert replicas_per_host(3, 1, 8388608) == 1
    assert replicas_per_host(0, 1024, 8388608) == 0


def test_replicas_are_capped_by_the_maximum_and_by_what_we_build():
    assert replicas_per_host(10, 1024, 500) == 50
    assert replicas_per_host(10, 8388608, 8388608) * 10 <= MAX_ENTRIES
    assert replicas_per_host(100_000, 1024, 8388608) == 1  # every host is on the ring


@given(st.integers(1, 300), st.integers(1, 100_000), st.integers(1, 8388608))
def test_ring_size_bounds(hosts, min_size, max_size):
    replicas = replicas_per_host(hosts, min_size, max_size)
    assert replicas >= 1
    cap = min(max_size, MAX_ENTRIES)
    assert replicas * hosts <= cap or replicas == 1
    if min_size <= cap and hosts <= cap:
        assert replicas * hosts >= min(min_size, cap // hosts * hosts)


def test_ring_has_at_least_the_minimum_size():
    assert len(HashRing(HOSTS, 1024)) >= 1024
    assert len(HashRing(HOSTS, 1024)) == 1280


def test_same_key_same_host_and_order_of_hosts_does_not_matter():
    ring = HashRing(HOSTS)
    assert owners(ring) == owners(ring)
    shuffled = HashRing(list(reversed(HOSTS)))
    assert owners(shuffled) == owners(ring)


def test_keys_spread_roughly_evenly():
    counts = Counter(owners(HashRing(HOSTS)))
    assert len(counts) == 10
    assert max(counts.values()) < 1.35 * 1000 and min(counts.values()) > 0.65 * 1000


def test_removing_one_host_moves_only_its_keys():
    before = owners(HashRing(HOSTS))
    for gone in (HOSTS[0], HOSTS[4], HOSTS[9]):
        after = owners(HashRing([h for h in HOSTS if h != gone]))
        moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert len(moved) / len(KEYS) <= 1 / 10 + 0.03
        assert all(a == gone for a, _ in moved), "a key of a host that stayed moved"


def test_adding_a_host_takes_keys_only_for_itself():
    before = owners(HashRing(HOSTS[:9]))
    after = owners(HashRing(HOSTS))
    assert all(b == HOSTS[9] for a, b in zip(before, after, strict=True) if a != b)


def test_a_refused_host_is_walked_past_to_its_successor():
    ring = HashRing(HOSTS)
    refused = HOSTS[3]
    for key, owner in zip(KEYS[:2000], owners(ring, KEYS[:2000]), strict=True):
        index = ring.lookup(key, lambda i: ring.hosts[i] != refused)
        assert ring.hosts[index] != refused
        if owner != refused:
            assert ring.hosts[index] == owner


def test_nothing_accepted_is_none():
    ring = HashRing(HOSTS)
    assert ring.lookup(KEYS[0], lambda i: False) is None
