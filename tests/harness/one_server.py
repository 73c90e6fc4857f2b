"""Servers in this process over the in-memory Raft: one server agent with its HTTP app on
aiohttp's test server (the real handlers, read engine and FSM, nothing else bound), or
three bare ServerRoles for the server side's own tests."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from mesh.agent.agent import Agent
from mesh.agent.config import AgentConfig
from mesh.agent.http.app import build_app
from mesh.agent.server import ServerRole
from mesh.agent.server.raft.memory import MemoryCluster
from mesh.agent.watch import WatchHub


async def one_server(policy: str = "allow", **overrides: Any) -> tuple[MemoryCluster, Agent, TestClient]:
    """A leader with its HTTP client; the caller closes the client and stops the rafts.
    `overrides` are AgentConfig fields (ACLs on, for instance)."""
    cluster = MemoryCluster(lease=2.0, write_timeout=0.5)
    cfg = AgentConfig(node_name="s1", server=True, dev=True, bind_addr="127.0.0.1", advertise_addr="10.0.0.1",
                      client_addr="127.0.0.1", default_intention_policy=policy, **overrides)
    agent = Agent(cfg, raft_factory=cluster.factory)
    assert agent.server is not None
    agent.server.membership.create_raft("10.0.0.1:8301", 8300, agent.watch.notify)
    client = TestClient(TestServer(build_app(agent)))
    await client.start_server()
    assert cluster.start("10.0.0.1:8300") is not None
    return cluster, agent, client


def three_servers(**cfg: Any) -> tuple[MemoryCluster, dict[str, ServerRole]]:
    """Three real ServerRoles (s1, s2, s3 at 10.0.0.1-3) over the in-memory Raft with a
    ManualClock, s1 elected; `cfg` adds AgentConfig fields. Stop with stop_servers."""
    cluster = MemoryCluster(lease=2.0, write_timeout=0.2)
    roles: dict[str, ServerRole] = {}
    for i, name in enumerate(("s1", "s2", "s3"), 1):
        config = AgentConfig(node_name=name, server=True, bind_addr="127.0.0.1", advertise_addr=f"10.0.0.{i}", **cfg)
        hub = WatchHub()
        role = ServerRole(config, f"id-{name}", hub, clock=cluster.clock, raft_factory=cluster.factory)
        role.membership.create_raft(f"10.0.0.{i}:8301", 8300, hub.notify)
        roles[name] = role
    assert cluster.start("10.0.0.1:8300") is not None
    return cluster, roles


async def stop_servers(roles: dict[str, ServerRole]) -> None:
    for role in roles.values():
        await role.duties.stop()
        raft = role.membership.raft
        if raft is not None:
            await raft.stop()
