"""Picking an instance: filtering shared by all policies, then each policy's choice."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.endpoint import Endpoint
from mesh.proxy.traffic import lb
from mesh.proxy.traffic.hashing import hash64
from mesh.proxy.traffic.lb import LoadBalancerConfig, make_picker

ENDPOINTS = [Endpoint(f"10.0.0.{i}", 8080, "api") for i in range(10)]
KEYS = [hash64(str(i)) for i in range(2000)]


def picker(policy: str, seed: int = 1, **fields) -> lb.Picker:
    return make_picker(LoadBalancerConfig(policy=policy, **fields), random.Random(seed))


def test_make_picker_gives_the_policy_s_picker():
    assert isinstance(picker("round_robin"), lb.RoundRobinPicker)
    assert isinstance(picker("random"), lb.RandomPicker)
    assert isinstance(picker("least_request"), lb.LeastRequestPicker)
    assert isinstance(picker("ring_hash"), lb.RingHashPicker)
    assert isinstance(picker("maglev"), lb.MaglevPicker)


@pytest.mark.parametrize("policy", lb.POLICIES)
def test_no_candidate_is_none(policy):
    p = picker(policy)
    assert p.pick([]) is None
    assert p.pick(ENDPOINTS[:2], exclude={e.key for e in ENDPOINTS[:2]}, key=KEYS[0]) is None


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(lb.POLICIES),
    st.sets(st.integers(0, 9), max_size=10),
    st.sets(st.integers(0, 9), max_size=10),
    st.one_of(st.none(), st.integers(0, 2**64 - 1)),
)
def test_filtering_excludes_tried_avoids_ejected_but_never_refuses_for_ejection(policy, excluded, ejected, key):
    p = picker(policy)
    exclude = {ENDPOINTS[i].key for i in excluded}
    ejected_keys = {ENDPOINTS[i].key for i in ejected}
    chosen = p.pick(ENDPOINTS, key=key, exclude=exclude, ejected=ejected_keys.__contains__)
    candidates = [e for e in ENDPOINTS if e.key not in exclude]
    if not candidates:
        assert chosen is None
        return
    assert chosen in candidates
    if any(e.key not in ejected_keys for e in candidates):
        assert chosen.key not in ejected_keys


def test_round_robin_cycles_through_every_usable_instance():
    p = picker("round_robin")
    first = [p.pick(ENDPOINTS) for _ in range(10)]
    assert sorted(e.key for e in first) == sorted(e.key for e in ENDPOINTS)
    assert [p.pick(ENDPOINTS) for _ in range(10)] == first
    skipped = ENDPOINTS[3].key
    picks = [p.pick(ENDPOINTS, ejected=lambda k: k == skipped) for _ in range(18)]
    assert Counter(e.key for e in picks) == {e.key: 2 for e in ENDPOINTS if e.key != skipped}


def test_random_spreads_and_follows_the_seed():
    picks = [picker("random", 7).pick(ENDPOINTS) for _ in range(3)]
    assert len(set(picks)) == 1  # a fresh picker with the same seed picks the same
    p = picker("random")
    counts = Counter(p.pick(ENDPOINTS).key for _ in range(5000))
    assert len(counts) == 10 and min(counts.values()) > 350


def test_least_request_prefers_idle_instances():
    busy = {e.key: 10 for e in ENDPOINTS}
    busy[ENDPOINTS[6].key] = 0
    p = picker("least_request", choice_count=10)
    assert all(p.pick(ENDPOINTS, active=busy.__getitem__) == ENDPOINTS[6] for _ in range(20))
    p2 = picker("least_request")  # two choices: the idle one wins whenever it is drawn
    load = {e.key: i for i, e in enumerate(ENDPOINTS)}
    counts = Counter(p2.pick(ENDPOINTS, active=load.__getitem__).key for _ in range(5000))
    ordered = [counts[e.key] for e in ENDPOINTS]
    assert ordered[0] > ordered[4] > ordered[8]
    assert counts[ENDPOINTS[9].key] == 0  # the busiest never beats another


def test_least_request_breaks_ties_at_random():
    p = picker("least_request", choice_count=10)
    counts = Counter(p.pick(ENDPOINTS).key for _ in range(2000))
    assert len(counts) == 10


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_same_key_same_instance(policy):
    p = picker(policy)
    first = [p.pick(ENDPOINTS, key=k) for k in KEYS]
    other = picker(policy, seed=99)  # another sidecar, instances listed in another order
    assert [other.pick(list(reversed(ENDPOINTS)), key=k) for k in KEYS] == first
    counts = Counter(e.key for e in first)
    assert len(counts) == 10 and max(counts.values()) < 2.0 * 200


@pytest.mark.parametrize("policy, limit", [("ring_hash", 0.1 + 0.03), ("maglev", 0.15)])
def test_hash_policies_move_few_keys_when_an_instance_leaves(policy, limit):
    p = picker(policy)
    before = [p.pick(ENDPOINTS, key=k) for k in KEYS]
    fewer = ENDPOINTS[:5] + ENDPOINTS[6:]
    after = [p.pick(fewer, key=k) for k in KEYS]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(moved) / len(KEYS) <= limit
    if policy == "ring_hash":
        assert all(a == ENDPOINTS[5] for a, _ in moved)


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_walk_past_excluded_and_ejected_instances(policy):
    p = picker(policy)
    for k in KEYS[:300]:
        home = p.pick(ENDPOINTS, key=k)
        retry = p.pick(ENDPOINTS, key=k, exclude={home.key})
        assert retry != home
        assert p.pick(ENDPOINTS, key=k, exclude={home.key}) == retry  # deterministic
        assert p.pick(ENDPOINTS, key=k, ejected=lambda key, h=home: key == h.key) == retry


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_hash_policies_without_a_key_pick_at_random(policy):
    p = picker(policy)
    assert len({p.pick(ENDPOINTS).key for _ in range(200)}) == 10


@pytest.mark.parametrize("policy", ["ring_hash", "maglev"])
def test_the_structure_is_rebuilt_only_when_the_set_changes(policy, monkeypatch):
    p = picker(policy)
    built = []
    original = p._build
    monkeypatch.setattr(p, "_build", lambda hosts: built.append(hosts) or original(hosts))
    for k in KEYS[:50]:
        p.pick(ENDPOINTS, key=k, exclude={ENDPOINTS[0].key})
    assert len(built) == 1
    p.pick(list(reversed(ENDPOINTS)), key=KEYS[0])
    assert len(built) == 1  # the same set in another order
    p.pick(ENDPOINTS[1:], key=KEYS[0])
    assert len(built) == 2


def test_small_keys_still_spread():
    p = picker("ring_hash")
    assert len({p.pick(ENDPOINTS, key=k).key for k in range(100)}) >= 8
