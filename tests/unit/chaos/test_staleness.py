"""The lease-relaxed read check against histories whose verdict is known."""

from __future__ import annotations

import math

from tests.chaos.linearizability import Op
from tests.chaos.staleness import check_reads


def w(v, a, b, outcome="ok", key="k"):
    return Op(key, "write", v, a, b, outcome)


def r(v, a, b, outcome="ok", key="k"):
    return Op(key, "read", v, a, b, outcome)


def bad(writes, reads, lease):
    return check_reads(writes, reads, lease)


def test_fresh_read_passes_at_any_lease():
    writes = [w("a", 0, 1), w("b", 2, 3)]
    assert not bad(writes, [r("b", 4, 5)], 0)
    assert not bad(writes, [r("a", 2.5, 2.6)], 0)  # concurrent with the overwrite


def test_read_within_lease_of_overwrite_is_allowed_beyond_it_is_not():
    writes = [w("a", 0, 1), w("b", 2, 3)]
    assert not bad(writes, [r("a", 4.5, 4.6)], 2.0)  # overwritten 1.5 s before: inside the lease
    found = bad(writes, [r("a", 5.5, 5.6)], 2.0)  # 2.5 s before: outside
    assert len(found) == 1 and "overwritten by 'b'" in found[0].reason
    assert bad(writes, [r("a", 4.5, 4.6)], 0)  # strict: a stale read


def test_invented_value_is_caught_even_with_infinite_lease():
    writes = [w("a", 0, 1)]
    found = bad(writes, [r("zzz", 2, 3)], math.inf)
    assert found and "no write had begun" in found[0].reason
    # a value written only after the read completed is invented too
    assert bad([w("late", 10, 11)], [r("late", 2, 3)], math.inf)


def test_stale_reads_may_lag_without_bound():
    writes = [w("a", 0, 1), w("b", 2, 3), w("c", 4, 5)]
    assert not bad(writes, [r("a", 100, 101)], math.inf)
    assert not bad(writes, [r(None, 100, 101)], math.inf)  # the initial state


def test_unknown_write_is_a_source_but_never_an_overwrite():
    writes = [w("a", 0, 1), w("b", 2, 3, outcome="unknown")]
    assert not bad(writes, [r("b", 50, 51)], 0)  # it may have applied
    assert not bad(writes, [r("a", 50, 51)], 0)  # or not


def test_failed_write_is_not_a_source():
    assert bad([w("x", 0, 1, outcome="failed")], [r("x", 2, 3)], math.inf)


def test_initial_none_then_delete_then_write():
    writes = [w("a", 0, 1), w(None, 2, 3), w("b", 4, 5)]
    assert not bad(writes, [r(None, 5.5, 6)], 2.0)  # the delete, overwritten 0.5 s before
    assert bad(writes, [r(None, 8, 9)], 2.0)  # 3 s after "b" was acknowledged
    assert not bad(writes, [r(None, 0.5, 0.6)], 0)  # before "a" finished


def test_value_rewritten_later_counts_from_its_latest_source():
    # unique values are the workload's rule, but a register may see a value twice (intentions)
    writes = [w("allow", 0, 1), w("deny", 2, 3), w("allow", 10, 11)]
    assert not bad(writes, [r("allow", 12, 13)], 0)
    assert bad(writes, [r("allow", 6, 7)], 2.0)  # the second allow had not begun


def test_only_ok_reads_are_judged_and_keys_are_separate():
    writes = [w("a", 0, 1, key="k1"), w("b", 2, 3, key="k1")]
    assert not bad(writes, [r("a", 9, 10, outcome="failed", key="k1")], 0)
    assert not bad(writes, [r(None, 9, 10, key="k2")], 0)


def test_monotonic_reads_per_server():
    from tests.chaos.staleness import check_monotonic
    writes = [w("a", 0, 1), w("b", 2, 3)]
    assert not check_monotonic(writes, [("s1", r("a", 1.5, 1.6)), ("s1", r("b", 4, 5)), ("s2", r("a", 6, 7))])
    found = check_monotonic(writes, [("s1", r("b", 4, 5)), ("s1", r("a", 6, 7))])
    assert len(found) == 1 and "newer 'b'" in found[0].reason
    # a restart of that server in between excuses it; overlapping reads are not ordered
    assert not check_monotonic(writes, [("s1", r("b", 4, 5)), ("s1", r("a", 6, 7))], {"s1": [5.5]})
    assert not check_monotonic(writes, [("s1", r("b", 4, 6)), ("s1", r("a", 5, 7))])
    # concurrent writes have no order to break
    cw = [w("a", 0, 3), w("b", 1, 2)]
    assert not check_monotonic(cw, [("s1", r("b", 4, 5)), ("s1", r("a", 6, 7))])


def test_a_timed_out_write_that_lands_late_is_not_going_back():
    """Found by a chaos run: a write through a client timed out at the workload (5 s) while
    the agent's retry landed it after a later acknowledged write; a server then returning
    it is returning the newest value, not an older one."""
    from tests.chaos.staleness import check_monotonic
    writes = [w("late", 0, 5, outcome="unknown"), w("acked", 5.2, 5.3)]
    assert not check_monotonic(writes, [("s2", r("acked", 5.5, 5.6)), ("s2", r("late", 6, 6.1))])
    writes = [w("early", 0, 1), w("acked", 5.2, 5.3)]
    assert check_monotonic(writes, [("s2", r("acked", 5.5, 5.6)), ("s2", r("early", 6, 6.1))])
