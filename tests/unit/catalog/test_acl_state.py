"""The ACL table through the state machine: bootstrap once, links by name resolved when
the write applies, builtins protected, expiry from the server's stamped time, identity
and role expansion, snapshots; and the write permissions of catalog.acl_enforce."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.acl_enforce import ALLOW_ALL, authorize_command, compile_access
from mesh.catalog.acl_state import (
    ANONYMOUS_ACCESSOR,
    MANAGEMENT_POLICY_ID,
    ACLWrite,
    parse_policy,
    parse_role,
    parse_token,
    resolve,
)
from mesh.catalog.commands import KVOp, KVRequest, MessageType, RegisterRequest, decode, encode
from mesh.catalog.errors import InvalidRequest, PermissionDenied
from mesh.catalog.fsm import FSM
from mesh.catalog.structs import Node, Service

NOW = 1_800_000_000.0


class World:
    def __init__(self) -> None:
        self.fsm = FSM()
        self.index = 0

    def acl(self, op: str, body: dict, now: float = NOW):
        self.index += 1
        return self.fsm.apply(self.index, encode(MessageType.ACL, ACLWrite(op, body, now)))

    def ok(self, op: str, body: dict, now: float = NOW):
        result = self.acl(op, body, now)
        assert not (isinstance(result, dict) and "Error" in result), result
        return result

    def policy(self, name: str, rules: str) -> str:
        return self.ok("policy-set", parse_policy({"Name": name, "Rules": rules}, f"id-{name}"))["ID"]

    def token(self, body: dict, accessor: str = "acc", secret: str = "sec", now: float = NOW) -> dict:
        return self.ok("token-create", parse_token(body, accessor, secret), now)


@pytest.fixture
def w() -> World:
    world = World()
    world.ok("bootstrap", {"accessor_id": "root", "secret_id": "root-secret", "description": "boot"})
    return world


def test_bootstrap_happens_once_and_creates_the_builtins(w: World) -> None:
    again = w.acl("bootstrap", {"accessor_id": "x", "secret_id": "y", "description": "again"})
    assert again == {"Error": "ACL bootstrap no longer allowed (reset index: 1)", "Forbidden": True}
    table = w.fsm.store.acl
    assert table.policies[MANAGEMENT_POLICY_ID].name == "global-management"
    assert ANONYMOUS_ACCESSOR in table.tokens
    assert resolve(table, "root-secret", NOW, "dc1").management
    assert resolve(table, "", NOW, "dc1").accessor_id == ANONYMOUS_ACCESSOR


def test_builtins_are_protected(w: World) -> None:
    assert "not permitted" in w.acl("policy-delete", {"id": MANAGEMENT_POLICY_ID})["Error"]
    assert "anonymous" in w.acl("token-delete", {"id": ANONYMOUS_ACCESSOR})["Error"]
    changed = parse_policy({"Name": "global-management", "Rules": 'key "" { policy = "read" }'}, MANAGEMENT_POLICY_ID)
    assert "not permitted" in w.acl("policy-set", changed)["Error"]


def test_links_by_name_resolve_when_the_write_applies_and_follow_renames(w: World) -> None:
    pid = w.policy("kv", 'key "a" { policy = "write" }')
    token = w.token({"Policies": [{"Name": "kv"}]})
    assert token["Policies"] == [{"ID": pid, "Name": "kv"}]
    w.ok("policy-set", parse_policy({"Name": "kv2", "Rules": 'key "a" { policy = "write" }'}, pid))
    assert w.fsm.store.acl.tokens["acc"].to_api(w.fsm.store.acl)["Policies"] == [{"ID": pid, "Name": "kv2"}]
    assert "cannot find policy nope" in w.acl("token-create", parse_token({"Policies": [{"Name": "nope"}]},
                                                                          "a2", "s2"))["Error"]
    assert "already exists" in w.acl("policy-set", parse_policy({"Name": "kv2"}, "other"))["Error"]


def test_an_update_keeps_the_secret_and_the_expiry(w: World) -> None:
    w.token({"Description": "a", "ExpirationTTL": "1h"})
    updated = w.ok("token-update", parse_token({"Description": "b"}, "acc", ""))
    assert updated["SecretID"] == "sec" and updated["Description"] == "b"
    assert w.fsm.store.acl.tokens["acc"].expiration_time == NOW + 3600
    assert "Cannot change expiration" in w.acl("token-update",
                                               parse_token({"ExpirationTTL": "2h"}, "acc", ""))["Error"]
    assert "Cannot find token" in w.acl("token-update", parse_token({}, "missing", ""))["Error"]


def test_expiry_comes_from_the_stamped_time(w: World) -> None:
    w.token({"ExpirationTTL": "10m"}, now=NOW)
    table = w.fsm.store.acl
    assert resolve(table, "sec", NOW + 599, "dc1") is not None
    assert resolve(table, "sec", NOW + 600, "dc1") is None
    with pytest.raises(InvalidRequest, match="less than 1m0s"):
        parse_token({"ExpirationTTL": "30s"}, "a", "s")
    past = parse_token({"ExpirationTime": "2020-01-01T00:00:00Z"}, "p", "ps")
    assert "in the past" in w.acl("token-create", past)["Error"]


def test_roles_and_identities_expand_and_datacenters_scope_them(w: World) -> None:
    pid = w.policy("svc", 'service "api" { policy = "write" }')
    w.ok("role-set", parse_role({"Name": "r", "Policies": [{"ID": pid}],
                                 "ServiceIdentities": [{"ServiceName": "db", "Datacenters": ["dc2"]}]}, "role1"))
    w.token({"Roles": [{"Name": "r"}], "ServiceIdentities": [{"ServiceName": "web"}],
             "NodeIdentities": [{"NodeName": "n1", "Datacenter": "dc1"}]})
    found = resolve(w.fsm.store.acl, "sec", NOW, "dc1")
    assert found is not None
    assert found.service_identities == ("web",) and found.node_identities == ("n1",)
    access = compile_access(found, "deny")
    assert access.can("service", "api", "write") and access.can("service", "web-sidecar-proxy", "write")
    assert not access.can("service", "db", "write")  # its identity is for dc2
    assert access.can("node", "n1", "write") and not access.can("node", "n2", "write")
    assert access.can("node", "n2", "read")  # a service identity reads every node


def test_snapshots_keep_the_acl_table(w: World) -> None:
    w.policy("kv", 'key "a" { policy = "write" }')
    w.ok("role-set", parse_role({"Name": "r", "NodeIdentities": [{"NodeName": "n", "Datacenter": "dc1"}]}, "r1"))
    w.token({"Policies": [{"Name": "kv"}], "Roles": [{"ID": "r1"}], "ExpirationTTL": "2h"})
    restored = FSM.from_snapshot(w.fsm.snapshot())
    assert restored.state_hash() == w.fsm.state_hash()
    assert restored.store.acl.token_by_secret("sec") == w.fsm.store.acl.token_by_secret("sec")
    assert restored.store.acl.bootstrap_index == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["policy", "token", "role", "delete-policy", "delete-token"]),
                          st.integers(0, 3)), max_size=25))
def test_every_replica_reaches_the_same_state(ops: list[tuple[str, int]]) -> None:
    """Any sequence of ACL writes, refused or not, applied to two state machines (one of
    them restored from a snapshot halfway) ends in the same state."""
    a, b = World(), World()
    for world in (a, b):
        world.acl("bootstrap", {"accessor_id": "root", "secret_id": "rs", "description": "x"})
    for i, (op, n) in enumerate(ops):
        if i == len(ops) // 2:
            b.fsm = FSM.from_snapshot(b.fsm.snapshot())
        if op == "policy":
            args = ("policy-set", parse_policy({"Name": f"p{n}", "Rules": f'key "{n}" {{ policy = "read" }}'}, f"p{n}"))
        elif op == "token":
            args = ("token-create", parse_token({"Policies": [{"Name": f"p{n}"}]}, f"t{i}", f"s{i}"))
        elif op == "role":
            args = ("role-set", parse_role({"Name": f"r{n}", "Policies": [{"ID": f"p{n}"}]}, f"r{n}"))
        elif op == "delete-policy":
            args = ("policy-delete", {"id": f"p{n}"})
        else:
            args = ("token-delete", {"id": f"t{n}"})
        assert a.acl(*args) == b.acl(*args)
    assert a.fsm.state_hash() == b.fsm.state_hash()


# ---- write permissions -------------------------------------------------------------
def _access(rules: str):
    world = World()
    world.acl("bootstrap", {"accessor_id": "root", "secret_id": "rs", "description": "x"})
    world.policy("p", rules)
    world.token({"Policies": [{"Name": "p"}]})
    return compile_access(resolve(world.fsm.store.acl, "sec", NOW, "dc1"), "deny"), world.fsm.store


def _cmd(msg_type: int, body) -> object:
    return decode(encode(msg_type, body))


def test_a_registration_needs_node_write_only_when_it_changes_the_node() -> None:
    access, store = _access('service "web" { policy = "write" }')
    req = RegisterRequest(node=Node("n1", "10.0.0.1"), service=Service(id="web", service="web"))
    with pytest.raises(PermissionDenied, match="lacks permission 'node:write' on \"n1\""):
        authorize_command(access, _cmd(MessageType.REGISTER, req), store)
    store.nodes["n1"] = Node("n1", "10.0.0.1")
    authorize_command(access, _cmd(MessageType.REGISTER, req), store)  # node unchanged: service:write is enough
    other = RegisterRequest(node=Node("n1", "10.0.0.1"), service=Service(id="db", service="db"))
    with pytest.raises(PermissionDenied, match="'service:write' on \"db\""):
        authorize_command(access, _cmd(MessageType.REGISTER, other), store)


def test_a_proxy_registration_needs_its_destination_too() -> None:
    access, store = _access('service "web-proxy" { policy = "write" } node "n1" { policy = "write" }')
    proxy = Service(id="p", service="web-proxy", kind="connect-proxy", proxy={"DestinationServiceName": "web"})
    with pytest.raises(PermissionDenied, match="'service:write' on \"web\""):
        authorize_command(access, _cmd(MessageType.REGISTER, RegisterRequest(Node("n1", "1.1.1.1"), proxy)), store)


def test_kv_writes_reads_and_recursive_deletes() -> None:
    access, store = _access('key_prefix "app/" { policy = "write" } key "app/locked" { policy = "read" }')
    ok = KVRequest((KVOp("set", "app/x", b"1"), KVOp("get", "app/locked")))
    authorize_command(access, _cmd(MessageType.TXN, ok), store)
    with pytest.raises(PermissionDenied, match="'key:write' on \"app/locked\""):
        authorize_command(access, _cmd(MessageType.KV_APPLY, KVRequest((KVOp("set", "app/locked"),))), store)
    with pytest.raises(PermissionDenied, match="'key:write' on \"app/\""):  # a read-only key beneath
        authorize_command(access, _cmd(MessageType.KV_APPLY, KVRequest((KVOp("delete-tree", "app/"),))), store)


def test_acl_writes_need_acl_write_but_anyone_may_try_the_bootstrap() -> None:
    access, store = _access('operator = "write"')
    with pytest.raises(PermissionDenied, match="'acl:write'"):
        authorize_command(access, _cmd(MessageType.ACL, ACLWrite("token-delete", {"id": "x"})), store)
    authorize_command(access, _cmd(MessageType.ACL, ACLWrite("bootstrap", {})), store)
    authorize_command(ALLOW_ALL, _cmd(MessageType.ACL, ACLWrite("token-delete", {"id": "x"})), store)


def test_the_servers_own_commands_are_refused_to_every_token() -> None:
    access, store = _access('operator = "write" acl = "write"')
    with pytest.raises(PermissionDenied, match="servers' own"):
        authorize_command(access, _cmd(MessageType.SERVER_REMOVE, "10.0.0.1:8301"), store)
