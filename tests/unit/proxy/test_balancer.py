"""Instance selection and passive ejection (proxy/balancer.py), with time passed in."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.balancer import Balancer, Endpoint

A, B, C = (Endpoint(f"10.0.0.{i}", 21000, "api") for i in (1, 2, 3))


def test_round_robin_visits_every_instance_in_turn():
    lb = Balancer("round_robin")
    picks = [lb.pick([A, B, C], now=0).key for _ in range(6)]
    assert Counter(picks) == {A.key: 2, B.key: 2, C.key: 2}
    assert picks[:3] == picks[3:]


def test_random_uses_the_injected_rng():
    one = [Balancer("random", random.Random(7)).pick([A, B, C], 0) for _ in range(1)]
    two = [Balancer("random", random.Random(7)).pick([A, B, C], 0) for _ in range(1)]
    assert one == two


def test_least_request_prefers_the_less_busy_of_two():
    lb = Balancer("least_request", random.Random(1))
    for _ in range(10):
        lb.started(A.key)
    picks = Counter(lb.pick([A, B], 0).key for _ in range(50))
    assert picks == {B.key: 50}  # with two instances both are always sampled


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="load_balancer"):
        Balancer("fastest")


def test_excluded_instances_are_not_picked_and_none_when_all_tried():
    lb = Balancer()
    assert lb.pick([A, B], 0, exclude={A.key}) == B
    assert lb.pick([A, B], 0, exclude={A.key, B.key}) is None
    assert lb.pick([], 0) is None


def test_repeated_failures_set_an_instance_aside_for_a_growing_time():
    lb = Balancer(eject_after=2, base_ejection=5, max_ejection=12)
    assert lb.failed(A.key, now=0) is False
    assert lb.failed(A.key, now=0) is True
    assert lb.ejected(A.key, 4.9) and not lb.ejected(A.key, 5.0)
    assert all(lb.pick([A, B], 1).key == B.key for _ in range(5))
    # back after its time; failing again doubles the time, capped
    lb.failed(A.key, now=6)
    assert lb.failed(A.key, now=6) is True
    assert lb.ejected(A.key, 15.9) and not lb.ejected(A.key, 16.0)
    lb.failed(A.key, now=20)
    lb.failed(A.key, now=20)
    assert lb.ejected(A.key, 31.9) and not lb.ejected(A.key, 32.0)  # 12 s cap, not 20


def test_a_success_ends_the_streak():
    lb = Balancer(eject_after=2)
    lb.failed(A.key, 0)
    lb.succeeded(A.key)
    assert lb.failed(A.key, 0) is False


def test_when_every_instance_is_set_aside_traffic_still_flows():
    lb = Balancer(eject_after=1)
    lb.failed(A.key, 0)
    lb.failed(B.key, 0)
    assert lb.pick([A, B], 1) in (A, B)


def test_forget_keeps_instances_with_open_connections():
    lb = Balancer()
    lb.started(A.key)
    lb.failed(B.key, 0)
    lb.forget_except(set())
    lb.finished(A.key)  # still tracked: the count does not go wrong
    assert lb.ejected_count(0) == 0


@given(st.lists(st.tuples(st.sampled_from(["start", "finish", "fail", "ok", "pick"]),
                          st.integers(0, 2), st.floats(0, 1000)), max_size=200))
def test_any_sequence_keeps_counts_sane_and_picks_from_the_list(ops):
    lb = Balancer("least_request", random.Random(0), eject_after=2)
    eps = [A, B, C]
    now = 0.0
    for op, i, dt in ops:
        now += dt
        key = eps[i].key
        if op == "start":
            lb.started(key)
        elif op == "finish":
            lb.finished(key)
        elif op == "fail":
            lb.failed(key, now)
        elif op == "ok":
            lb.succeeded(key)
        else:
            assert lb.pick(eps, now) in eps
        assert all(h.active >= 0 for h in lb._health.values())
