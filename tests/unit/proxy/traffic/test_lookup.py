"""What the ring and the Maglev table promise alike: a lookup lands on an accepted host
whenever there is one, and on nothing otherwise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.traffic.maglev import MaglevTable
from mesh.proxy.traffic.ring import HashRing

BUILDERS = {
    "ring": lambda hosts: HashRing(hosts, 64),
    "maglev": lambda hosts: MaglevTable(hosts, size=251),  # small prime: fast to build per example
}


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
@settings(max_examples=50, deadline=None)
@given(st.sets(st.integers(0, 255), min_size=1, max_size=12), st.integers(0, 2**64 - 1), st.data())
def test_lookup_returns_an_accepted_host_when_there_is_one(build, octets, key, data):
    hosts = [f"10.1.0.{o}:80" for o in sorted(octets)]
    structure = build(hosts)
    accepted = data.draw(st.sets(st.sampled_from(hosts)))
    asked: list[int] = []

    def accept(index: int) -> bool:
        asked.append(index)
        return hosts[index] in accepted

    index = structure.lookup(key, accept)
    if accepted:
        assert hosts[index] in accepted
    else:
        assert index is None
    assert len(asked) == len(set(asked)) <= len(hosts)  # each host is asked once at most
    assert structure.lookup(key, accept) == index  # deterministic


@pytest.mark.parametrize("build", BUILDERS.values(), ids=BUILDERS.keys())
def test_an_empty_set_finds_nothing(build):
    assert build([]).lookup(12345) is None
