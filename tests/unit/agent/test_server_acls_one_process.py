"""The servers' own ACL checks, in one process: three real ServerRoles over the
in-memory Raft, called as a client agent's RPCs reach them (the `token` argument), so a
caller that skips the agent's HTTP checks gains nothing."""

from __future__ import annotations

import uuid

import pytest

from mesh.agent.reads import ReadOptions
from mesh.catalog.acl_state import ACLWrite, parse_policy, parse_token
from mesh.catalog.commands import MessageType, RegisterRequest, encode
from mesh.catalog.errors import PermissionDenied
from mesh.catalog.structs import Node, Service
from tests.harness.one_server import stop_servers, three_servers

MGMT = "aaaaaaaa-0000-4000-8000-000000000001"


def _raw(msg_type: MessageType, body) -> bytes:
    return encode(msg_type, body, uuid.uuid4().bytes)


@pytest.fixture
async def servers():
    cluster, roles = three_servers(acl_enabled=True, acl_default_policy="deny")
    leader = roles["s1"]
    await leader.apply_raw(_raw(MessageType.ACL, ACLWrite("bootstrap", {
        "accessor_id": str(uuid.uuid4()), "secret_id": MGMT, "description": "boot"})))  # anyone may bootstrap
    await leader.apply_raw(_raw(MessageType.REGISTER, RegisterRequest(
        Node("n1", "10.1.1.1"), Service(id="web", service="web"))), MGMT)
    yield roles
    await stop_servers(roles)


async def _token(role, rules: str) -> str:
    name = f"p{uuid.uuid4().hex[:8]}"
    await role.apply_raw(_raw(MessageType.ACL, ACLWrite("policy-set", parse_policy({"Name": name, "Rules": rules},
                                                                                  name))), MGMT)
    secret = str(uuid.uuid4())
    await role.apply_raw(_raw(MessageType.ACL, ACLWrite("token-create", parse_token(
        {"Policies": [{"Name": name}]}, str(uuid.uuid4()), secret))), MGMT)
    return secret


async def test_reads_on_any_server_show_what_the_token_may_read(servers) -> None:
    follower = servers["s2"]
    anonymous = await follower.read("catalog.services", {}, ReadOptions(stale=True), "")
    assert anonymous.value == {} and not anonymous.filtered  # never said to the anonymous token
    reader = await _token(servers["s1"], 'service "web" { policy = "read" }')
    seen = await follower.read("catalog.services", {}, ReadOptions(stale=True), reader)
    assert seen.value == {"web": []}
    narrow = await _token(servers["s1"], 'service "other" { policy = "read" }')
    hidden = await follower.read("catalog.services", {}, ReadOptions(stale=True), narrow)
    assert hidden.value == {} and hidden.filtered
    with pytest.raises(PermissionDenied, match="^ACL not found$"):  # (a follower would ask the leader first)
        await servers["s1"].read("catalog.services", {}, ReadOptions(stale=True),
                                 "bbbbbbbb-0000-4000-8000-000000000000")


async def test_writes_and_signing_are_checked_on_the_server(servers) -> None:
    leader = servers["s1"]
    web = await _token(leader, 'service "web" { policy = "write" }')
    other = _raw(MessageType.REGISTER, RegisterRequest(Node("n1", "10.1.1.1"), Service(id="db", service="db")))
    with pytest.raises(PermissionDenied, match="'service:write' on \"db\""):
        await leader.apply_raw(other, web)
    with pytest.raises(PermissionDenied, match="'service:write' on \"db\""):
        await leader.sign({"service": "db", "node": "n1", "csr": "not even a CSR", "token": web})
    with pytest.raises(PermissionDenied, match="'operator:write'"):
        await leader.ca_configure({"Provider": "consul"}, web)
    with pytest.raises(PermissionDenied, match="'node:write' on \"n9\""):
        await leader.heartbeat({"node": "n9", "address": "10.1.1.9", "token": web})
    # the same through the RPC handlers a client agent's calls reach
    rpc = leader.rpc._handlers  # noqa: SLF001 - the registered endpoint table
    with pytest.raises(PermissionDenied):
        await rpc["Catalog.Apply"]({"raw": other, "token": web})
    with pytest.raises(PermissionDenied):
        await rpc["Read"]({"q": "acl.tokens", "p": {}, "o": {"s": True}, "token": web})
    assert (await rpc["ACL.Resolve"]({"token": web}))["a"]


def test_every_named_read_has_an_acl_filter() -> None:
    """A read added to the table without saying what a token may see of it fails here
    (and reading it would fail: the server looks its filter up first)."""
    from mesh.agent.server.queries import QUERIES
    from mesh.catalog.acl_enforce import READ_FILTERS

    assert set(QUERIES) == set(READ_FILTERS)
