"""A bounded chaos run inside `make test` (36 s of faults, under a minute in all), or longer
with CHAOS_TEST_SECONDS; `make chaos` runs 300 s.

One run, shared by the tests below (module fixture), so each promise fails on its own
with its own anomalies. Skipped, with the reason, where network namespaces cannot be
created (not root, no iproute2). SEED replays a run's fault schedule.
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.netns import unavailable_reason
from tests.chaos.run import Report, run_chaos

pytestmark = [pytest.mark.cluster, pytest.mark.chaos, pytest.mark.timeout(900)]

SECONDS = float(os.environ.get("CHAOS_TEST_SECONDS") or 36)


@pytest.fixture(scope="module")
def report() -> Report:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    seed = int(os.environ["SEED"]) if os.environ.get("SEED") else None
    rep = run_chaos(SECONDS, seed)
    print(rep.format())
    return rep


def _explain(rep: Report, *checks: str) -> str:
    found = [a for a in rep.anomalies if a.check in checks]
    return f"seed {rep.seed} (replay: SEED={rep.seed}); files in {rep.workdir}\n" + "\n".join(
        f"[{a.check}] {a.message}" for a in found)


def test_workload_and_faults_ran(report: Report) -> None:
    assert report.history is not None and sum(report.history.counts.values()) > 100, _explain(report, "workload")
    assert sum(report.faults.values()) >= 3, report.format()
    assert not report.by_check("workload"), _explain(report, "workload")


def test_acknowledged_writes_and_consistent_reads_are_linearizable(report: Report) -> None:
    assert not report.by_check("linearizability"), _explain(report, "linearizability")


def test_default_reads_are_stale_by_at_most_the_lease(report: Report) -> None:
    assert not report.by_check("default-read"), _explain(report, "default-read")


def test_stale_reads_never_invent_values(report: Report) -> None:
    assert not report.by_check("stale-read"), _explain(report, "stale-read")


def test_leaf_certificates_are_for_the_service(report: Report) -> None:
    assert not report.by_check("leaf"), _explain(report, "leaf")


def test_one_leader_within_5s_of_healing(report: Report) -> None:
    assert not report.by_check("leader"), _explain(report, "leader")


def test_every_server_holds_every_acknowledged_write_and_the_same_catalog(report: Report) -> None:
    assert not report.by_check("final-read", "convergence"), _explain(report, "final-read", "convergence")


def test_no_process_died_that_was_not_killed_and_memory_is_bounded(report: Report) -> None:
    assert not report.by_check("process", "memory"), _explain(report, "process", "memory")


def test_every_client_sees_every_server_within_10s(report: Report) -> None:
    found = report.by_check("client-servers")
    if found:
        pytest.xfail("issue 11 (open): a client agent can lose the cluster after the server it joined "
                     "through is killed or cut off; " + _explain(report, "client-servers"))
