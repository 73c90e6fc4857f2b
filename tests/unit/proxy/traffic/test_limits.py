"""Circuit breaking: connections, pending and concurrent requests within their limits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.traffic.limits import KINDS, Breaker, Limits


@pytest.mark.parametrize("raw", [None, {}, {"max_connections": 0, "MaxPendingRequests": 0}])
def test_unconfigured_or_zero_is_unlimited(raw):
    parsed = Limits.parse(raw)
    assert parsed == Limits() and not parsed
    breaker = Breaker(parsed)
    assert all(breaker.open_connection() and breaker.start_pending() and breaker.start_request() for _ in range(1000))
    assert breaker.overloaded_total == {"connections": 0, "pending": 0, "requests": 0}


def test_parse_reads_either_case():
    parsed = Limits.parse({"MaxConnections": 3, "max_pending_requests": 2, "max-concurrent-requests": 1})
    assert parsed == Limits(3, 2, 1) and parsed


@pytest.mark.parametrize("raw, message", [
    ({"max_connections": -1}, r"^limits\.max_connections: must be a whole number ≥ 0, got -1$"),
    ({"max_concurrent_requests": "10"}, r"^limits\.max_concurrent_requests: must be a whole number"),
    ([1], r"^limits: must be an object"),
])
def test_invalid_config_names_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        Limits.parse(raw)


@pytest.mark.parametrize("kind, start, end, field", [
    ("connections", "open_connection", "close_connection", "max_connections"),
    ("pending", "start_pending", "end_pending", "max_pending_requests"),
    ("requests", "start_request", "end_request", "max_concurrent_requests"),
])
def test_each_limit_is_enforced_and_freed(kind, start, end, field):
    breaker = Breaker(Limits(**{field: 2}))
    assert [getattr(breaker, start)() for _ in range(3)] == [True, True, False]
    assert breaker.active[kind] == 2  # the refused start changed nothing
    assert breaker.overloaded_total[kind] == 1
    getattr(breaker, end)()
    assert getattr(breaker, start)()
    others = [k for k in KINDS if k != kind]
    assert all(breaker.overloaded_total[k] == 0 for k in others)


def test_counts_never_go_below_zero():
    breaker = Breaker(Limits(1, 1, 1))
    breaker.close_connection()
    breaker.end_pending()
    breaker.end_request()
    assert breaker.active == {"connections": 0, "pending": 0, "requests": 0}
    assert breaker.open_connection() and not breaker.open_connection()


@given(st.lists(st.tuples(st.sampled_from(KINDS), st.booleans()), max_size=200), st.integers(1, 5))
def test_counts_stay_within_limits_under_any_sequence(ops, limit):
    breaker = Breaker(Limits(limit, limit, limit))
    for kind, starting in ops:
        before = dict(breaker.active)
        if starting:
            admitted = breaker.start(kind)
            assert breaker.active[kind] == before[kind] + admitted
        else:
            breaker.end(kind)
        assert all(0 <= breaker.active[k] <= limit for k in KINDS)
