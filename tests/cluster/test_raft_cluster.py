"""Three real servers on 127.0.0.1: election, replication, failover, durability, membership."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import pytest

from tests.harness.cluster import Cluster, HTTPError, retry

pytestmark = pytest.mark.cluster


def register(agent, node: str, service: str = "web", port: int = 80) -> None:
    assert agent.put("/v1/catalog/register", {"Node": node, "Address": "10.1.0.1",
                                              "Service": {"Service": service, "Port": port}}) is True


def node_names(agent, stale: bool = True) -> set[str]:
    return {n["Node"] for n in agent.get("/v1/catalog/nodes" + ("?stale" if stale else ""))}


def states_agree(agents) -> bool:
    states = [a.get("/v1/operator/raft/state") for a in agents]
    return len({(s["StateHash"], s["FSMIndex"]) for s in states}) == 1


def test_three_servers_elect_one_leader_and_register_themselves(cluster: Cluster):
    leader = cluster.wait_leader()
    peers = leader.get("/v1/status/peers")
    assert sorted(peers) == sorted(a.rpc for a in cluster.agents)
    conf = leader.get("/v1/operator/raft/configuration")
    assert [s["Leader"] for s in conf["Servers"]].count(True) == 1
    assert {s["Node"] for s in conf["Servers"]} == {"s1", "s2", "s3"}
    # every server registers the `consul` service on its own node, as Consul does
    consul = retry(lambda: len(leader.get("/v1/catalog/service/consul")) == 3 and leader.get("/v1/catalog/service/consul"))
    assert sorted(e["ServicePort"] for e in consul) == sorted(a.server_port for a in cluster.agents)
    members = cluster.agents[1].get("/v1/agent/members")
    assert {m["Name"] for m in members} == {"s1", "s2", "s3"}
    assert all(m["Status"] == 1 for m in members)


def test_write_through_each_server_is_readable_from_all(cluster: Cluster):
    for agent in cluster.agents:
        register(agent, f"via-{agent.name}")
    wanted = {f"via-{a.name}" for a in cluster.agents}
    for agent in cluster.agents:
        retry(lambda a=agent: wanted <= node_names(a), 5, what=f"writes visible on {agent.name}")
        # a write is visible at once on the server that acknowledged it (read-your-writes)
    register(cluster.agents[2], "ryw")
    assert "ryw" in node_names(cluster.agents[2])
    # ?consistent goes through a barrier and sees everything committed before it
    assert wanted | {"ryw"} <= {n["Node"] for n in cluster.agents[0].get("/v1/catalog/nodes?consistent")}


def test_leader_kill_new_leader_writes_continue_and_restart_catches_up(cluster: Cluster):
    leader = cluster.wait_leader()
    acked = []
    for i in range(20):
        register(leader, f"before-{i}")
        acked.append(f"before-{i}")
    leader.kill()
    t0 = time.monotonic()
    survivors = cluster.live()
    new_leader = cluster.wait_leader(timeout=5, among=survivors)
    assert time.monotonic() - t0 < 5
    assert new_leader is not leader
    for i in range(20):
        register(survivors[i % 2], f"after-{i}")
        acked.append(f"after-{i}")
    leader.start()  # same data-dir
    retry(lambda: set(acked) <= node_names(leader), 20, 0.2, "restarted server catches up")
    retry(lambda: states_agree(cluster.agents), 10, 0.2, "identical state on all three")


def test_losing_quorum_fails_writes_fast_with_no_cluster_leader(cluster: Cluster):
    leader = cluster.wait_leader()
    register(leader, "with-quorum")
    keep, *others = cluster.agents
    retry(lambda: "with-quorum" in node_names(keep), 5)
    for agent in others:
        agent.kill()
    t0 = time.monotonic()
    with pytest.raises(HTTPError) as err:
        register(keep, "no-quorum")
    elapsed = time.monotonic() - t0
    assert err.value.status == 500 and "No cluster leader" in err.value.body
    assert elapsed < 9, elapsed
    # default reads refuse too once the lease has lapsed; stale reads still answer
    retry(lambda: _read_fails(keep), 5, 0.2, "default read refused without quorum")
    assert "with-quorum" in node_names(keep, stale=True)
    assert keep.request("GET", "/v1/catalog/nodes?stale")[1]["X-Consul-KnownLeader"] == "false"


def _read_fails(agent) -> bool:
    try:
        agent.get("/v1/catalog/nodes")
    except HTTPError as exc:
        return exc.status == 500 and "No cluster leader" in exc.body
    return False


def test_sigkill_all_servers_keeps_every_acknowledged_write(cluster: Cluster):
    acked: list[str] = []

    async def writer() -> None:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> None:
                agent = cluster.agents[i % 3]
                body = {"Node": f"n-{i}", "Address": "10.2.0.1", "Service": {"Service": "db", "Port": i % 60000}}
                try:
                    async with session.put(f"http://{agent.http}/v1/catalog/register", data=json.dumps(body),
                                           timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        if resp.status == 200 and await resp.json() is True:
                            acked.append(f"n-{i}")
                except (TimeoutError, aiohttp.ClientError):
                    pass
            tasks = [asyncio.ensure_future(one(i)) for i in range(600)]
            for _ in range(100):  # the first acknowledgements, however loaded the machine
                if acked:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.1)
            for agent in cluster.agents:  # all at once, mid-stream
                agent.signal(signal.SIGKILL)
            await asyncio.gather(*tasks)

    asyncio.run(writer())
    for agent in cluster.agents:
        agent.proc.wait(5)
        agent.start()
    cluster.wait_leader(timeout=30)
    assert acked, "no write was acknowledged before the kill"
    for agent in cluster.agents:
        missing = retry(lambda a=agent: (set(acked) - node_names(a)) == set() or None, 20, 0.2,
                        f"acknowledged writes on {agent.name}") and set()
        assert not missing


def test_burst_of_20000_registrations_leaves_identical_healthy_state(cluster: Cluster):
    async def burst() -> int:
        ok = 0
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector) as session:
            sem = asyncio.Semaphore(256)

            async def one(i: int) -> bool:
                agent = cluster.agents[i % 3]
                body = {"Node": f"burst-{i % 2000}", "Address": "10.3.0.1",
                        "Service": {"ID": f"svc-{i}", "Service": f"svc-{i % 50}", "Port": 1000 + i % 50000}}
                async with sem, session.put(f"http://{agent.http}/v1/catalog/register", data=json.dumps(body),
                                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    return resp.status == 200

            results = await asyncio.gather(*(one(i) for i in range(20000)))
            ok = sum(results)
        return ok

    ok = asyncio.run(burst())
    assert ok == 20000
    retry(lambda: states_agree(cluster.agents), 30, 0.5, "identical state after the burst")
    leader = cluster.wait_leader()
    total = sum(len(leader.get(f"/v1/catalog/service/svc-{k}")) for k in range(50))
    assert total == 20000
    for agent in cluster.agents:
        state = agent.get("/v1/operator/raft/state")
        assert state["Leader"] == cluster.wait_leader().request("GET", "/v1/operator/raft/state")[0]["Leader"]
        metrics = agent.get("/v1/agent/metrics?format=prometheus").decode()
        assert "mesh_raft_watchdog_recoveries_total 0.0" in metrics
        assert "mesh_raft_unsafe_truncations_total 0.0" in metrics


def test_add_a_fourth_server_and_remove_it_again(cluster: Cluster):
    leader = cluster.wait_leader()
    fourth = cluster.add_server()
    retry(lambda: len(leader.get("/v1/status/peers")) == 4, 20, 0.2, "fourth server in the configuration")
    retry(lambda: fourth.leader() == leader.rpc, 10, 0.2, "fourth server follows the leader")
    register(leader, "seen-by-four")
    retry(lambda: "seen-by-four" in node_names(fourth), 10)
    # remove-peer through a follower's API, as an operator would
    follower = next(a for a in cluster.agents[:3] if a is not leader)
    follower.request("DELETE", f"/v1/operator/raft/peer?address={fourth.rpc}")
    retry(lambda: len(leader.get("/v1/status/peers")) == 3, 10, 0.2)
    fourth.kill()
    register(leader, "after-removal")  # quorum of 3 still works
    with pytest.raises(HTTPError) as err:
        leader.request("DELETE", "/v1/operator/raft/peer?address=127.0.0.1:1")
    assert err.value.status == 404


def test_graceful_leave_of_the_leader(cluster: Cluster):
    leader = cluster.wait_leader()
    leader.put("/v1/agent/leave")
    leader.proc.wait(20)
    rest = cluster.live()
    new = cluster.wait_leader(among=rest, timeout=10)
    assert len(new.get("/v1/status/peers")) == 2
    retry(lambda: leader.name not in node_names(new), 10, what="left server deregistered")
    register(new, "two-left")  # two of two is a quorum


def test_snapshot_save_and_restore_into_a_fresh_cluster(cluster: Cluster, tmp_path):
    leader = cluster.wait_leader()
    for i in range(30):
        register(leader, f"snap-{i}", service=f"s{i % 3}")
    data, headers = leader.request("GET", "/v1/snapshot")
    assert int(headers["X-Consul-Index"]) > 1
    fresh = Cluster(tmp_path / "fresh", 1)
    try:
        fresh.start()
        target = fresh.agents[0]
        target.request("PUT", "/v1/snapshot", raw=data)
        names = node_names(target, stale=False)
        assert {f"snap-{i}" for i in range(30)} <= names
        assert len(target.get("/v1/catalog/service/s1")) == 10
        with pytest.raises(HTTPError) as err:
            target.request("PUT", "/v1/snapshot", raw=b"garbage")
        assert err.value.status == 400
        assert {f"snap-{i}" for i in range(30)} <= node_names(target, stale=False)
    finally:
        fresh.stop()
