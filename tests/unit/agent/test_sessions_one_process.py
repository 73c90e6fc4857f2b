"""Session upkeep in one process: three real ServerRoles over the in-memory Raft with a
ManualClock. TTLs expire at twice the TTL after the last renewal, a check turning
critical invalidates at once, the lock delay runs from the leader's stamped time, and
a new leader restarts every TTL clock so a failover cuts none short."""

from __future__ import annotations

import uuid

import pytest

from mesh.agent.reads import ReadOptions
from mesh.agent.server import ServerRole
from mesh.agent.server.sessions import SessionTimers, TombstoneClock, invalidation_plan
from mesh.catalog.commands import KVOp, KVRequest, MessageType, RegisterRequest, encode
from mesh.catalog.health import serf_check
from mesh.catalog.sessions import parse_session
from mesh.catalog.store import Store
from mesh.catalog.structs import CRITICAL, PASSING, Node
from tests.harness.one_server import stop_servers, three_servers

TTL = 10.0


@pytest.fixture
async def servers():
    cluster, roles = three_servers(tombstone_ttl=60.0)
    yield cluster, roles
    await stop_servers(roles)


def _raw(msg_type: MessageType, body) -> bytes:
    return encode(msg_type, body, uuid.uuid4().bytes)


async def _node(role: ServerRole, serf: str = PASSING) -> None:
    await role.apply_raw(_raw(MessageType.REGISTER, RegisterRequest(node=Node(node="app", address="192.0.2.9"),
                                                                    checks=(serf_check(serf),))))


async def _session(role: ServerRole, **body) -> str:
    session = parse_session(body, str(uuid.uuid4()), "app")
    result = await role.apply_raw(_raw(MessageType.SESSION_CREATE, session))
    return str(result["ID"])


async def _sessions(role: ServerRole) -> list[str]:
    result = await role.read("session.list", {}, ReadOptions(stale=True))
    return [s["ID"] for s in result.value]


async def _lock(role: ServerRole, key: str, session: str) -> object:
    return await role.apply_raw(_raw(MessageType.KV_APPLY, KVRequest((KVOp("lock", key, b"", 0, 0, session),))))


async def test_a_ttl_session_expires_at_twice_its_ttl_after_the_last_renewal(servers):
    cluster, roles = servers
    leader = roles["s1"]
    await _node(leader)
    sid = await _session(leader, TTL="10s")
    await leader.sessions.run_once()  # the leader notices it: its clock starts
    cluster.advance(15.0)
    assert (await leader.session_renew(sid))["TTL"] == "10s"  # renewed at +15: expires at +35
    cluster.advance(19.0)
    await leader.sessions.run_once()
    assert await _sessions(leader) == [sid]
    cluster.advance(1.5)
    await leader.sessions.run_once()
    assert await _sessions(leader) == []
    assert await leader.session_renew(sid) is None  # gone: the endpoint's 404


async def test_a_critical_check_invalidates_and_the_lock_delay_runs_from_then(servers):
    cluster, roles = servers
    leader = roles["s1"]
    await _node(leader)
    sid = await _session(leader, LockDelay="5s")
    assert await _lock(leader, "db/leader", sid) is True
    await _node(leader, CRITICAL)
    await leader.sessions.run_once()
    assert await _sessions(leader) == []
    entry = leader.fsm.store.kv.get("db/leader")
    assert entry.session == "" and entry.lock_index == 1
    await _node(leader, PASSING)
    other = await _session(leader)
    cluster.advance(4.9)
    assert await _lock(roles["s2"], "db/leader", other) is False  # a follower's write: the same delay
    cluster.advance(0.2)
    assert await _lock(roles["s2"], "db/leader", other) is True


async def test_a_new_leader_restarts_every_ttl_clock(servers):
    cluster, roles = servers
    old = roles["s1"]
    await _node(old)
    sid = await _session(old, TTL="10s")
    await old.sessions.run_once()
    cluster.advance(19.0)  # the old leader would expire it at +20
    cluster.network.partition(["10.0.0.1:8300"], ["10.0.0.2:8300", "10.0.0.3:8300"])
    assert cluster.elect("10.0.0.2:8300")
    new = roles["s2"]
    await new.sessions.run_once()  # first round as leader: every clock restarts now (+19)
    await old.sessions.run_once()  # the deposed leader does nothing
    cluster.advance(10.0)
    await new.sessions.run_once()
    assert await _sessions(new) == [sid]  # +29: past the old deadline, within the new one
    cluster.advance(10.5)
    await new.sessions.run_once()
    assert await _sessions(new) == []


async def test_a_follower_does_no_upkeep(servers):
    cluster, roles = servers
    await _node(roles["s1"])
    await _session(roles["s1"], TTL="10s")
    cluster.advance(1.0)
    await roles["s2"].sessions.run_once()
    assert roles["s2"].sessions.timers.deadlines == {}


async def test_tombstones_are_reaped_after_their_ttl(servers):
    cluster, roles = servers
    leader = roles["s1"]
    for verb in ("set", "delete"):
        await leader.apply_raw(_raw(MessageType.KV_APPLY, KVRequest((KVOp(verb, "gone"),))))
    await leader.sessions.run_once()
    kv = leader.fsm.store.kv
    assert "gone" in kv.tombstones
    for _ in range(6):
        cluster.advance(11.0)
        await leader.sessions.run_once()
    assert not kv.tombstones and kv.key_index("gone", 0) > 0
    cluster.tick()
    assert not roles["s3"].fsm.store.kv.tombstones  # reaped through Raft: on every server


def test_invalidation_plan_is_pure():
    store = Store()
    timers = SessionTimers()
    assert invalidation_plan(store, timers, 0.0) == []
    clock = TombstoneClock(10.0)
    clock.note(0.0, 5)
    clock.note(4.0, 9)
    assert clock.reapable(9.0) == 0 and clock.reapable(10.0) == 5 and clock.reapable(14.0) == 9


async def test_a_leader_that_lost_and_regained_office_between_rounds_restarts_its_clocks(servers):
    """s1 leads, loses office to s2 (which takes a renewal), and wins it back before its
    next round: its old clocks missed that renewal, so the new term restarts them."""
    cluster, roles = servers
    s1, s2 = roles["s1"], roles["s2"]
    await _node(s1)
    sid = await _session(s1, TTL="10s")
    await s1.sessions.run_once()  # s1's clock: expires at +20
    cluster.advance(15.0)
    cluster.network.partition(["10.0.0.1:8300"], ["10.0.0.2:8300", "10.0.0.3:8300"])
    assert cluster.elect("10.0.0.2:8300")
    await s2.sessions.run_once()
    assert await s2.session_renew(sid) is not None  # renewed at +15 on s2
    cluster.network.heal()
    cluster.tick()
    assert cluster.elect("10.0.0.1:8300") and s1.membership.raft.is_leader
    cluster.advance(6.0)  # +21: past s1's old deadline, well within the renewal's
    await s1.sessions.run_once()
    assert await _sessions(s1) == [sid]
