"""The log rate limiter (fake clock) and the quieting of aiohttp's bad-request tracebacks."""

from __future__ import annotations

import logging

import pytest
from aiohttp.http_exceptions import BadHttpMessage

from mesh.agent import logging as mlog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_one_per_period_with_a_count_of_the_dropped():
    clock = Clock()
    limiter = mlog.RateLimiter(per_second=1 / 10, burst=3, clock=clock)
    assert [limiter.allow("k") for _ in range(5)] == [0, 0, 0, None, None]
    clock.now += 9.9
    assert limiter.allow("k") is None
    clock.now += 0.1
    assert limiter.allow("k") == 3  # three dropped since the last line
    assert limiter.allow("k") is None
    clock.now += 1000  # a long quiet spell refills to the burst, no more
    assert [limiter.allow("k") for _ in range(4)] == [1, 0, 0, None]


def test_keys_are_independent_and_bounded():
    clock = Clock()
    limiter = mlog.RateLimiter(per_second=1, burst=1, clock=clock, max_keys=2)
    assert limiter.allow("a") == 0 and limiter.allow("b") == 0
    assert limiter.allow("a") is None
    assert limiter.allow("c") == 0  # evicts the least recently used ("b")
    assert len(limiter._buckets) == 2 and "b" not in limiter._buckets


def test_bad_arguments():
    with pytest.raises(ValueError):
        mlog.RateLimiter(per_second=0)


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((level, event, kw))


def test_log_limited_adds_the_suppressed_count():
    clock = Clock()
    limiter = mlog.RateLimiter(per_second=1, burst=1, clock=clock)
    rec = Recorder()
    assert mlog.log_limited(rec, "warning", "bad", limiter=limiter, path="/x")
    assert not mlog.log_limited(rec, "warning", "bad", limiter=limiter, path="/x")
    assert not mlog.log_limited(rec, "warning", "bad", limiter=limiter, path="/x")
    clock.now += 1
    assert mlog.log_limited(rec, "warning", "bad", limiter=limiter, path="/x")
    assert rec.lines == [("warning", "bad", {"path": "/x"}), ("warning", "bad", {"path": "/x", "suppressed": 2})]


def _record(exc: BaseException, level: int = logging.ERROR, msg: str = "Error handling request from %s"):
    return logging.LogRecord("aiohttp.server", level, __file__, 1, msg, ("127.0.0.1",), (type(exc), exc, None))


def test_aiohttp_bad_requests_become_one_debug_line_without_traceback():
    clock = Clock()
    rec = Recorder()
    filt = mlog._AiohttpServerFilter(mlog.RateLimiter(per_second=1 / 60, burst=2, clock=clock), rec)
    for _ in range(5):
        assert filt.filter(_record(BadHttpMessage("Invalid header token"))) is False  # the traceback is dropped
    assert rec.lines == [("debug", "http_malformed_request",
                          {"error": "BadHttpMessage", "detail": "Invalid header token"})] * 2
    clock.now += 60
    filt.filter(_record(BadHttpMessage("Invalid header token")))
    assert rec.lines[-1][2]["suppressed"] == 3


def test_other_aiohttp_errors_keep_their_traceback_but_are_rate_limited():
    clock = Clock()
    filt = mlog._AiohttpServerFilter(mlog.RateLimiter(per_second=1 / 60, burst=1, clock=clock))
    assert filt.filter(_record(RuntimeError("boom"), msg="Unhandled exception")) is True
    assert filt.filter(_record(RuntimeError("boom"), msg="Unhandled exception")) is False
    clock.now += 60
    record = _record(RuntimeError("boom"), msg="Unhandled exception")
    assert filt.filter(record) is True and "1 similar messages suppressed" in record.msg
