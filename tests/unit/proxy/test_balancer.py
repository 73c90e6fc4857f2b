"""One target's balancer (proxy/balancer.py): the resolver's picker joined with passive
health checking and in-flight counts, with time passed in."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.balancer import Balancer
from mesh.proxy.endpoint import Endpoint
from mesh.proxy.traffic.lb import LoadBalancerConfig
from mesh.proxy.traffic.outlier import PassiveHealthCheck

A, B, C = (Endpoint(f"10.0.0.{i}", 21000, "api") for i in (1, 2, 3))
EAGER = PassiveHealthCheck.parse({"max_failures": 2, "base_ejection_time": "5s", "interval": "1s",
                                  "max_ejection_percent": 100})


def _lb(policy: str) -> LoadBalancerConfig:
    return LoadBalancerConfig.parse({"Policy": policy})


def test_round_robin_visits_every_instance_in_turn():
    lb = Balancer(_lb("round_robin"))
    picks = [lb.pick([A, B, C], now=0).key for _ in range(6)]
    assert Counter(picks) == {A.key: 2, B.key: 2, C.key: 2}
    assert picks[:3] == picks[3:]


def test_least_request_counts_what_the_balancer_started_and_finished():
    lb = Balancer(_lb("least_request"), rng=random.Random(1))
    for _ in range(10):
        lb.started(A.key)
    assert Counter(lb.pick([A, B], 0).key for _ in range(50)) == {B.key: 50}
    for _ in range(10):
        lb.finished(A.key)
    lb.started(B.key)
    assert Counter(lb.pick([A, B], 0).key for _ in range(50)) == {A.key: 50}


def test_excluded_instances_are_not_picked_and_none_when_all_tried():
    lb = Balancer()
    assert lb.pick([A, B], 0, exclude={A.key}) == B
    assert lb.pick([A, B], 0, exclude={A.key, B.key}) is None
    assert lb.pick([], 0) is None


def test_consecutive_failures_eject_an_instance_until_a_sweep_after_its_time():
    lb = Balancer(_lb("round_robin"), EAGER, random.Random(0))
    lb.outlier.set_hosts([A.key, B.key])
    assert lb.failed(A.key, now=0) is False
    assert lb.failed(A.key, now=0) is True
    assert lb.ejected(A.key) and lb.ejected_count() == 1
    assert all(lb.pick([A, B], 1).key == B.key for _ in range(5))
    assert lb.sweep(4.0, [A.key, B.key]) == []  # not yet: 5 s
    assert lb.sweep(5.5, [A.key, B.key]) == [A.key]
    assert not lb.ejected(A.key) and lb.last_sweep == 5.5


def test_a_success_ends_the_streak():
    lb = Balancer(passive=EAGER)
    lb.failed(A.key, 0)
    lb.succeeded(A.key, 0)
    assert lb.failed(A.key, 0) is False


def test_a_hash_key_keeps_a_ring_hash_pick_on_one_instance():
    lb = Balancer(LoadBalancerConfig.parse({"Policy": "ring_hash",
                                            "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}))
    assert lb.uses_hash
    assert len({lb.pick([A, B, C], 0, key=12345).key for _ in range(20)}) == 1


def test_settings_decide_whether_a_balancer_can_be_kept():
    lb = Balancer(_lb("random"), EAGER)
    assert lb.fits(_lb("random"), EAGER)
    assert not lb.fits(_lb("round_robin"), EAGER)
    assert not lb.fits(_lb("random"), PassiveHealthCheck())


@given(st.lists(st.tuples(st.sampled_from(["start", "finish", "fail", "ok", "pick", "sweep"]),
                          st.integers(0, 2), st.floats(0, 1000)), max_size=200))
def test_any_sequence_keeps_counts_sane_and_picks_from_the_list(ops):
    lb = Balancer(_lb("least_request"), EAGER, random.Random(0))
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
            lb.succeeded(key, now)
        elif op == "sweep":
            lb.sweep(now, [e.key for e in eps])
        else:
            assert lb.pick(eps, now) in eps
        assert all(count > 0 for count in lb._active.values())
        assert 0 <= lb.ejected_count() <= 3
