"""Outlier ejection with a fake clock: Envoy's consecutive-5xx detector."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.traffic.outlier import OutlierDetector, PassiveHealthCheck

HOSTS = [f"10.0.0.{i}:8080" for i in range(10)]
A, B, C = HOSTS[:3]


def detector(hosts=HOSTS, seed=1, **fields) -> OutlierDetector:
    d = OutlierDetector(PassiveHealthCheck(**fields), random.Random(seed))
    d.set_hosts(hosts)
    return d


def fail(d: OutlierDetector, key: str, times: int, now: float = 0.0) -> list[bool]:
    return [d.record(key, False, now) for _ in range(times)]


# ---- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [None, {}])
def test_unconfigured_is_envoy_s_defaults(raw):
    config = PassiveHealthCheck.parse(raw)
    assert config == PassiveHealthCheck(10.0, 5, 100, 10, 30.0)
    assert config.max_ejection_time == 300.0


def test_parse_reads_durations_numbers_and_either_case():
    config = PassiveHealthCheck.parse({"interval": "1s", "MaxFailures": 3, "enforcing_consecutive_5xx": 50,
                                       "max-ejection-percent": 100, "base_ejection_time": 2})
    assert config == PassiveHealthCheck(1.0, 3, 50, 100, 2.0)


def test_zero_interval_and_max_failures_are_defaults_zero_percentages_are_not():
    config = PassiveHealthCheck.parse({"interval": "0s", "max_failures": 0, "enforcing_consecutive_5xx": 0,
                                       "max_ejection_percent": 0})
    assert (config.interval, config.max_failures) == (10.0, 5)
    assert (config.enforcing_consecutive_5xx, config.max_ejection_percent) == (0, 0)


def test_a_long_base_time_raises_the_cap():
    assert PassiveHealthCheck(base_ejection_time=600).max_ejection_time == 600


@pytest.mark.parametrize("raw, message", [
    ({"max_failures": -1}, r"^passive_health_check\.max_failures: must be a whole number ≥ 0, got -1$"),
    ({"enforcing_consecutive_5xx": 101}, r"^passive_health_check\.enforcing_consecutive_5xx: must be a whole number from 0 to 100"),
    ({"max_ejection_percent": 1.5}, r"^passive_health_check\.max_ejection_percent: "),
    ({"interval": "often"}, r"^passive_health_check\.interval: must be a duration"),
    ({"base_ejection_time": "0s"}, r"^passive_health_check\.base_ejection_time: must be more than 0"),
    ("5", r"^passive_health_check: must be an object"),
])
def test_invalid_config_names_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        PassiveHealthCheck.parse(raw)


# ---- detection --------------------------------------------------------------------------

def test_ejects_after_max_failures_not_one_before():
    d = detector()
    assert fail(d, A, 5) == [False, False, False, False, True]
    assert d.ejected(A) and not d.ejected(B)
    assert d.current_ejections() == 1 and d.ejections_total == 1 and d.times_ejected(A) == 1


def test_a_success_resets_the_streak():
    d = detector(max_failures=3)
    fail(d, A, 2)
    d.record(A, True, 0)
    assert fail(d, A, 2) == [False, False]
    assert fail(d, A, 1) == [True]


def test_failures_of_other_hosts_do_not_add_up():
    d = detector(max_failures=3)
    for key in (A, B, C, A, B):
        d.record(key, False, 0)
    assert d.current_ejections() == 0


def test_hosts_return_only_at_a_sweep_once_their_time_is_up():
    d = detector(base_ejection_time=30)
    fail(d, A, 5, now=100)
    assert d.sweep(110, HOSTS) == [] and d.ejected(A)
    assert d.sweep(129.9, HOSTS) == [] and d.ejected(A)
    assert d.ejected(A)  # no clock in `ejected`: time alone returns nobody
    assert d.sweep(130, HOSTS) == [A]
    assert not d.ejected(A) and d.current_ejections() == 0


def test_ejection_time_grows_with_times_ejected_and_is_capped():
    d = detector(base_ejection_time=100)
    now = 0.0
    durations = []
    for _ in range(5):
        fail(d, A, 5, now=now)
        ejected_at = now
        while d.ejected(A):
            now += 10
            d.sweep(now, HOSTS)
        durations.append(now - ejected_at)
    assert durations == [100, 200, 300, 300, 300]  # times 1, 2, 3, then max(100 s, 300 s)


def test_times_ejected_is_lowered_at_each_sweep_while_in_service():
    d = detector(base_ejection_time=10)
    fail(d, A, 5, now=0)
    d.sweep(10, HOSTS)  # returned: no lowering at the sweep that returns it
    fail(d, A, 5, now=11)
    assert d.times_ejected(A) == 2
    d.sweep(20, HOSTS)  # still ejected (20 s): no lowering
    assert d.times_ejected(A) == 2
    assert d.sweep(31, HOSTS) == [A] and d.times_ejected(A) == 2
    d.sweep(41, HOSTS)
    assert d.times_ejected(A) == 1
    d.sweep(51, HOSTS)
    d.sweep(61, HOSTS)
    assert d.times_ejected(A) == 0
    fail(d, A, 5, now=70)
    d.sweep(80, HOSTS)
    assert not d.ejected(A)  # ejected for the base time again


def test_the_percentage_cap_limits_ejections():
    d = detector(max_ejection_percent=20)  # 2 of 10
    assert fail(d, A, 5)[-1] and fail(d, B, 5)[-1]
    assert not fail(d, C, 5)[-1]
    assert d.current_ejections() == 2 and d.ejections_overflow_total == 1


def test_one_host_may_always_be_ejected_but_no_second_beyond_the_cap():
    d = detector(hosts=HOSTS[:3])  # 10% of 3 is less than one host
    assert fail(d, A, 5)[-1]
    assert not fail(d, B, 5)[-1]
    assert d.current_ejections() == 1


def test_a_zero_percentage_ejects_nothing():
    d = detector(max_ejection_percent=0)
    assert not any(fail(d, A, 50))


def test_enforcing_zero_never_ejects_and_fifty_sometimes():
    never = detector(enforcing_consecutive_5xx=0)
    assert not any(fail(never, A, 500))
    sometimes = detector(enforcing_consecutive_5xx=50, max_ejection_percent=100)
    results = [fail(sometimes, key, 5)[-1] for key in HOSTS]
    assert 0 < sum(results) < 10


def test_a_refused_roll_needs_another_full_streak():
    class Rolls(random.Random):
        def __init__(self, values):
            super().__init__(0)
            self.values = list(values)

        def random(self):
            return self.values.pop(0)

    d = OutlierDetector(PassiveHealthCheck(enforcing_consecutive_5xx=50), Rolls([0.9, 0.1]))
    d.set_hosts(HOSTS)
    assert fail(d, A, 5) == [False] * 5  # rolled 90 ≥ 50
    assert fail(d, A, 5) == [False] * 4 + [True]


def test_failures_while_ejected_change_nothing():
    d = detector()
    fail(d, A, 5)
    assert not any(fail(d, A, 20))
    assert d.ejections_total == 1


def test_sweep_forgets_departed_hosts_unless_ejected():
    d = detector(base_ejection_time=10)
    fail(d, A, 5, now=0)
    fail(d, B, 3, now=0)
    d.sweep(5, HOSTS[2:])
    assert d.ejected(A)  # left while ejected: kept
    assert fail(d, B, 2) == [False, False]  # B's streak was forgotten
    assert d.sweep(10, HOSTS[2:]) == [A]
    assert d.times_ejected(A) == 0  # forgotten once returned


def test_unknown_hosts_count_toward_the_percentage():
    d = OutlierDetector(PassiveHealthCheck(max_ejection_percent=50), random.Random(1))
    d.record(A, True, 0)
    fail(d, B, 5)
    assert d.ejected(B)
    assert not fail(d, C, 5)[-1]  # 2 of 2 known hosts would be 100%


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans(), st.booleans()), max_size=200),
       st.integers(0, 100), st.integers(1, 6))
def test_invariants_under_any_sequence(events, percent, max_failures):
    d = detector(max_ejection_percent=percent, max_failures=max_failures, base_ejection_time=5)
    now = 0.0
    for index, ok, sweep in events:
        now += 1
        if sweep:
            returned = d.sweep(now, HOSTS)
            assert all(not d.ejected(k) for k in returned)
        d.record(HOSTS[index], ok, now)
        ejected = d.current_ejections()
        assert ejected == sum(d.ejected(k) for k in HOSTS)
        assert ejected <= max(1 if percent else 0, percent * len(HOSTS) // 100)
        assert all(d.times_ejected(k) >= 0 for k in HOSTS)
    assert d.ejections_total >= d.current_ejections()
