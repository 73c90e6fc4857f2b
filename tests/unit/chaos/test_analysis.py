"""The history analysis catches each kind of broken promise in workload records."""

from __future__ import annotations

from tests.chaos.analysis import analyse, outages
from tests.chaos.linearizability import Op


def rec(kind, mode, value, a, b, outcome="ok", key="k", target="s1"):
    return {"kind": kind, "mode": mode, "key": key, "value": value, "invoked": a, "completed": b,
            "outcome": outcome, "target": target, "process": 0, "index": 5, "known_leader": True}


def checks(rep):
    return sorted({a.check for a in rep.anomalies})


def test_clean_history_has_no_anomaly():
    h = [rec("write", "register", "a", 0, 1), rec("read", "consistent", "a", 2, 3),
         rec("read", "default", "a", 2, 3), rec("read", "stale", None, 2, 3),
         rec("write", "register", "b", 4, 5), rec("read", "default", "a", 5.5, 6)]
    assert checks(analyse(h, [Op("k", "read", "b", 10, 11, "ok")])) == []


def test_stale_consistent_read_is_a_linearizability_anomaly():
    h = [rec("write", "register", "a", 0, 1), rec("write", "register", "b", 2, 3),
         rec("read", "consistent", "a", 4, 5)]
    assert checks(analyse(h)) == ["linearizability"]


def test_default_read_beyond_the_lease_is_caught_within_it_is_not():
    h = [rec("write", "register", "a", 0, 1), rec("write", "register", "b", 2, 3),
         rec("read", "default", "a", 4, 4.1)]
    assert checks(analyse(h)) == []
    h[-1] = rec("read", "block", "a", 6, 6.1)
    rep = analyse(h)
    assert checks(rep) == ["default-read"] and "from s1" in rep.anomalies[0].message


def test_invented_stale_value_is_caught():
    h = [rec("write", "register", "a", 0, 1), rec("read", "stale", "zz", 2, 3)]
    assert checks(analyse(h)) == ["stale-read"]


def test_lost_acknowledged_write_shows_in_the_final_read():
    h = [rec("write", "register", "a", 0, 1), rec("write", "register", "b", 2, 3)]
    assert checks(analyse(h, [Op("k", "read", "a", 10, 11, "ok")])) == ["linearizability"]
    # an unknown write may or may not have applied
    h[1]["outcome"] = "unknown"
    assert checks(analyse(h, [Op("k", "read", "a", 10, 11, "ok")])) == []


def test_bad_leaf_and_workload_errors_are_anomalies():
    leaf = {**rec("leaf", "leaf", None, 0, 1, key="web"), "valid": False}
    err = {"kind": "error", "op": "write", "error": "KeyError()", "t": 1}
    assert checks(analyse([leaf, err])) == ["leaf", "workload"]


def test_outages_measure_the_longest_failing_stretch_per_agent():
    h = [rec("read", "stale", None, 0, 1, target="c1"),
         rec("read", "stale", None, 2, 3, outcome="failed", target="c1"),
         rec("read", "stale", None, 4, 5, outcome="failed", target="c1"),
         rec("read", "stale", None, 9, 9.5, target="c1"),
         rec("read", "stale", None, 0, 1, target="s1")]
    assert outages(h) == {"c1": 7.5, "s1": 0.0}


def test_stale_reads_from_one_server_must_not_go_back_unless_it_restarted():
    h = [rec("write", "register", "a", 0, 1), rec("write", "register", "b", 2, 3),
         rec("read", "stale", "b", 4, 5), rec("read", "stale", "a", 6, 7)]
    rep = analyse(h, restarts={"s1": []})
    assert checks(rep) == ["stale-read"] and "went back in time" in rep.anomalies[0].message
    assert checks(analyse(h, restarts={"s1": [5.5]})) == []
    h[-1]["known_leader"] = False  # a server that knows no leader promises nothing
    assert checks(analyse(h, restarts={"s1": []})) == []
