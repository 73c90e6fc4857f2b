"""Watch: Consul's blocking-client rules on a fake clock (no real sleeps).

Each scripted answer says how long the request took and what came back; the fake
sleep only moves the clock, and records how long the watch chose to wait."""

from __future__ import annotations

import math
import random

import pytest

from mesh.api.client import Result
from mesh.api.errors import APIError
from mesh.api.watch import Watch

WAIT = 300.0


class Done(Exception):
    """The script ran out: ends the iteration (not an APIError, so it escapes)."""


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Script:
    """A fetch answering from a list of (seconds taken, Result or APIError)."""

    def __init__(self, time: FakeTime, answers: list[tuple[float, Result | APIError]]) -> None:
        self.time = time
        self.answers = list(answers)
        self.calls: list[dict] = []

    async def __call__(self, **kwargs):
        self.calls.append(kwargs)
        if not self.answers:
            raise Done
        took, answer = self.answers.pop(0)
        self.time.now += took
        if isinstance(answer, APIError):
            raise answer
        return answer


class LowRng(random.Random):
    """Jitter at its floor: every backoff is exactly half its nominal value."""

    def random(self) -> float:
        return 0.0


def at(index: int, value: str = "") -> Result:
    return Result(value=value or f"v{index}", index=index)


def hashed(content_hash: str, value: str = "") -> Result:
    return Result(value=value or content_hash, content_hash=content_hash)


async def collect(watch: Watch) -> list:
    out = []
    with pytest.raises(Done):
        async for value in watch:
            out.append(value)
    return out


def make(answers, **kwargs) -> tuple[Watch, Script, FakeTime]:
    time = FakeTime()
    script = Script(time, answers)
    kwargs.setdefault("rng", LowRng())
    return Watch(script, wait=WAIT, clock=time.clock, sleep=time.sleep, **kwargs), script, time


async def test_first_request_does_not_block_and_only_changes_are_yielded():
    watch, script, time = make([(0.01, at(5)), (WAIT, at(5)), (2.0, at(7, "new")), (WAIT, at(7))])
    assert await collect(watch) == ["v5", "new"]
    assert [c["index"] for c in script.calls] == [0, 5, 5, 7, 7]
    assert all(c["wait"] == WAIT for c in script.calls)
    assert time.sleeps == []  # full waits and real changes: ask again at once


async def test_same_index_at_once_backs_off_growing_then_resets_on_a_change():
    watch, script, time = make([(0, at(5)), (0.01, at(5)), (0.01, at(5)), (0.01, at(5)),
                                (0.01, at(6)), (0.01, at(6))], min_backoff=0.5, max_backoff=30)
    assert await collect(watch) == ["v5", "v6"]
    assert time.sleeps == [0.25, 0.5, 1.0, 0.25]


async def test_index_going_backwards_is_new_data_and_starts_over_from_zero():
    watch, script, time = make([(0, at(10)), (1.0, at(4, "restored")), (0.01, at(4)), (WAIT, at(4)),
                                (3.0, at(5))])
    assert await collect(watch) == ["v10", "restored", "v5"]
    assert [c["index"] for c in script.calls] == [0, 10, 0, 4, 4, 5]
    assert len(time.sleeps) == 1  # one pause before starting over; the index-0 answer is not "at once"


async def test_a_server_flapping_between_two_indexes_cannot_make_the_watch_spin():
    answers = [(0, at(10))] + [(0.01, at(5)), (0.01, at(10))] * 4
    watch, script, time = make(answers, min_backoff=0.5, max_backoff=30)
    await collect(watch)
    assert len(time.sleeps) == 4 and all(s >= 0.25 for s in time.sleeps)


async def test_index_zero_from_the_server_counts_as_one():
    watch, script, time = make([(0, at(0)), (WAIT, at(0)), (WAIT, at(1))])
    assert await collect(watch) == ["v0"]
    assert [c["index"] for c in script.calls] == [0, 1, 1, 1]
    assert time.sleeps == []


async def test_errors_back_off_exponentially_up_to_the_cap_and_are_exposed():
    err = APIError(0, "Error connecting to agent at http://127.0.0.1:8500: refused")
    watch, script, time = make([(0, at(3))] + [(0.01, err)] * 6 + [(0.01, at(4))],
                               min_backoff=0.5, max_backoff=4.0)
    values = []
    with pytest.raises(Done):
        async for value in watch:
            values.append(value)
            if value == "v3":
                assert watch.age() == 0 and watch.last_error is None
    assert values == ["v3", "v4"]
    assert time.sleeps == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert watch.failures == 0 and watch.last_error is None


async def test_staleness_is_visible_while_failing():
    err = APIError(503, "Unexpected response code: 503 (agent down)")
    watch, script, time = make([(0, at(3)), (1.0, err), (1.0, err)])
    assert watch.age() == math.inf
    it = watch.__aiter__()
    assert await it.__anext__() == "v3"
    success = time.now
    with pytest.raises(Done):
        await it.__anext__()
    assert watch.last_error is err and watch.failures == 2
    assert watch.age() == pytest.approx(time.now - success) and watch.age() > 2
    assert watch.index == 3  # the cursor survives the failures


def test_backoff_jitter_stays_in_the_upper_half_of_a_capped_exponential():
    watch = Watch(Script(FakeTime(), []), rng=random.Random(7), min_backoff=0.5, max_backoff=10.0)
    for attempt in range(1, 40):
        nominal = min(10.0, 0.5 * 2 ** (attempt - 1))
        delays = {watch.backoff(attempt) for _ in range(20)}
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(delays) > 1  # jittered, so many watchers do not retry in step


async def test_hash_mode_blocks_on_the_last_hash_and_yields_only_new_ones():
    watch, script, time = make([(0, hashed("aaa")), (WAIT, hashed("aaa")), (2.0, hashed("bbb")),
                                (0.01, hashed("bbb"))], mode="hash")
    assert await collect(watch) == ["aaa", "bbb"]
    assert [c["hash"] for c in script.calls] == [None, "aaa", "aaa", "bbb", "bbb"]
    assert "index" not in script.calls[0]
    assert time.sleeps == [0.25]  # the quick unchanged answer


async def test_hash_mode_without_a_content_hash_is_an_error_not_a_spin():
    watch, script, time = make([(0, Result(value="x")), (0, Result(value="x"))], mode="hash")
    assert await collect(watch) == []
    assert "ContentHash" in watch.last_error.message and watch.failures == 2
    assert len(time.sleeps) == 2


async def test_next_result_gives_the_whole_answer():
    watch, _, _ = make([(0, Result(value="x", index=9, headers={"X-Consul-Default-ACL-Policy": "deny"}))])
    result = await watch.next_result()
    assert result.index == 9 and result.headers["X-Consul-Default-ACL-Policy"] == "deny"
    assert watch.last_result is result


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode"):
        Watch(Script(FakeTime(), []), mode="etag")  # type: ignore[arg-type]
