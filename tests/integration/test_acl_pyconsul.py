"""py-consul's whole ACL surface (consul/api/acl/: bootstrap, token, policy, role)
against one real dev agent with ACLs on and default deny, every method and parameter it
has for them, and the tokens it makes then used through py-consul's other APIs.

Not in mesh, so not here: login/logout, auth methods, binding rules and the templated
policy catalog (py-consul's auth_method.py, binding_rule.py, templated_policy.py)."""

from __future__ import annotations

import uuid

import consul
import pytest

from tests.harness.cluster import dev_agent, retry

SECRET = str(uuid.uuid4())


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aclpy")
    conf = tmp / "acl.hcl"
    conf.write_text('acl {\n  enabled = true\n  default_policy = "deny"\n}\n')
    agent = dev_agent(tmp, extra=["-config-file", str(conf), "-supervise-proxies=false"])
    try:
        host, port = agent.http.split(":")
        retry(lambda: consul.Consul(host=host, port=int(port)).status.leader(), 15, 0.05, "leader")
        yield consul.Consul(host=host, port=int(port)), host, int(port)
    finally:
        agent.kill()


def test_bootstrap_with_a_chosen_secret_then_never_again(dev) -> None:
    c, _, _ = dev
    token = c.acl.bootstrap(bootstrap_secret=SECRET)
    assert token["SecretID"] == SECRET
    assert token["Description"] == "Bootstrap Token (Global Management)"
    assert token["Policies"] == [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
    with pytest.raises(consul.ACLPermissionDenied, match=r"ACL bootstrap no longer allowed \(reset index: \d+\)"):
        c.acl.bootstrap()


@pytest.fixture(scope="module")
def admin(dev):
    c, host, port = dev
    try:
        c.acl.bootstrap(bootstrap_secret=SECRET)
    except consul.ACLPermissionDenied:
        pass  # the test above ran first
    return consul.Consul(host=host, port=port, token=SECRET)


def test_policies(admin) -> None:
    rules = {"key_prefix": {"app/": {"policy": "read"}}}  # py-consul sends rules as JSON text
    created = admin.acl.policy.create("app-read", description="app keys", rules=rules)
    assert created["Name"] == "app-read" and created["Description"] == "app keys"
    assert admin.acl.policy.read(created["ID"])["Rules"] == created["Rules"]
    assert "app-read" in [p["Name"] for p in admin.acl.policy.list()]
    assert all("Rules" not in p for p in admin.acl.policy.list())  # list stubs, as Consul's
    updated = admin.acl.policy.update(created["ID"], "app-read2", description="renamed",
                                      rules={"key_prefix": {"app/": {"policy": "write"}}})
    assert (updated["Name"], updated["ModifyIndex"] > created["ModifyIndex"]) == ("app-read2", True)
    with pytest.raises(consul.ConsulException, match="Failed to parse ACL rules"):
        admin.acl.policy.create("bad", rules={"key_prefix": {"x": {"policy": "sometimes"}}})
    assert admin.acl.policy.delete(created["ID"]) is True
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        admin.acl.policy.read(created["ID"])


def test_roles(admin) -> None:
    policy = admin.acl.policy.create("role-pol", rules={"service": {"web": {"policy": "read"}}})
    role = admin.acl.role.create("web-role", description="for web", policies_id=[policy["ID"]],
                                 service_identities=[{"ServiceName": "api"}],
                                 node_identities=[{"NodeName": "n1", "Datacenter": "dc1"}])
    assert role["Policies"] == [{"ID": policy["ID"], "Name": "role-pol"}]
    assert role["ServiceIdentities"] == [{"ServiceName": "api"}]
    assert role["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    by_name = admin.acl.role.create("web-role2", policies_name=["role-pol"],
                                    templated_policies=[{"builtin/service": {"Name": "db"}}])
    assert by_name["Policies"] == [{"ID": policy["ID"], "Name": "role-pol"}]
    assert by_name["ServiceIdentities"] == [{"ServiceName": "db"}]
    assert admin.acl.role.read(role["ID"])["Name"] == "web-role"
    assert admin.acl.role.read_by_name("web-role2")["ID"] == by_name["ID"]
    assert {r["Name"] for r in admin.acl.role.list(policy=policy["ID"])} == {"web-role", "web-role2"}
    updated = admin.acl.role.update(role["ID"], "web-role", description="changed", policies_name=["role-pol"])
    # an update replaces the role: the identities not sent again are gone
    assert updated["Description"] == "changed" and updated.get("ServiceIdentities") is None
    assert updated["Policies"] == [{"ID": policy["ID"], "Name": "role-pol"}]
    assert admin.acl.role.delete(by_name["ID"]) is True
    with pytest.raises(consul.ACLPermissionDenied):
        admin.acl.role.read_by_name("web-role2")


def test_tokens_and_what_they_may_do(admin, dev) -> None:
    _, host, port = dev
    writer = admin.acl.policy.create("kv-app", rules={"key_prefix": {"app/": {"policy": "write"}}})
    role = admin.acl.role.create("reader-role", policies_name=["kv-app"])
    accessor, secret = str(uuid.uuid4()), str(uuid.uuid4())
    token = admin.acl.token.create(accessor_id=accessor, secret_id=secret, description="app",
                                   policies_id=[writer["ID"]], roles_name=["reader-role"],
                                   node_identities=["n1:dc1"], service_identities=[{"ServiceName": "web"}],
                                   expiration_ttl="1h", local=True)
    assert (token["AccessorID"], token["SecretID"], token["Local"]) == (accessor, secret, True)
    assert token["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    assert token["ExpirationTTL"] == "1h0m0s" and token["ExpirationTime"] > token["CreateTime"]
    other = admin.acl.token.create(policies_name=["kv-app"], roles_id=[role["ID"]],
                                   templated_policies=[{"builtin/node": {"Name": "n2"}}],
                                   expiration_time="2099-01-01T00:00:00Z")
    assert other["ExpirationTime"].startswith("2099-01-01T00:00:00")
    assert admin.acl.token.read(accessor)["Description"] == "app"
    assert admin.acl.token.read_self(token=secret)["AccessorID"] == accessor
    listed = {t["AccessorID"] for t in admin.acl.token.list()}
    assert {accessor, other["AccessorID"], "00000000-0000-0000-0000-000000000002"} <= listed
    assert {t["AccessorID"] for t in admin.acl.token.list(policy=writer["ID"])} == {accessor, other["AccessorID"]}
    assert {t["AccessorID"] for t in admin.acl.token.list(role=role["ID"])} == {accessor, other["AccessorID"]}
    assert [t["AccessorID"] for t in admin.acl.token.list(servicename="web")] == [accessor]
    assert admin.acl.token.list(authmethod="none") == []
    clone = admin.acl.token.clone(accessor, description="copy")
    assert clone["Description"] == "copy" and clone["SecretID"] != secret
    assert clone["Policies"] == token["Policies"]
    updated = admin.acl.token.update(accessor, description="app v2", policies_name=["kv-app"])
    assert updated["Description"] == "app v2" and updated["SecretID"] == secret

    # the token at work through py-consul's other APIs
    app = consul.Consul(host=host, port=port, token=secret)
    assert app.kv.put("app/x", "1") is True
    with pytest.raises(consul.ACLPermissionDenied, match="lacks permission 'key:write' on \"other\""):
        app.kv.put("other", "1")
    with pytest.raises(consul.ACLPermissionDenied, match="acl:write"):
        app.acl.token.create(description="not allowed")
    assert admin.acl.token.delete(clone["AccessorID"]) is True
    with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
        consul.Consul(host=host, port=port, token=clone["SecretID"]).kv.get("app/x")
    with pytest.raises(consul.ConsulException, match="anonymous"):
        admin.acl.token.delete("00000000-0000-0000-0000-000000000002")
