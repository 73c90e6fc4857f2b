"""The watchdog notices a server pysyncobj left broken and resyncs it from the leader."""

from __future__ import annotations

import glob
import os
import re

import pytest

from tests.harness.cluster import Cluster, retry

pytestmark = pytest.mark.cluster


def test_broken_follower_is_moved_aside_and_resynced(tmp_path):
    cluster = Cluster(tmp_path, 3)
    broken = cluster.agents[2]
    broken.extra_env = {"MESH_FAULT_TICK_ERRORS": "1000000"}  # raises in every tick until recovered
    try:
        cluster.start()
        leader = cluster.wait_leader()
        assert leader is not broken
        for i in range(50):
            leader.put("/v1/catalog/register", {"Node": f"w-{i}", "Address": "10.0.0.1"})

        def recovered() -> bool:
            text = broken.get("/v1/agent/metrics?format=prometheus").decode()
            m = re.search(r"^mesh_raft_watchdog_recoveries_total (\S+)$", text, re.M)
            return bool(m and float(m.group(1)) >= 1)

        retry(recovered, 30, 0.5, "watchdog recovery")
        assert glob.glob(os.path.join(broken.data_dir, "raft.broken-*"))
        hashes = lambda: {a.get("/v1/operator/raft/state")["StateHash"] for a in cluster.agents}  # noqa: E731
        retry(lambda: len(hashes()) == 1, 20, 0.3, "recovered server converges")
        leader.put("/v1/catalog/register", {"Node": "after-recovery", "Address": "10.0.0.1"})
        retry(lambda: broken.get("/v1/catalog/node/after-recovery?stale"), 10)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
