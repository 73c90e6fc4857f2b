"""One server agent in this process over the in-memory Raft, its HTTP app on aiohttp's
test server: the real handlers, read engine and FSM, nothing else bound."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from mesh.agent.agent import Agent
from mesh.agent.config import AgentConfig
from mesh.agent.http.app import build_app
from mesh.agent.server.raft.memory import MemoryCluster


async def one_server(policy: str = "allow") -> tuple[MemoryCluster, Agent, TestClient]:
    """A leader with its HTTP client; the caller closes the client and stops the rafts."""
    cluster = MemoryCluster(lease=2.0, write_timeout=0.5)
    cfg = AgentConfig(node_name="s1", server=True, dev=True, bind_addr="127.0.0.1", advertise_addr="10.0.0.1",
                      client_addr="127.0.0.1", default_intention_policy=policy)
    agent = Agent(cfg, raft_factory=cluster.factory)
    assert agent.server is not None
    agent.server.membership.create_raft("10.0.0.1:8301", 8300, agent.watch.notify)
    client = TestClient(TestServer(build_app(agent)))
    await client.start_server()
    assert cluster.start("10.0.0.1:8300") is not None
    return cluster, agent, client
