"""The checker against histories whose verdict is known."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.chaos.linearizability import Op, check, check_key


def w(v, a, b, outcome="ok", key="k", p=None):
    return Op(key, "write", v, a, b, outcome, p)


def r(v, a, b, outcome="ok", key="k", p=None):
    return Op(key, "read", v, a, b, outcome, p)


def test_sequential_history():
    assert check([w(1, 0, 1), r(1, 2, 3), w(2, 4, 5), r(2, 6, 7)]).ok


def test_read_before_any_write_sees_nothing():
    assert check([r(None, 0, 1), w(1, 2, 3)]).ok
    assert not check([r(1, 0, 1), w(1, 2, 3)]).ok


def test_concurrent_read_may_see_either_value():
    assert check([w(1, 0, 1), w(2, 2, 6), r(1, 3, 4)]).ok
    assert check([w(1, 0, 1), w(2, 2, 6), r(2, 3, 4)]).ok


def test_stale_read_after_a_partition_is_caught():
    """The new leader acknowledged 2; a read invoked after that returned 1 from the old,
    cut-off leader: not linearizable."""
    history = [w(1, 0, 1, p="a"), w(2, 2, 3, p="b"), r(1, 4, 5, p="c")]
    v = check(history)
    assert not v.ok and "no legal order" in v.reason


def test_read_cannot_flip_back():
    assert not check([w(1, 0, 1), w(2, 2, 10), r(2, 3, 4), r(1, 5, 6)]).ok


def test_unknown_write_may_have_happened_or_not():
    assert check([w(1, 0, 1), w(2, 2, 3, "unknown"), r(1, 4, 5)]).ok
    assert check([w(1, 0, 1), w(2, 2, 3, "unknown"), r(2, 4, 5)]).ok
    # but not before its invocation
    assert not check([w(1, 0, 1), r(2, 2, 3), w(2, 4, 5, "unknown")]).ok


def test_failed_write_never_happened():
    assert not check([w(1, 0, 1), w(2, 2, 3, "failed"), r(2, 4, 5)]).ok


def test_delete_is_a_write_of_none():
    assert check([w(1, 0, 1), w(None, 2, 3), r(None, 4, 5)]).ok
    assert not check([w(1, 0, 1), w(None, 2, 3), r(1, 4, 5)]).ok


def test_keys_are_checked_independently():
    history = [w(1, 0, 1, key="a"), w(9, 0, 1, key="b"), r(1, 2, 3, key="a"), r(8, 2, 3, key="b")]
    v = check(history)
    assert not v.ok and v.key == "b"


def _simulate(seed: int, n: int, stale: bool) -> list[Op]:
    """A register served by one linearizable server: each op takes effect at a random
    instant inside its interval. With `stale`, one read returns an overwritten value."""
    rng = random.Random(seed)
    value, history, t = None, [], 0.0
    events = []
    for i in range(n):
        start = t + rng.random()
        end = start + rng.random() * 3
        point = rng.uniform(start, end)
        events.append((point, i, start, end))
        t = start
    written = []
    for _point, i, start, end in sorted(events):
        if i % 3 == 0:
            value = i
            written.append(i)
            history.append(w(i, start, end, p=i))
        else:
            history.append(r(value, start, end, p=i))
    if stale and len(written) >= 3:
        last_read = max((op for op in history if op.kind == "read"), key=lambda op: op.invoked)
        old = written[0]
        history = [op if op is not last_read else r(old, op.invoked, op.completed, p=op.process)
                   for op in history]
        # make sure the stale value was overwritten before the read began
        history.append(w(-1, last_read.invoked - 0.5, last_read.invoked - 0.4, p="x"))
    return history


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 40))
def test_simulated_linearizable_histories_pass(seed, n):
    assert check_key(_simulate(seed, n, stale=False)).ok


def test_simulated_stale_reads_fail():
    caught = sum(not check_key(_simulate(seed, 30, stale=True)).ok for seed in range(30))
    assert caught == 30


def cas(expect, new, a, b, outcome="ok", key="k"):
    return Op(key, "cas", (tuple(expect), new), a, b, outcome)


def cas_fail(expect, a, b, key="k"):
    return Op(key, "cas_fail", tuple(expect), a, b)


def test_compare_and_set_applies_only_to_the_value_read():
    assert check([w("a", 0, 1), cas(["a"], "b", 2, 3), r("b", 4, 5)]).ok
    assert not check([w("a", 0, 1), w("x", 2, 3), cas(["a"], "b", 4, 5)]).ok  # the value had moved on
    assert check([w("a", 0, 1), w("x", 2, 3), cas_fail(["a"], 4, 5)]).ok
    assert not check([w("a", 0, 1), cas_fail(["a"], 2, 3)]).ok  # it held "a": the CAS had to succeed


def test_two_holders_of_one_lock_at_once_have_no_legal_order():
    """Sessions S and T both acquired (from {nobody, self}) with no release between."""
    history = [cas([None, "S"], "S", 0, 1), cas([None, "T"], "T", 2, 3)]
    assert not check(history).ok
    released = [cas([None, "S"], "S", 0, 1), cas(["S"], None, 2, 3), cas([None, "T"], "T", 4, 5)]
    assert check(released).ok
    refused = [cas([None, "S"], "S", 0, 1), cas_fail([None, "T"], 2, 3), r("S", 4, 5)]
    assert check(refused).ok


def test_an_unknown_acquire_may_or_may_not_have_happened():
    assert check([cas([None, "S"], "S", 0, 1, outcome="unknown"), r(None, 2, 3)]).ok
    assert check([cas([None, "S"], "S", 0, 1, outcome="unknown"), r("S", 2, 3)]).ok
