"""The HTTP API of three server agents in one process: the real handlers, backend and
server role over the in-memory Raft. No agent is started (nothing binds but aiohttp's
test server); the Raft cluster is driven by hand."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.agent.agent import Agent
from mesh.agent.config import AgentConfig
from mesh.agent.http.app import build_app
from mesh.agent.server.raft.memory import MemoryCluster
from mesh.catalog.commands import MessageType
from mesh.catalog.structs import ServerInfo

ADDRESSES = ["10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300"]


@pytest.fixture
async def http():
    cluster = MemoryCluster(lease=2.0, write_timeout=0.2)
    clients: list[TestClient] = []
    for i in range(1, 4):
        cfg = AgentConfig(node_name=f"s{i}", server=True, dev=True, bind_addr="127.0.0.1",
                          advertise_addr=f"10.0.0.{i}", client_addr="127.0.0.1")
        agent = Agent(cfg, raft_factory=cluster.factory)
        assert agent.server is not None
        agent.server.membership.create_raft(f"10.0.0.{i}:8301", 8300, agent.watch.notify)
        client = TestClient(TestServer(build_app(agent)))
        await client.start_server()
        clients.append(client)
    leader = cluster.start(ADDRESSES[0])
    assert leader is not None
    for i, address in enumerate(ADDRESSES, 1):  # what each server's table loop would write
        await leader.apply(MessageType.SERVER_UPSERT, ServerInfo(address, f"s{i}", f"id-s{i}", f"10.0.0.{i}:8301"))
    yield cluster, clients
    for client in clients:
        await client.close()
    for raft in cluster.nodes.values():
        await raft.stop()


async def test_register_on_the_leader_read_on_a_follower_then_partition(http):
    cluster, (s1, s2, s3) = http
    resp = await s1.put("/v1/catalog/register", json={"Node": "web-1", "Address": "192.0.2.5"})
    assert resp.status == 200, await resp.text()
    resp = await s2.get("/v1/catalog/nodes")
    assert resp.status == 200 and "web-1" in [n["Node"] for n in await resp.json()]
    assert resp.headers["X-Consul-KnownLeader"] == "true"
    resp = await s3.get("/v1/status/leader")
    assert await resp.json() == "10.0.0.1:8301"

    cluster.network.partition([ADDRESSES[0]], ADDRESSES[1:])
    cluster.clock.advance(2.5)  # past the lease
    resp = await s1.get("/v1/catalog/nodes")
    assert resp.status == 500 and "No cluster leader" in await resp.text()
    resp = await s1.get("/v1/catalog/nodes?stale")
    assert resp.status == 200 and resp.headers["X-Consul-KnownLeader"] == "false"
    resp = await s1.put("/v1/catalog/register", json={"Node": "web-2", "Address": "192.0.2.6"})
    assert resp.status == 500 and "No cluster leader" in await resp.text()
