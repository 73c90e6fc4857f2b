"""The in-memory Raft (agent/server/raft/memory.py): replication, leases, partitions,
elections and the controllable transport, with the real FSM behind every node."""

from __future__ import annotations

import asyncio
import inspect

import pytest

from mesh.agent.errors import ApplyTimeout, MembershipError, NoLeader
from mesh.agent.server.raft import Raft
from mesh.agent.server.raft.adapter import PysyncobjRaft
from mesh.agent.server.raft.memory import MemoryCluster, MemoryRaft
from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest
from mesh.catalog.structs import Node

A, B, C = "10.0.0.1:8300", "10.0.0.2:8300", "10.0.0.3:8300"


def _register(name: str) -> RegisterRequest:
    return RegisterRequest(node=Node(node=name, address="192.0.2.1"))


def _has(node: MemoryRaft, name: str) -> bool:
    with node.lock:
        return node.fsm.store.node(name) is not None


@pytest.fixture
def cluster() -> MemoryCluster:
    c = MemoryCluster.of(3, lease=2.0, write_timeout=0.2)
    assert c.start(A) is c.nodes[A]
    return c


@pytest.mark.parametrize("impl", [PysyncobjRaft, MemoryRaft])
def test_both_implement_the_protocol(impl):
    """Every member of the Raft Protocol, with the same parameters and the same kind
    (coroutine, property, plain method), on the adapter and the in-memory Raft."""
    members = {k: v for k, v in vars(Raft).items() if not k.startswith("_")}
    assert "apply" in members and "lease_valid" in members
    for name, want in members.items():
        got = getattr(impl, name, None)
        if isinstance(want, property):
            assert isinstance(got, property), f"{impl.__name__}.{name} should be a property"
        elif callable(want):
            assert callable(got), f"{impl.__name__} lacks {name}"
            assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), name
            assert list(inspect.signature(got).parameters) == list(inspect.signature(want).parameters), name
    assert "lock" in Raft.__annotations__


async def test_a_single_node_commits_alone():
    c = MemoryCluster()
    node = c.add("10.0.0.9:8300")
    node.start([])
    assert node.is_leader and node.lease_valid() and node.voters() == ["10.0.0.9:8300"]
    await node.apply(MessageType.REGISTER, _register("web"))
    assert _has(node, "web") and node.applied_index == node.commit_index == node.fsm.last_index


async def test_a_write_reaches_every_follower_through_the_real_fsm(cluster):
    leader = cluster.nodes[A]
    await leader.apply(MessageType.REGISTER, _register("web"))
    for node in cluster.nodes.values():
        assert _has(node, "web")
        assert node.caught_up() and node.has_leader()
    hashes = {n.fsm.state_hash() for n in cluster.nodes.values()}
    assert len(hashes) == 1


async def test_a_follower_forwards_its_write_and_answers_from_its_own_fsm(cluster):
    result = await cluster.nodes[B].apply(MessageType.REGISTER, _register("db"))
    assert result is None or not isinstance(result, Exception)
    assert all(_has(n, "db") for n in cluster.nodes.values())


async def test_a_minority_leader_loses_its_lease_and_its_writes(cluster):
    leader = cluster.nodes[A]
    cluster.network.partition([A], [B, C])
    cluster.advance(1.0)
    assert leader.lease_valid()  # within the lease it still has quorum contact
    cluster.advance(1.5)
    assert not leader.lease_valid() and not leader.has_leader() and not leader.is_leader  # stepped down
    with pytest.raises(NoLeader):
        await leader.apply(MessageType.REGISTER, _register("lost"))
    assert cluster.elect(B)
    await cluster.nodes[B].apply(MessageType.REGISTER, _register("kept"))
    assert _has(cluster.nodes[C], "kept") and not _has(leader, "kept")
    cluster.network.heal()
    cluster.tick()
    assert all(_has(n, "kept") and not _has(n, "lost") for n in cluster.nodes.values())
    assert leader.leader == B and leader.caught_up()


async def test_an_uncommitted_entry_of_a_cut_off_leader_is_replaced(cluster):
    old = cluster.nodes[A]
    cluster.network.partition([A], [B, C])
    with pytest.raises(ApplyTimeout):  # its lease still holds: a leader is known, the write timed out
        await old.apply(MessageType.REGISTER, _register("orphan"), timeout=0.05)
    assert len(old.log) > cluster.nodes[B].commit_index  # appended, never committed
    cluster.advance(3.0)
    assert cluster.elect(C)
    await cluster.nodes[C].apply(MessageType.REGISTER, _register("winner"))
    cluster.network.heal()
    cluster.tick()
    assert [e[0] for e in old.log] == [e[0] for e in cluster.nodes[C].log]
    assert _has(old, "winner") and not _has(old, "orphan")


def test_elections_follow_votes_and_logs(cluster):
    cluster.network.partition([C], [A, B])
    assert not cluster.elect(C)  # cannot reach a majority
    cluster.network.heal()
    assert cluster.elect(B) and cluster.leader() is cluster.nodes[B]
    assert not cluster.nodes[A].is_leader and cluster.nodes[A].leader == B


async def test_a_stale_log_cannot_win(cluster):
    cluster.network.cut(A, C)
    await cluster.nodes[A].apply(MessageType.REGISTER, _register("x"))  # A and B hold it; C does not
    cluster.network.heal()
    cluster.network.cut(A, C)
    cluster.network.cut(A, B)
    assert not cluster.elect(C)  # B refuses: C's log is behind
    assert cluster.elect(B)


async def test_delayed_messages_arrive_when_the_clock_says_so(cluster):
    cluster.network.delay(A, B, 0.5)
    cluster.network.delay(A, C, 0.5)
    leader = cluster.nodes[A]
    task = asyncio.ensure_future(leader.apply(MessageType.REGISTER, _register("slow"), timeout=5))
    await asyncio.sleep(0)
    assert not task.done() and not _has(cluster.nodes[B], "slow")
    cluster.advance(0.5)  # the entries arrive, the acks come straight back: committed
    await task
    assert _has(leader, "slow") and not _has(cluster.nodes[B], "slow")  # the commit index is on its way
    cluster.advance(0.5)
    assert all(_has(n, "slow") for n in cluster.nodes.values())


async def test_a_lossy_link_is_repaired_by_heartbeats(cluster):
    cluster.network.drop(A, C, rate=1.0)
    await cluster.nodes[A].apply(MessageType.REGISTER, _register("web"))  # A and B commit it
    assert not _has(cluster.nodes[C], "web")
    cluster.network.heal()
    cluster.tick()
    assert _has(cluster.nodes[C], "web")


async def test_membership_changes_and_leadership_transfer(cluster):
    leader = cluster.nodes[A]
    with pytest.raises(MembershipError):
        await cluster.nodes[B].remove_peer(C)
    await leader.remove_peer(C)
    assert leader.voters() == [A, B] and cluster.nodes[B].voters() == [A, B]
    assert await leader.transfer_leadership()
    assert cluster.leader() is cluster.nodes[B]
    await cluster.nodes[B].apply(MessageType.DEREGISTER, DeregisterRequest(node="nobody"))


async def test_barrier_and_stop(cluster):
    await cluster.nodes[B].barrier()
    await cluster.nodes[A].stop()
    with pytest.raises(NoLeader):
        await cluster.nodes[A].apply(MessageType.REGISTER, _register("late"))
    assert cluster.nodes[A].last_contact() == float("inf")


async def test_a_cut_off_follower_serves_default_reads_for_half_the_lease_only(cluster):
    """The other half is for a last message that was delayed on its way (caught_up)."""
    await cluster.nodes[A].apply(MessageType.REGISTER, _register("web"))
    follower = cluster.nodes[C]
    assert follower.caught_up()
    cluster.network.partition([A, B], [C])
    cluster.advance(0.9)
    assert follower.caught_up()
    cluster.advance(0.2)
    assert not follower.caught_up() and follower.has_leader()  # known, but reads go to the leader now
