"""FSM and store: Consul's register/deregister semantics, determinism, snapshots."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog import query
from mesh.catalog.commands import (
    IGNORE_UNKNOWN,
    MessageType,
    decode,
    encode,
    encode_batch,
)
from mesh.catalog.errors import FatalStateError
from mesh.catalog.fsm import FSM
from mesh.catalog.requests import parse_deregister, parse_register


def reg(body: dict, rid: bytes | None = None) -> bytes:
    return encode(MessageType.REGISTER, parse_register(body), rid if rid is not None else uuid.uuid4().bytes)


def dereg(body: dict) -> bytes:
    return encode(MessageType.DEREGISTER, parse_deregister(body), uuid.uuid4().bytes)


def apply(fsm: FSM, index: int, *cmds: bytes) -> list:
    return fsm.apply_batch(index, encode_batch(list(cmds)))


WEB = {"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 80, "Tags": ["v1"]},
       "Check": {"Name": "web alive", "ServiceID": "web", "Status": "passing"}}


def test_register_creates_node_service_check_with_indexes():
    fsm = FSM()
    assert apply(fsm, 5, reg(WEB)) == [True]
    store = fsm.store
    assert store.node("N1").create_index == 5
    svc = store.node_services("n1")["web"]
    assert (svc.create_index, svc.modify_index) == (5, 5)
    check = store.node_checks("n1")["web alive"]
    assert check.service_name == "web" and check.service_tags == ("v1",)
    assert store.index("service.web") == 5 and store.index("nodes") == 5


def test_reregister_keeps_create_index_and_bumps_modify_only_on_change():
    fsm = FSM()
    apply(fsm, 5, reg(WEB))
    apply(fsm, 6, reg(WEB))  # identical: nothing changes
    svc = fsm.store.node_services("n1")["web"]
    assert (svc.create_index, svc.modify_index) == (5, 5)
    changed = dict(WEB, Service={"Service": "web", "Port": 81, "Tags": ["v1"]})
    apply(fsm, 7, reg(changed))
    svc = fsm.store.node_services("n1")["web"]
    assert (svc.create_index, svc.modify_index, svc.port) == (5, 7, 81)


def test_deregister_node_removes_services_and_checks():
    fsm = FSM()
    apply(fsm, 5, reg(WEB))
    apply(fsm, 6, reg({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "db", "Port": 5432}}))
    apply(fsm, 7, dereg({"Node": "n1"}))
    assert fsm.store.node("n1") is None
    assert fsm.store.node_services("n1") == {}
    assert fsm.store.node_checks("n1") == {}
    assert list(fsm.store.instances("web")) == [] and list(fsm.store.instances("db")) == []
    assert fsm.store.index("service.web") == 7


def test_deregister_service_removes_its_checks_only():
    fsm = FSM()
    apply(fsm, 5, reg(WEB))
    apply(fsm, 6, reg({"Node": "n1", "Address": "10.0.0.1", "Check": {"Name": "node ok", "Status": "passing"}}))
    apply(fsm, 7, dereg({"Node": "n1", "ServiceID": "web"}))
    assert set(fsm.store.node_checks("n1")) == {"node ok"}
    assert fsm.store.node("n1") is not None


def test_check_for_missing_service_is_an_error_result_and_writes_nothing():
    fsm = FSM()
    body = {"Node": "n2", "Address": "10.0.0.2", "Check": {"Name": "x", "ServiceID": "nope"}}
    [result] = apply(fsm, 5, reg(body))
    assert "Missing service registration" in result["Error"]
    assert fsm.store.node("n2") is None


def test_node_id_conflict_is_rejected():
    fsm = FSM()
    nid = str(uuid.uuid4())
    apply(fsm, 5, reg({"Node": "a", "Address": "10.0.0.1", "ID": nid}))
    [result] = apply(fsm, 6, reg({"Node": "b", "Address": "10.0.0.2", "ID": nid}))
    assert "conflicts" in result["Error"]


def test_fine_grained_index_untouched_by_other_services():
    fsm = FSM()
    apply(fsm, 5, reg(WEB))
    apply(fsm, 6, reg({"Node": "n9", "Address": "10.0.0.9", "Service": {"Service": "db"}}))
    assert fsm.store.index("service.web") == 5
    assert fsm.store.index("service.db") == 6
    # a node-level check on n1 touches the services running there
    apply(fsm, 7, reg({"Node": "n1", "Address": "10.0.0.1", "Check": {"Name": "disk", "Status": "warning"}}))
    assert fsm.store.index("service.web") == 7
    assert fsm.store.index("service.db") == 6


def test_dedupe_applies_a_request_id_once():
    fsm = FSM()
    rid = b"same-request-id!"
    apply(fsm, 5, reg(WEB, rid))
    apply(fsm, 6, dereg({"Node": "n1"}))
    assert apply(fsm, 7, reg(WEB, rid)) == [True]  # a retry of the first write
    assert fsm.store.node("n1") is None


def test_unknown_command_is_fatal_unless_ignorable():
    fsm = FSM()
    with pytest.raises(FatalStateError):
        fsm.apply(5, bytes([99]) + b"\x93\x01\xc4\x00\xc0")
    assert fsm.apply(5, bytes([99 | IGNORE_UNKNOWN]) + b"\x93\x01\xc4\x00\xc0") is None


def test_catalog_service_query_tags_and_meta():
    fsm = FSM()
    apply(fsm, 5, reg(WEB))
    apply(fsm, 6, reg({"Node": "n2", "Address": "10.0.0.2", "NodeMeta": {"env": "prod"},
                       "Service": {"Service": "web", "Tags": ["v2"], "Port": 80}}))
    index, rows = query.catalog_service(fsm.store, "web", ["v2"], {}, None)
    assert [r["Node"] for r in rows] == ["n2"] and index == 6
    _, rows = query.catalog_service(fsm.store, "web", [], {"env": "prod"}, None)
    assert [r["Node"] for r in rows] == ["n2"]
    _, services = query.catalog_services(fsm.store, {}, None)
    assert services == {"web": ["v1", "v2"]}


# ---- property tests -------------------------------------------------------------------

names = st.text(alphabet="abcdefghij", min_size=1, max_size=3)
registrations = st.builds(
    lambda node, svc, port, tags, status: {
        "Node": node, "Address": "10.0.0.1",
        "Service": {"Service": svc, "Port": port, "Tags": tags},
        "Check": {"Name": "c-" + svc, "ServiceID": svc, "Status": status},
    },
    names, names, st.integers(0, 65535), st.lists(names, max_size=3),
    st.sampled_from(["passing", "warning", "critical"]),
)
deregistrations = st.builds(lambda node, svc: {"Node": node, "ServiceID": svc} if svc else {"Node": node},
                            names, st.one_of(st.just(""), names))
operations = st.lists(st.one_of(registrations.map(reg), deregistrations.map(dereg)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_apply_twice_same_hash(ops):
    a, b = FSM(), FSM()
    for i, op in enumerate(ops):
        apply(a, i + 2, op)
        apply(b, i + 2, op)
    assert a.state_hash() == b.state_hash()


@settings(max_examples=60, deadline=None)
@given(operations)
def test_restore_of_snapshot_equals_state(ops):
    fsm = FSM()
    for i, op in enumerate(ops):
        apply(fsm, i + 2, op)
    restored = FSM.from_snapshot(fsm.snapshot())
    assert restored == fsm
    assert restored.state_hash() == fsm.state_hash()


@settings(max_examples=60, deadline=None)
@given(operations, st.integers(0, 30))
def test_snapshot_then_rest_of_log_equals_whole_log(ops, cut):
    whole = FSM()
    for i, op in enumerate(ops):
        apply(whole, i + 2, op)
    part = FSM()
    for i, op in enumerate(ops[:cut]):
        apply(part, i + 2, op)
    part = FSM.from_snapshot(part.snapshot())
    for i, op in enumerate(ops[cut:], start=cut):
        apply(part, i + 2, op)
    assert part.state_hash() == whole.state_hash()


@settings(max_examples=100, deadline=None)
@given(registrations, st.binary(max_size=16))
def test_codec_round_trip(body, rid):
    req = parse_register(body)
    cmd = decode(encode(MessageType.REGISTER, req, rid))
    assert cmd.type == MessageType.REGISTER and cmd.request_id == rid and cmd.body == req


def test_ca_serials_are_unique_within_one_batched_entry_and_across_entries():
    fsm = FSM()
    first = apply(fsm, 7, *(encode(MessageType.CA_SERIAL, None, uuid.uuid4().bytes) for _ in range(3)))
    second = apply(fsm, 8, encode(MessageType.CA_SERIAL, None, uuid.uuid4().bytes))
    serials = first + second
    assert len(set(serials)) == 4 and serials == sorted(serials)
    assert all(s // 65536 in (7, 8) for s in serials)  # derived from the Raft index


def test_ca_set_with_a_stale_cas_index_changes_nothing():
    fsm = FSM()
    state = {"roots": [{"ID": "r1"}], "active_root_id": "r1"}
    assert apply(fsm, 3, encode(MessageType.CA_SET, state, uuid.uuid4().bytes)) == [True]
    newer = {"roots": [{"ID": "r2"}], "active_root_id": "r2", "cas_index": 2}
    assert "changed meanwhile" in apply(fsm, 4, encode(MessageType.CA_SET, newer, uuid.uuid4().bytes))[0]["Error"]
    assert fsm.store.ca["active_root_id"] == "r1"
    ok = dict(newer, cas_index=3)
    assert apply(fsm, 5, encode(MessageType.CA_SET, ok, uuid.uuid4().bytes)) == [True]
    assert fsm.store.ca["active_root_id"] == "r2" and "cas_index" not in fsm.store.ca
