"""The KV table and its operations, through the FSM as a server applies them: Consul's
verbs, locks and lock delays, sessions and their invalidation, transactions that apply
all or nothing, indexes that never go backwards, and snapshots that keep it all."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.commands import (
    KVOp,
    KVRequest,
    MessageType,
    RegisterRequest,
    SessionDestroyRequest,
    encode,
)
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fsm import FSM
from mesh.catalog.health import serf_check
from mesh.catalog.sessions import parse_session
from mesh.catalog.structs import CRITICAL, PASSING, Check, Node

NOW = 1_700_000_000.0


class Log:
    """An FSM fed one command per Raft index, as a server applies them."""

    def __init__(self) -> None:
        self.fsm = FSM()
        self.index = 0

    def apply(self, msg_type: MessageType, body) -> object:
        self.index += 1
        return self.fsm.apply(self.index, encode(msg_type, body, uuid.uuid4().bytes))

    def kv(self, verb: str, key: str, value: bytes = b"", flags: int = 0, index: int = 0, session: str = "",
           now: float = NOW) -> object:
        return self.apply(MessageType.KV_APPLY, KVRequest((KVOp(verb, key, value, flags, index, session),), now))

    def txn(self, *ops: KVOp, now: float = NOW) -> dict:
        return self.apply(MessageType.TXN, KVRequest(ops, now))  # type: ignore[return-value]

    def node(self, name: str = "n1", serf: str = PASSING, checks: tuple[Check, ...] = ()) -> None:
        self.apply(MessageType.REGISTER, RegisterRequest(node=Node(node=name, address="192.0.2.1"),
                                                         checks=(serf_check(serf), *checks)))

    def session(self, body: dict | None = None, node: str = "n1") -> str:
        session = parse_session(body or {}, str(uuid.uuid4()), node)
        result = self.apply(MessageType.SESSION_CREATE, session)
        assert isinstance(result, dict) and "ID" in result, result
        return str(result["ID"])

    def destroy(self, *ids: str, now: float = NOW) -> None:
        self.apply(MessageType.SESSION_DESTROY, SessionDestroyRequest(ids, now))

    def entry(self, key: str):
        return self.fsm.store.kv.get(key)


@pytest.fixture
def log() -> Log:
    out = Log()
    out.node()
    return out


def test_set_keeps_create_index_and_moves_modify_index(log):
    assert log.kv("set", "a", b"1", flags=7) is True
    first = log.entry("a")
    log.kv("set", "a", b"2")
    second = log.entry("a")
    assert (first.create_index, second.create_index) == (first.modify_index, first.modify_index)
    assert second.modify_index > first.modify_index and second.value == b"2" and second.flags == 0


def test_cas_zero_creates_only_and_stale_cas_fails(log):
    assert log.kv("cas", "a", b"1", index=0) is True
    assert log.kv("cas", "a", b"2", index=0) is False
    current = log.entry("a").modify_index
    assert log.kv("cas", "a", b"3", index=current - 1) is False
    assert log.kv("cas", "a", b"3", index=current) is True
    assert log.entry("a").value == b"3"


def test_lock_increments_lock_index_once_per_holder_and_release_keeps_it(log):
    s1, s2 = log.session(), log.session()
    assert log.kv("lock", "l", b"x", session=s1) is True
    assert (log.entry("l").lock_index, log.entry("l").session) == (1, s1)
    assert log.kv("lock", "l", b"y", session=s1) is True  # the holder again: no increment
    assert log.entry("l").lock_index == 1 and log.entry("l").value == b"y"
    assert log.kv("lock", "l", session=s2) is False
    assert log.kv("unlock", "l", session=s2) is False  # not the holder
    assert log.kv("unlock", "l", b"z", session=s1) is True
    assert (log.entry("l").lock_index, log.entry("l").session, log.entry("l").value) == (1, "", b"z")
    assert log.kv("lock", "l", session=s2) is True
    assert log.entry("l").lock_index == 2


def test_a_plain_set_keeps_the_holder(log):
    s1 = log.session()
    log.kv("lock", "l", session=s1)
    log.kv("set", "l", b"new")
    assert log.entry("l").session == s1 and log.entry("l").lock_index == 1


def test_lock_with_an_unknown_or_unhealthy_session_is_a_server_error(log):
    result = log.kv("lock", "l", session=str(uuid.uuid4()))
    assert isinstance(result, dict) and result["Error"].startswith("invalid session") and result["Server"]
    s1 = log.session()
    log.node(serf=CRITICAL)  # its node's serfHealth turned critical: not yet invalidated, but it may not lock
    assert log.kv("lock", "l", session=s1)["Error"].startswith("invalid session")  # type: ignore[index]
    assert log.entry("l") is None


def test_destroy_releases_and_delays_the_lock(log):
    s1 = log.session({"LockDelay": "10s"})
    log.kv("lock", "l", b"v", session=s1)
    log.destroy(s1, now=NOW)
    entry = log.entry("l")
    assert (entry.session, entry.lock_index, entry.value) == ("", 1, b"v")
    s2 = log.session()
    assert log.kv("lock", "l", session=s2, now=NOW + 9.9) is False  # within the lock delay
    assert log.kv("lock", "l", session=s2, now=NOW + 10.0) is True
    assert log.entry("l").lock_index == 2


def test_behavior_delete_deletes_the_held_keys(log):
    s1 = log.session({"Behavior": "delete", "LockDelay": 0})
    log.kv("lock", "a", session=s1)
    log.kv("lock", "b", session=s1)
    log.kv("set", "c")
    log.destroy(s1)
    kv = log.fsm.store.kv
    assert sorted(kv.entries) == ["c"] and set(kv.tombstones) == {"a", "b"} and not kv.lock_delays


def test_delete_cas_and_delete_tree(log):
    for key in ("t/a", "t/b", "tx", "u"):
        log.kv("set", key)
    assert log.kv("delete-cas", "u", index=1) is False
    assert log.kv("delete-cas", "u", index=log.entry("u").modify_index) is True
    assert log.kv("delete-cas", "missing", index=5) is True  # Consul: nothing to delete is success
    log.kv("delete-tree", "t/")
    assert sorted(log.fsm.store.kv.entries) == ["tx"]


def test_session_create_refuses_unknown_nodes_and_bad_checks(log):
    for body, node, problem in (
        ({}, "ghost", "Missing node registration"),
        ({"Checks": ["nope"]}, "n1", "Missing check 'nope' registration"),
    ):
        session = parse_session(body, str(uuid.uuid4()), node)
        result = log.apply(MessageType.SESSION_CREATE, session)
        assert result == {"Error": problem, "Server": True}
    log.node(serf=CRITICAL)
    result = log.apply(MessageType.SESSION_CREATE, parse_session({}, str(uuid.uuid4()), "n1"))
    assert result["Error"] == "Check 'serfHealth' is in critical state"  # type: ignore[index]


@pytest.mark.parametrize("body, delay", [
    ({}, 15.0), ({"LockDelay": "15s"}, 15.0), ({"LockDelay": "0.001s"}, 0.001), ({"lockdelay": 5}, 5.0),
    ({"LockDelay": 2_000_000_000}, 2.0), ({"LockDelay": 0}, 0.0),
])
def test_lock_delay_spellings(body, delay):
    assert parse_session(body, "id", "n").lock_delay == pytest.approx(delay)


@pytest.mark.parametrize("body, checks", [
    ({}, ("serfHealth",)), ({"Checks": []}, ()), ({"checks": ["a"]}, ("a",)),
    ({"NodeChecks": ["a"]}, ("serfHealth", "a")), ({"Checks": [], "NodeChecks": ["a"]}, ("a",)),
])
def test_checks_default_to_serf_health_unless_listed(body, checks):
    assert parse_session(body, "id", "n").node_checks == checks


@pytest.mark.parametrize("body, message", [
    ({"TTL": "5s"}, "Invalid Session TTL"), ({"TTL": "25h"}, "Invalid Session TTL"),
    ({"TTL": "soon"}, "Session TTL 'soon' invalid"), ({"Behavior": "keep"}, "Invalid Behavior setting 'keep'"),
    ({"LockDelay": "61s"}, "Lock delay must be at most"), ({"LockDelay": True}, "invalid LockDelay"),
    ({"Name": 3}, "Name must be a string"), ([], "must be a JSON object"),
])
def test_bad_session_bodies_are_refused(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_session(body, "id", "n")


def test_session_json_is_consuls():
    session = parse_session({"Name": "x", "TTL": "30s", "ServiceChecks": [{"ID": "svc:1", "Namespace": ""}]},
                            "id-1", "n1")
    api = session.to_api()
    assert api["LockDelay"] == 15_000_000_000 and api["TTL"] == "30s" and api["Behavior"] == "release"
    assert api["NodeChecks"] == ["serfHealth"] and api["ServiceChecks"] == [{"ID": "svc:1", "Namespace": ""}]
    assert "Checks" in api
    assert "Checks" not in parse_session({}, "id", "n").to_api()  # only serfHealth: the legacy field is left out


# ---- transactions -------------------------------------------------------------------------
def test_a_failing_op_voids_the_whole_transaction(log):
    log.kv("set", "held", b"1")
    before = dict(log.fsm.store.kv.entries)
    reply = log.txn(KVOp("set", "new", b"x"), KVOp("delete", "held"), KVOp("check-not-exists", "held"),
                    KVOp("cas", "held", b"y", index=1))
    assert reply["Results"] is None
    assert [e["OpIndex"] for e in reply["Errors"]] == [3]  # the delete made op 2 pass; op 3's index is stale
    assert log.fsm.store.kv.entries == before and "new" not in log.fsm.store.kv.tombstones


def test_transaction_results_are_consuls_shape(log):
    s1 = log.session()
    reply = log.txn(KVOp("set", "a", b"1"), KVOp("lock", "b", b"2", session=s1), KVOp("get", "a"),
                    KVOp("get-tree", ""), KVOp("check-session", "b", session=s1), KVOp("delete", "zzz"))
    assert reply["Errors"] is None
    results = [r["KV"] for r in reply["Results"]]
    assert [r["Key"] for r in results] == ["a", "b", "a", "a", "b", "b"]
    assert results[0]["Value"] is None and results[2]["Value"] == "MQ=="  # writes carry no value
    assert results[1]["Session"] == s1 and results[1]["LockIndex"] == 1


@pytest.mark.parametrize("op, what", [
    (KVOp("get", "nope"), 'key "nope" doesn\'t exist'),
    (KVOp("check-index", "a", index=1), 'failed index check for key "a", current modify index'),
    (KVOp("check-session", "a", session="s"), 'failed session check for key "a"'),
    (KVOp("check-not-exists", "a"), 'key "a" exists'),
    (KVOp("cas", "a", index=1), 'failed to set key "a", index is stale'),
    (KVOp("unlock", "a", session="s"), 'failed to unlock key "a"'),
    (KVOp("lock", "a", session=str(uuid.UUID(int=1))), "invalid session"),
    (KVOp("frob", "a"), 'unknown KV verb "frob"'),
])
def test_transaction_errors_name_the_op(log, op, what):
    log.kv("set", "a")
    reply = log.txn(KVOp("get", "a"), op)
    assert reply["Errors"][0]["OpIndex"] == 1 and reply["Errors"][0]["What"].startswith(what)


# ---- indexes and watch keys ------------------------------------------------------------------
def test_reads_touch_only_their_keys(log):
    log.fsm.store.drain_touched()
    log.kv("set", "web/a")
    assert log.fsm.store.drain_touched() == {"kvs", "kv:web/a"}


def test_tombstones_keep_prefix_indexes_and_a_reap_never_moves_them_back(log):
    kv = log.fsm.store.kv
    log.kv("set", "p/a")
    log.kv("set", "p/b")
    log.kv("delete", "p/b")
    deleted_at = log.index
    table = log.fsm.store.index("kvs")
    assert kv.prefix_index("p/", table) == deleted_at and kv.key_index("p/b", table) == deleted_at
    log.apply(MessageType.KV_REAP, deleted_at)
    assert not kv.tombstones
    assert kv.prefix_index("p/", table) == deleted_at and kv.key_index("p/b", table) == deleted_at
    log.kv("set", "elsewhere")  # a missing key and an empty prefix answer the table's index, as in Consul
    table = log.fsm.store.index("kvs")
    assert kv.key_index("never", table) == table and kv.prefix_index("nothing/", table) == table


def test_keys_with_a_separator_collapse_below_it(log):
    for key in ("web/a", "web/sub/x", "web/sub/y", "web//z", "webby"):
        log.kv("set", key)
    kv = log.fsm.store.kv
    assert kv.keys_under("web/", "/") == ["web//", "web/a", "web/sub/"]
    assert kv.keys_under("", "/") == ["web/", "webby"]
    assert kv.keys_under("web", "") == ["web//z", "web/a", "web/sub/x", "web/sub/y", "webby"]


_keys = st.sampled_from(["a", "a/b", "a/c", "b", "a/b/c"])
_ops = st.lists(st.tuples(st.sampled_from(["set", "delete", "delete-tree", "cas", "reap"]), _keys,
                          st.integers(0, 12)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(_ops)
def test_read_indexes_never_go_backwards_and_snapshots_keep_the_table(ops):
    log = Log()
    log.node()
    seen: dict[tuple[str, str], int] = {}
    for verb, key, n in ops:
        if verb == "reap":
            log.apply(MessageType.KV_REAP, n)
        else:
            log.kv(verb, key, index=n)
        kv, table = log.fsm.store.kv, log.fsm.store.index("kvs")
        for probe in ("a", "a/b", "a/c", "b", "a/b/c"):
            for kind, index in (("key", kv.key_index(probe, table)), ("prefix", kv.prefix_index(probe, table))):
                assert index >= seen.get((kind, probe), 0), (kind, probe)
                seen[(kind, probe)] = index
    restored = FSM.from_snapshot(log.fsm.snapshot())
    assert restored == log.fsm and restored.store.kv.keys_under("", "/") == log.fsm.store.kv.keys_under("", "/")
