"""The Maglev table: even, stable, little disruption, deterministic fallback."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from mesh.proxy.traffic.hashing import mix64
from mesh.proxy.traffic.maglev import TABLE_SIZE, MaglevTable

HOSTS = [f"10.0.0.{i}:8080" for i in range(10)]
KEYS = [mix64(i) for i in range(10_000)]


@pytest.fixture(scope="module")
def table() -> MaglevTable:
    return MaglevTable(HOSTS)


def owners(table: MaglevTable, keys=KEYS) -> list[str]:
    return [table.hosts[table.lookup(k)] for k in keys]


def test_every_host_owns_an_almost_equal_share_of_slots(table):
    counts = table.owner_counts()
    assert sum(counts) == TABLE_SIZE
    assert max(counts) - min(counts) <= 1


def test_keys_spread_evenly(table):
    counts = Counter(owners(table))
    assert max(counts.values()) < 1.15 * 1000 and min(counts.values()) > 0.85 * 1000


def test_same_key_same_host_and_the_build_is_deterministic(table):
    assert owners(table) == owners(MaglevTable(HOSTS))


def test_removing_one_host_moves_about_one_nth_of_the_keys(table):
    before = owners(table)
    after = owners(MaglevTable(HOSTS[1:]))
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert sum(1 for a, _ in moved if a == HOSTS[0]) == Counter(before)[HOSTS[0]]  # all of its keys left it
    assert len(moved) / len(KEYS) <= 1.5 / 10


def test_building_for_50_hosts_is_fast_enough():
    started = time.perf_counter()
    MaglevTable([f"10.0.1.{i}:8080" for i in range(50)])
    assert time.perf_counter() - started < 0.5  # ~60 ms alone; room for a shared machine


def test_a_refused_host_spreads_its_keys_over_the_others(table):
    refused = HOSTS[2]
    moved_to = Counter()
    for key, owner in zip(KEYS, owners(table), strict=True):
        index = table.lookup(key, lambda i: table.hosts[i] != refused)
        host = table.hosts[index]
        assert host != refused
        if owner != refused:
            assert host == owner
        else:
            moved_to[host] += 1
            assert table.lookup(key, lambda i: table.hosts[i] != refused) == index  # deterministic
    assert len(moved_to) >= 8  # rehashing spreads them, not all onto one neighbour


def test_nothing_accepted_is_none(table):
    assert table.lookup(KEYS[0], lambda i: False) is None
