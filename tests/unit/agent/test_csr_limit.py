"""CSRMaxPerSecond as a token bucket, CSRMaxConcurrent as an in-flight count."""

from __future__ import annotations

import pytest

from mesh.agent.server.csr_limit import CSRLimiter
from mesh.catalog.errors import RateLimited


def test_off_by_default():
    limiter = CSRLimiter()
    for _ in range(1000):
        limiter.acquire(1.0, 0, 0)
    assert limiter.in_flight == 1000


def test_per_second_allows_a_burst_of_one_second_then_refills():
    limiter = CSRLimiter()
    for _ in range(5):
        limiter.acquire(10.0, 5, 0)
        limiter.release()
    with pytest.raises(RateLimited, match="CSRMaxPerSecond"):
        limiter.acquire(10.0, 5, 0)
    limiter.acquire(10.25, 5, 0)  # a quarter second at 5/s is a token and a bit
    with pytest.raises(RateLimited):
        limiter.acquire(10.25, 5, 0)


def test_concurrency_counts_signings_in_flight():
    limiter = CSRLimiter()
    limiter.acquire(1.0, 0, 2)
    limiter.acquire(1.0, 0, 2)
    with pytest.raises(RateLimited, match="CSRMaxConcurrent"):
        limiter.acquire(1.0, 0, 2)
    limiter.release()
    limiter.acquire(1.0, 0, 2)
