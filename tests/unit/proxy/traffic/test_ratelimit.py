"""Instance-level rate limits with a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.traffic.ratelimit import RateLimiter, RateLimits, TokenBucket, Verdict


def limits(instance=None, routes=None) -> RateLimits:
    level = dict(instance or {})
    if routes is not None:
        level["Routes"] = routes
    return RateLimits.parse({"InstanceLevel": level})


# ---- config -----------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [None, {}, {"InstanceLevel": {}}, {"InstanceLevel": {"RequestsPerSecond": 0}}])
def test_nothing_limited_is_false(raw):
    assert not RateLimits.parse(raw)


def test_parse_defaults_burst_to_the_rate_and_reads_routes():
    parsed = RateLimits.parse({"instance_level": {"requests_per_second": 5, "Routes": [
        {"PathPrefix": "/api", "RequestsPerSecond": 2, "RequestsMaxBurst": 4},
        {"PathExact": "/health", "RequestsPerSecond": 1},
    ]}})
    assert parsed and (parsed.rate, parsed.burst) == (5, 5)
    assert [(r.kind, r.value, r.rate, r.burst) for r in parsed.routes] == [
        ("PathPrefix", "/api", 2, 4), ("PathExact", "/health", 1, 1)]


def test_the_instance_level_fields_outside_instance_level_are_refused():
    with pytest.raises(ValueError, match=r"^RateLimits\.RequestsPerSecond: belongs inside InstanceLevel"):
        RateLimits.parse({"RequestsPerSecond": 5})


def test_routes_alone_are_a_limit():
    assert limits(routes=[{"PathExact": "/x", "RequestsPerSecond": 1}])


@pytest.mark.parametrize("level, message", [
    ({"RequestsPerSecond": -1}, r"^RateLimits\.InstanceLevel\.RequestsPerSecond: must be a whole number ≥ 0"),
    ({"RequestsPerSecond": 1.5}, r"RequestsPerSecond: must be a whole number"),
    ({"Routes": [{"PathExact": "/a"}]}, r"^RateLimits\.InstanceLevel\.Routes\[0\]\.RequestsPerSecond: must be a whole number ≥ 1"),
    ({"Routes": [{"RequestsPerSecond": 1}]}, r"^RateLimits\.InstanceLevel\.Routes\[0\]: must set exactly one of"),
    ({"Routes": [{"PathExact": "/a", "PathPrefix": "/", "RequestsPerSecond": 1}]}, r"Routes\[0\]: must set exactly one"),
    ({"Routes": [{"PathExact": "/a", "RequestsPerSecond": 1}, None]}, r"Routes\[1\]: must set one of"),
    ({"Routes": [{"PathRegex": "(", "RequestsPerSecond": 1}]}, r"Routes\[0\]\.PathRegex: invalid regular expression"),
    ({"Routes": [{"PathRegex": "(a)\\1", "RequestsPerSecond": 1}]}, r"Routes\[0\]\.PathRegex: invalid regular expression"),
    ({"Routes": {"PathExact": "/a"}}, r"Routes: must be a list"),
])
def test_invalid_config_names_the_field(level, message):
    with pytest.raises(ValueError, match=message):
        RateLimits.parse({"InstanceLevel": level})


# ---- token bucket -----------------------------------------------------------------------

def test_bucket_starts_full_then_refuses_with_the_wait():
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(10.0) == pytest.approx(0.5)
    assert bucket.take(10.25) == pytest.approx(0.25)  # refused takes consume nothing
    assert bucket.take(10.5) == 0.0
    assert bucket.take(10.5) > 0


def test_bucket_refills_up_to_its_burst_only():
    bucket = TokenBucket(rate=10, burst=2)
    bucket.take(0)
    bucket.take(0)
    assert [bucket.take(100) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(100) > 0


def test_a_clock_going_back_adds_nothing():
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(50) == 0.0
    assert bucket.take(40) == pytest.approx(1.0)
    assert bucket.take(50.5) == pytest.approx(0.5)  # measured from the latest time seen


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 5), (1, 0.5)])
def test_bucket_needs_a_rate_and_room_for_a_token(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50), st.integers(1, 50), st.lists(st.floats(0, 2, allow_nan=False), max_size=100))
def test_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(rate, burst, gaps):
    bucket = TokenBucket(rate, burst)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0
        allowed += wait == 0.0
        assert allowed <= burst + rate * now + 1e-9


# ---- limiter ----------------------------------------------------------------------------

def test_instance_burst_passes_then_refuses_with_retry_after():
    limiter = RateLimiter(limits({"RequestsPerSecond": 2, "RequestsMaxBurst": 4}))
    assert [limiter.check("/", 0).allowed for _ in range(4)] == [True] * 4
    assert limiter.check("/", 0) == Verdict(False, "instance", 1)
    assert limiter.check("/", 0.5) == Verdict(True, "instance", 0)


def test_retry_after_rounds_up_to_whole_seconds():
    limiter = RateLimiter(limits({"RequestsPerSecond": 1, "RequestsMaxBurst": 1}))
    limiter.check("/", 0)
    assert limiter.check("/", 0.3) == Verdict(False, "instance", 1)  # 0.7 s away: 1, never 0
    limiter = RateLimiter(limits({"RequestsPerSecond": 1, "RequestsMaxBurst": 3}))
    assert all(limiter.check("/", 0).allowed for _ in range(3))
    assert limiter.check("/", 0).retry_after == 1


def test_refill_over_time():
    limiter = RateLimiter(limits({"RequestsPerSecond": 10}))
    assert all(limiter.check("/", 0).allowed for _ in range(10))
    assert not limiter.check("/", 0).allowed
    assert limiter.check("/", 0.1).allowed
    assert not limiter.check("/", 0.1).allowed
    assert sum(limiter.check("/", 5).allowed for _ in range(20)) == 10


def test_first_matching_route_applies_with_its_own_bucket():
    limiter = RateLimiter(limits({"RequestsPerSecond": 100}, [
        {"PathExact": "/api/login", "RequestsPerSecond": 1},
        {"PathPrefix": "/api", "RequestsPerSecond": 2},
    ]))
    assert limiter.check("/api/login", 0) == Verdict(True, "route-0")
    assert limiter.check("/api/login", 0) == Verdict(False, "route-0", 1)
    assert limiter.check("/api/users", 0) == Verdict(True, "route-1")  # its own, untouched bucket
    assert limiter.check("/api/users", 0) == Verdict(True, "route-1")
    assert limiter.check("/api/users", 0).allowed is False
    assert limiter.check("/other", 0) == Verdict(True, "instance")  # the instance bucket is separate


def test_unmatched_path_without_an_instance_limit_is_unlimited():
    limiter = RateLimiter(limits(routes=[{"PathPrefix": "/api", "RequestsPerSecond": 1}]))
    assert all(limiter.check("/static/x", 0) == Verdict(True, "") for _ in range(100))


def test_regex_route_matches_the_whole_path():
    limiter = RateLimiter(limits(routes=[{"PathRegex": "/users/[0-9]+", "RequestsPerSecond": 1}]))
    assert limiter.check("/users/42", 0).route == "route-0"
    assert not limiter.check("/users/7", 0).allowed  # the same route's bucket
    assert limiter.check("/users/42/posts", 0).route == ""
    assert limiter.check("/x/users/42", 0).route == ""
