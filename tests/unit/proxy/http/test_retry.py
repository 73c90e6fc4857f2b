"""Retry decisions, budget and backoff (proxy/http/retry.py), with time passed in."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.http.retry import (
    CONNECT_FAILURE,
    PER_TRY_TIMEOUT,
    REFUSED_STREAM,
    RESET,
    RetryBudget,
    RetryPolicy,
    backoff,
    decide_retry,
)
from mesh.proxy.http.routes import Route


def route(**kw):
    return Route(name="route-0", service="api", **kw)


class Clock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now


def test_policy_from_route_defaults():
    assert RetryPolicy.from_route(route()).num_retries == 0
    assert RetryPolicy.from_route(route(num_retries=3)).num_retries == 0  # no condition: no retry
    policy = RetryPolicy.from_route(route(retry_on=frozenset({"5xx"})))
    assert policy.num_retries == 1  # Consul/Envoy default
    policy = RetryPolicy.from_route(route(retry_on_connect_failure=True, num_retries=4))
    assert (policy.num_retries, policy.retry_on) == (4, frozenset({"connect-failure"}))
    assert RetryPolicy.from_route(route(retry_on_status_codes=frozenset({418}))).status_codes == {418}
    assert RetryPolicy.from_route(route(retry_on=frozenset({"unavailable"}))).num_retries == 0  # gRPC only
    with pytest.raises(ValueError, match="'sometimes'"):
        RetryPolicy.from_route(route(retry_on=frozenset({"sometimes"})))


P = {name: RetryPolicy(2, frozenset({name})) for name in
     ("5xx", "gateway-error", "reset", "connect-failure", "refused-stream", "retriable-4xx", "envoy-ratelimited")}


@pytest.mark.parametrize(
    "condition, outcome, retried",
    [
        ("5xx", 500, True), ("5xx", 503, True), ("5xx", 599, True), ("5xx", 404, False), ("5xx", 200, False),
        ("5xx", RESET, True), ("5xx", CONNECT_FAILURE, True), ("5xx", PER_TRY_TIMEOUT, True),
        ("5xx", REFUSED_STREAM, True),
        ("gateway-error", 502, True), ("gateway-error", 503, True), ("gateway-error", 504, True),
        ("gateway-error", 500, False), ("gateway-error", RESET, True), ("gateway-error", CONNECT_FAILURE, True),
        ("reset", RESET, True), ("reset", PER_TRY_TIMEOUT, True), ("reset", CONNECT_FAILURE, True),
        ("reset", 503, False),
        ("connect-failure", CONNECT_FAILURE, True), ("connect-failure", RESET, False),
        ("connect-failure", 503, False),
        ("refused-stream", REFUSED_STREAM, True), ("refused-stream", RESET, False),
        ("retriable-4xx", 409, True), ("retriable-4xx", 400, False),
        ("envoy-ratelimited", 429, True), ("envoy-ratelimited", 503, False),
    ],
)
def test_conditions(condition, outcome, retried):
    assert decide_retry(P[condition], 1, outcome, "GET", reached_app=True).retry is retried


def test_status_codes():
    policy = RetryPolicy(1, frozenset(), frozenset({503, 418}))
    assert decide_retry(policy, 1, 418, "GET", True).retry
    assert not decide_retry(policy, 1, 500, "GET", True).retry
    assert not decide_retry(policy, 1, RESET, "GET", True).retry


ALL = RetryPolicy(2, frozenset({"5xx", "connect-failure", "refused-stream", "reset"}))


@pytest.mark.parametrize(
    "method, outcome, reached_app, retried, reason",
    [
        ("GET", 503, True, True, "retry 1 of 2: status 503"),
        ("PUT", RESET, True, True, "retry 1 of 2: reset"),
        ("DELETE", PER_TRY_TIMEOUT, True, True, "retry 1 of 2: timeout"),
        ("POST", 503, True, False, "POST is not idempotent and may have reached the app"),
        ("POST", RESET, True, False, "POST is not idempotent and may have reached the app"),
        ("PATCH", PER_TRY_TIMEOUT, True, False, "PATCH is not idempotent and may have reached the app"),
        ("POST", CONNECT_FAILURE, False, True, "retry 1 of 2: connect failure"),
        ("POST", CONNECT_FAILURE, True, True, "retry 1 of 2: connect failure"),  # never reached, whatever
        ("POST", REFUSED_STREAM, True, True, "retry 1 of 2: refused stream"),
        ("POST", RESET, False, True, "retry 1 of 2: reset"),  # the engine knows it was never written
        ("GET", 404, True, False, "not retriable: status 404"),
    ],
)
def test_methods_and_reaching_the_app(method, outcome, reached_app, retried, reason):
    verdict = decide_retry(ALL, 1, outcome, method, reached_app)
    assert (verdict.retry, verdict.reason) == (retried, reason)


def test_retries_run_out():
    assert decide_retry(ALL, 2, 503, "GET", True).retry
    verdict = decide_retry(ALL, 3, 503, "GET", True)
    assert (verdict.retry, verdict.reason) == (False, "retries exhausted (2)")


def test_budget_exhausted_means_no_retry():
    clock = Clock()
    budget = RetryBudget(ratio=0.2, min_per_second=0, clock=clock)
    for _ in range(10):
        budget.record_request()
    assert decide_retry(ALL, 1, 503, "GET", True, budget).retry
    assert decide_retry(ALL, 1, 503, "GET", True, budget).retry
    verdict = decide_retry(ALL, 1, 503, "GET", True, budget)
    assert (verdict.retry, verdict.reason) == (False, "retry budget exhausted")
    # a verdict that is no for another reason spends nothing
    assert not decide_retry(ALL, 1, 404, "GET", True, budget).retry


def test_budget_floor_and_sliding_window():
    clock = Clock()
    budget = RetryBudget(ratio=0.5, min_per_second=1, clock=clock, window=10)
    assert sum(budget.try_spend() for _ in range(20)) == 10  # the floor: 1/s over 10 s
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_spend() for _ in range(20)) == 5
    clock.now += 9.5
    assert not budget.try_spend()  # still inside the window
    clock.now += 1
    assert budget.try_spend()  # the first second's retries have left it


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 3)), max_size=300))
def test_budget_never_exceeds_ratio_plus_floor(events):
    clock = Clock(0.0)
    budget = RetryBudget(ratio=0.2, min_per_second=1, clock=clock, window=5)
    log: list[tuple[float, str]] = []
    for is_request, dt in events:
        clock.now += dt
        if is_request:
            budget.record_request()
            log.append((clock.now, "req"))
        elif budget.try_spend():
            log.append((clock.now, "retry"))
            # at the moment a retry is granted it fits the window's share (requests that
            # later leave the window do not take back retries already sent)
            second = int(clock.now)
            recent = [kind for t, kind in log if int(t) > second - 5]
            assert recent.count("retry") <= 0.2 * recent.count("req") + 1 * 5


@given(st.integers(1, 100), st.integers(0, 2**32))
def test_backoff_is_jittered_exponential_and_capped(attempt, seed):
    value = backoff(attempt, random.Random(seed))
    assert 0 <= value <= 0.25
    assert value < (2**min(attempt, 16) - 1) * 0.025


def test_backoff_grows():
    rng = random.Random(1)
    firsts = [backoff(1, rng) for _ in range(200)]
    thirds = [backoff(3, rng) for _ in range(200)]
    assert max(firsts) < 0.025 and max(thirds) > 0.1
