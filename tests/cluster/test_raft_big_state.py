"""100,000 catalog entries with frequent snapshots: leadership stays put, state agrees.

A soak run (2-3 minutes on 2 cores): `make soak` runs it; `make test` keeps the
20,000-registration burst in tests/cluster/test_raft_cluster.py instead."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from tests.harness.cluster import Cluster, retry

pytestmark = [pytest.mark.cluster, pytest.mark.soak]

ENTRIES = 100_000


def _metric(agent, name: str) -> float:
    text = agent.get("/v1/agent/metrics?format=prometheus").decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _fill(agents) -> int:
    connector = aiohttp.TCPConnector(limit=192)
    async with aiohttp.ClientSession(connector=connector) as session:
        sem = asyncio.Semaphore(192)

        async def one(i: int) -> bool:
            agent = agents[i % len(agents)]
            body = {"Node": f"big-{i // 10}", "Address": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                    "Service": {"ID": f"s-{i}", "Service": f"svc-{i % 100}", "Port": 1 + i % 60000}}
            async with sem, session.put(f"http://{agent.http}/v1/catalog/register", data=json.dumps(body),
                                        timeout=aiohttp.ClientTimeout(total=60)) as resp:
                return resp.status == 200

        return sum(await asyncio.gather(*(one(i) for i in range(ENTRIES))))


def test_hundred_thousand_entries_with_snapshots_keep_leadership_stable(tmp_path):
    cluster = Cluster(tmp_path, 3, extra_args=["-raft-snapshot-threshold", "300"])
    try:
        cluster.start()
        leader = cluster.wait_leader()
        term = leader.get("/v1/operator/raft/state")["Status"]["raft_term"]
        changes_before = {a.name: _metric(a, "mesh_raft_leader_changes_total") for a in cluster.agents}
        assert asyncio.run(_fill(cluster.agents)) == ENTRIES
        retry(lambda: len({a.get("/v1/operator/raft/state")["StateHash"] for a in cluster.agents}) == 1,
              30, 0.5, "identical state")
        assert cluster.wait_leader() is leader
        assert leader.get("/v1/operator/raft/state")["Status"]["raft_term"] == term, "an election happened"
        for agent in cluster.agents:
            assert sum(float(v) for v in re.findall(
                r'^mesh_raft_snapshots_total\{result="ok"\} (\S+)$',
                agent.get("/v1/agent/metrics?format=prometheus").decode(), re.M)) >= 1
            # start-up elections may flip a few times; during the fill nothing may change
            assert _metric(agent, "mesh_raft_leader_changes_total") == changes_before[agent.name]
        assert sum(len(leader.get(f"/v1/catalog/service/svc-{k}")) for k in range(0, 100, 10)) == ENTRIES // 10
        # a restarted follower comes back from its snapshot plus journal
        follower = next(a for a in cluster.agents if a is not leader)
        follower.kill()
        follower.start()
        retry(lambda: len({a.get("/v1/operator/raft/state")["StateHash"] for a in cluster.agents}) == 1,
              30, 0.5, "restarted follower converges")
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
