"""The server role in one process: three real ServerRoles (membership, the read engine,
the catalog endpoints, node liveness, the leader's duties) over the in-memory Raft, the
real FSM and a ManualClock. Nothing binds a socket; nothing sleeps for time to pass."""

from __future__ import annotations

import pytest

from mesh.agent.errors import NoLeader
from mesh.agent.reads import ReadOptions
from mesh.agent.server import ServerRole
from mesh.catalog.commands import MessageType, RegisterRequest, encode
from mesh.catalog.health import SERF_CHECK_ID
from mesh.catalog.structs import CRITICAL, PASSING, Node
from tests.harness.one_server import stop_servers, three_servers

LIVENESS = 10.0


@pytest.fixture
async def servers():
    cluster, roles = three_servers(liveness_timeout=LIVENESS)
    yield cluster, roles
    await stop_servers(roles)


def _register(name: str) -> bytes:
    return encode(MessageType.REGISTER, RegisterRequest(node=Node(node=name, address="192.0.2.7")), name.encode())


async def _node_names(role: ServerRole, **opts) -> list[str]:
    result = await role.read("catalog.nodes", {}, ReadOptions(**opts))
    return [n["Node"] for n in result.value]


async def test_a_write_through_the_leader_is_read_on_every_follower(servers):
    cluster, roles = servers
    assert roles["s1"].membership.raft.is_leader and roles["s2"].leader_rpc_address() == "10.0.0.1:8300"
    await roles["s1"].apply_raw(_register("web-1"))
    for role in roles.values():
        assert "web-1" in await _node_names(role)  # default reads, served locally
        assert role.leader_contact()[0]
    await roles["s3"].apply_raw(_register("web-2"))  # a follower's write goes through the leader
    assert "web-2" in await _node_names(roles["s2"], consistent=True)


async def test_a_minority_leader_stops_serving_within_the_lease(servers):
    cluster, roles = servers
    await roles["s1"].apply_raw(_register("before"))
    cluster.network.partition(["10.0.0.1:8300"], ["10.0.0.2:8300", "10.0.0.3:8300"])
    cluster.advance(1.0)
    assert "before" in await _node_names(roles["s1"])  # within the lease: still the leader
    cluster.clock.advance(1.1)  # the lease (2 s) has run out; no tick yet: it has not stepped down
    assert roles["s1"].membership.raft.is_leader
    with pytest.raises(NoLeader):
        await _node_names(roles["s1"])
    assert "before" in await _node_names(roles["s1"], stale=True)  # ?stale still answers
    with pytest.raises(NoLeader):
        await roles["s1"].apply_raw(_register("lost"))
    cluster.tick()
    assert not roles["s1"].membership.raft.is_leader
    # the majority elects a leader and goes on
    assert cluster.elect("10.0.0.2:8300")
    await roles["s3"].apply_raw(_register("after"))
    assert "after" in await _node_names(roles["s3"])
    cluster.network.heal()
    cluster.tick()
    names = await _node_names(roles["s1"])
    assert "after" in names and "lost" not in names


async def test_the_leader_fails_a_node_that_stops_heartbeating(servers):
    cluster, roles = servers
    leader = roles["s1"]
    await leader.heartbeat({"node": "client-1", "address": "192.0.2.10", "id": "c1"})
    await leader.heartbeat({"node": "client-2", "address": "192.0.2.11", "id": "c2"})
    await leader.duties.run_once()

    def serf(role: ServerRole, node: str) -> str:
        with role.membership.raft.lock:
            return role.fsm.store.node_checks(node)[SERF_CHECK_ID].status

    assert serf(roles["s2"], "client-1") == PASSING
    for _ in range(int(LIVENESS) + 2):  # client-2 keeps heartbeating; client-1 went quiet
        cluster.advance(1.0)  # also the Raft heartbeats that keep the leader's lease
        await leader.heartbeat({"node": "client-2", "address": "192.0.2.11", "id": "c2"})
        await leader.duties.run_once()
    for role in roles.values():
        assert serf(role, "client-1") == CRITICAL
        assert serf(role, "client-2") == PASSING
    members = {m["node"]: m["status"] for m in await leader.members()}
    assert members["client-1"] == "failed" and members["client-2"] == "alive"


async def test_a_follower_does_nothing_of_the_leaders_duties(servers):
    cluster, roles = servers
    await roles["s1"].heartbeat({"node": "client-1", "address": "192.0.2.10", "id": "c1"})
    cluster.advance(LIVENESS + 5)
    await roles["s2"].duties.run_once()
    with roles["s2"].membership.raft.lock:
        assert roles["s2"].fsm.store.node_checks("client-1")[SERF_CHECK_ID].status == PASSING
