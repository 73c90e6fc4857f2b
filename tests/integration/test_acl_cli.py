"""`mesh acl` against one real dev agent with ACLs on (default deny, a known initial
management token): every subcommand and flag through the CLI's main in this process
(tests/harness/cli.py), Consul's output formats, messages and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request

import pytest

from tests.harness.cli import run_cli
from tests.harness.cluster import dev_agent, retry

MGMT = "5e1e3bd6-7c2a-4b4f-9f60-3c4b0e6b2a11"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RULES = 'key_prefix "app/" {\n  policy = "read"\n}\n'


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aclcli")
    conf = tmp / "acl.hcl"
    conf.write_text('acl {\n  enabled = true\n  default_policy = "deny"\n'
                    f'  tokens {{\n    initial_management = "{MGMT}"\n  }}\n}}\n')
    agent = dev_agent(tmp, extra=["-config-file", str(conf), "-supervise-proxies=false"])

    def self_ok() -> bool:
        req = urllib.request.Request(f"http://{agent.http}/v1/acl/token/self", headers={"X-Consul-Token": MGMT})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200

    try:
        # asked too early, the agent caches "ACL not found" for acl.token_ttl (30 s):
        # wait for the leader to have created the token before the first question
        retry(lambda: "acl_initial_management_created" in agent.log_tail(400), 15, 0.05, "management token")
        retry(self_ok, 5, 0.05, "initial management token")
        yield agent
    finally:
        agent.kill()


def acl(dev, *args: str, token: str = MGMT, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mesh acl ARGS` with the agent's address and `token` from Consul's variables."""
    return run_cli(["acl", *args], {"CONSUL_HTTP_ADDR": dev.http, "CONSUL_HTTP_TOKEN": token}, stdin)


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stderr == ""
    return out.stdout


def fails(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert out.stdout == ""
    line = out.stderr
    assert line.endswith("\n") and "\n" not in line[:-1] and "Traceback" not in line, line
    return line.strip()


def field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in {text!r}")


def as_json(out: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(ok(out))


def test_policies(dev, tmp_path):
    rules_file = tmp_path / "rules.hcl"
    rules_file.write_text(RULES)
    out = ok(acl(dev, "policy", "create", "-name", "app-read", "-description", "app keys",
                 "-rules", f"@{rules_file}", "-valid-datacenter", "dc1", "-valid-datacenter", "dc2"))
    pid = field(out, "ID")
    assert UUID.match(pid)
    assert out == (f"ID:           {pid}\nName:         app-read\nDescription:  app keys\n"
                   f"Datacenters:  dc1, dc2\nRules:\n{RULES}\n")
    # from stdin, JSON output with Consul's fields
    body = as_json(acl(dev, "policy", "create", "-name", "svc-write", "-rules", "-", "-format=json",
                       stdin='service_prefix "" { policy = "write" }'))
    assert body["Name"] == "svc-write" and body["Rules"] == 'service_prefix "" { policy = "write" }'
    assert {"ID", "Description", "Hash", "CreateIndex", "ModifyIndex"} <= set(body)

    by_id = ok(acl(dev, "policy", "read", "-id", pid))
    assert by_id == out
    assert ok(acl(dev, "policy", "read", "-id", pid[:8])) == out  # a unique prefix will do
    assert ok(acl(dev, "policy", "read", "-name", "app-read")) == out
    assert as_json(acl(dev, "policy", "read", "-name", "app-read", "-format", "json"))["ID"] == pid

    # update merges: -id with -name renames, rules and description kept
    upd = ok(acl(dev, "policy", "update", "-id", pid, "-name", "app-read2"))
    assert field(upd, "Name") == "app-read2" and field(upd, "Description") == "app keys" and upd.endswith(RULES + "\n")
    upd = ok(acl(dev, "policy", "update", "-name", "app-read2", "-description", "new", "-rules", 'node "" { policy = "read" }'))
    assert field(upd, "Description") == "new" and 'node ""' in upd and field(upd, "Datacenters") == "dc1, dc2"
    ok(acl(dev, "policy", "update", "-id", pid, "-name", "app-read", "-rules", f"@{rules_file}", "-no-merge"))
    assert field(ok(acl(dev, "policy", "read", "-id", pid)), "Datacenters") == ""

    listing = ok(acl(dev, "policy", "list"))
    assert f"app-read:\n   ID:           {pid}\n   Description:  \n   Datacenters:  \n" in listing
    assert "global-management:" in listing
    names = {p["Name"] for p in json.loads(ok(acl(dev, "policy", "list", "-format=json")))}
    assert {"app-read", "svc-write", "global-management"} <= names

    assert fails(acl(dev, "policy", "read", "-name", "nope")).startswith(
        "Error determining policy ID: Failed to find policy with name nope: Unexpected response code: 403")
    assert fails(acl(dev, "policy", "read", "-id", "ffffffff")) == \
        "Error determining policy ID: No such policy ID with prefix: ffffffff"
    assert fails(acl(dev, "policy", "read")) == "Must specify either the -id or -name parameters"
    assert fails(acl(dev, "policy", "create", "-rules", "x")) == "Missing required '-name' flag"
    bad = fails(acl(dev, "policy", "create", "-name", "bad", "-rules", "key_prefix {"))
    assert bad.startswith("Failed to create new policy: Unexpected response code: 400 (")

    tmp = as_json(acl(dev, "policy", "create", "-name", "doomed", "-format=json"))
    assert ok(acl(dev, "policy", "delete", "-name", "doomed")) == f'Policy "{tmp["ID"]}" deleted successfully\n'
    tmp = as_json(acl(dev, "policy", "create", "-name", "doomed2", "-format=json"))
    assert ok(acl(dev, "policy", "delete", "-id", tmp["ID"])) == f'Policy "{tmp["ID"]}" deleted successfully\n'


def _policy(dev, name: str, rules: str) -> str:
    out = acl(dev, "policy", "read", "-name", name, "-format=json")
    if out.returncode == 0:
        return json.loads(out.stdout)["ID"]
    return as_json(acl(dev, "policy", "create", "-name", name, "-rules", rules, "-format=json"))["ID"]


def test_roles(dev):
    pid = _policy(dev, "role-pol", 'node_prefix "" { policy = "read" }')
    out = ok(acl(dev, "role", "create", "-name", "web-role", "-description", "for web", "-policy-id", pid,
                 "-service-identity", "web:dc1,dc2", "-node-identity", "n1:dc1"))
    rid = field(out, "ID")
    assert out == (f"ID:           {rid}\nName:         web-role\nDescription:  for web\nPolicies:\n"
                   f"   {pid} - role-pol\nService Identities:\n   web (Datacenters: dc1, dc2)\n"
                   f"Node Identities:\n   n1 (Datacenter: dc1)\n\n")
    assert ok(acl(dev, "role", "read", "-id", rid)) == out
    assert ok(acl(dev, "role", "read", "-name", "web-role")) == out
    body = as_json(acl(dev, "role", "read", "-id", rid[:10], "-format=json"))
    assert body["Policies"] == [{"ID": pid, "Name": "role-pol"}]

    upd = ok(acl(dev, "role", "update", "-id", rid, "-description", "changed", "-service-identity", "api"))
    assert field(upd, "Description") == "changed" and "   api (Datacenters: all)" in upd and "   web (" in upd
    upd = ok(acl(dev, "role", "update", "-id", rid, "-name", "web-role", "-policy-name", "role-pol", "-no-merge"))
    assert "Service Identities" not in upd and f"   {pid} - role-pol" in upd

    listing = ok(acl(dev, "role", "list"))
    assert f"web-role:\n   ID:           {rid}\n   Description:  \n   Policies:\n      {pid} - role-pol\n" in listing
    assert [r["Name"] for r in json.loads(ok(acl(dev, "role", "list", "-format=json")))] == ["web-role"]

    assert fails(acl(dev, "role", "read", "-name", "nope")) == "Error determining role ID: No such role with name nope"
    assert fails(acl(dev, "role", "create", "-name", "x")).startswith("Cannot create a role without specifying")
    tmp = as_json(acl(dev, "role", "create", "-name", "doomed", "-service-identity", "x", "-format=json"))
    assert ok(acl(dev, "role", "delete", "-name", "doomed")) == f'Role "{tmp["ID"]}" deleted successfully\n'


def test_tokens(dev):
    pid = _policy(dev, "tok-pol", 'key_prefix "t/" { policy = "read" }')
    pid2 = _policy(dev, "tok-pol2", 'key_prefix "u/" { policy = "read" }')
    role = acl(dev, "role", "read", "-name", "tok-role", "-format=json")
    rid = json.loads(role.stdout)["ID"] if role.returncode == 0 else \
        as_json(acl(dev, "role", "create", "-name", "tok-role", "-policy-name", "tok-pol", "-format=json"))["ID"]

    out = ok(acl(dev, "token", "create", "-description", "ci token", "-policy-name", "tok-pol",
                 "-role-id", rid, "-service-identity", "web", "-service-identity", "db:dc1,dc2",
                 "-node-identity", "node1:dc1", "-expires-ttl", "10m"))
    accessor, secret = field(out, "AccessorID"), field(out, "SecretID")
    assert UUID.match(accessor) and UUID.match(secret)
    lines = out.splitlines()
    assert lines[2:4] == ["Description:      ci token", "Local:            false"]
    assert re.match(r"^Create Time:      \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC$", lines[4])
    assert lines[5].startswith("Expiration Time:  ")
    assert lines[6:] == ["Policies:", f"   {pid} - tok-pol", "Roles:", f"   {rid} - tok-role",
                         "Service Identities:", "   web (Datacenters: all)", "   db (Datacenters: dc1, dc2)",
                         "Node Identities:", "   node1 (Datacenter: dc1)", ""]

    # chosen IDs, -local, policy by ID (prefix), JSON
    acc2, sec2 = "0d7e6a3c-1c52-4c7b-8a4e-2f0e1d9c7b61", "6b1f0a9e-3d2c-4e5f-9a8b-7c6d5e4f3a21"
    body = as_json(acl(dev, "token", "create", "-policy-id", pid[:8], "-local", "-accessor", acc2,
                       "-secret", sec2, "-format=json"))
    assert body["AccessorID"] == acc2 and body["SecretID"] == sec2 and body["Local"] is True
    assert body["Policies"] == [{"ID": pid, "Name": "tok-pol"}]
    assert {"CreateTime", "Hash", "CreateIndex", "ModifyIndex", "Description"} <= set(body)

    # read: by ID, by prefix, -accessor-id, -self with the token's own secret
    assert ok(acl(dev, "token", "read", "-id", accessor)) == out
    assert ok(acl(dev, "token", "read", "-id", accessor[:9])) == out
    assert ok(acl(dev, "token", "read", "-accessor-id", accessor)) == out
    selfread = ok(acl(dev, "token", "read", "-self", token=sec2))
    assert field(selfread, "AccessorID") == acc2
    assert as_json(acl(dev, "token", "read", "-self", "-format=json"))["SecretID"] == MGMT

    # update: -policy-* replace without -merge-policies, add with it; description kept when not given
    upd = ok(acl(dev, "token", "update", "-id", acc2, "-policy-name", "tok-pol2", "-description", "changed"))
    assert "Policies:\n   " + pid2 + " - tok-pol2\n" in upd and pid not in upd
    upd = ok(acl(dev, "token", "update", "-id", acc2, "-policy-id", pid, "-merge-policies"))
    assert f"   {pid2} - tok-pol2\n   {pid} - tok-pol\n" in upd and field(upd, "Description") == "changed"
    assert field(upd, "SecretID") == sec2
    upd = ok(acl(dev, "token", "update", "-id", acc2, "-role-name", "tok-role", "-service-identity", "api",
                 "-node-identity", "n2:dc1"))
    assert f"Roles:\n   {rid} - tok-role\n" in upd and "   api (Datacenters: all)" in upd
    upd = ok(acl(dev, "token", "update", "-id", acc2, "-service-identity", "web", "-merge-service-identities",
                 "-node-identity", "n3:dc1", "-merge-node-identities", "-merge-roles", "-role-id", rid))
    assert "   api (Datacenters: all)\n   web (Datacenters: all)" in upd
    assert "   n2 (Datacenter: dc1)\n   n3 (Datacenter: dc1)" in upd and upd.count(rid) == 1
    # the expiring token keeps its expiration through an update
    upd = ok(acl(dev, "token", "update", "-id", accessor, "-description", "still ci"))
    assert field(upd, "Expiration Time") == field(out, "Expiration Time")

    clone = ok(acl(dev, "token", "clone", "-id", acc2, "-description", "a copy"))
    cacc = field(clone, "AccessorID")
    assert cacc != acc2 and field(clone, "Description") == "a copy" and f"   {pid} - tok-pol" in clone

    listing = ok(acl(dev, "token", "list"))
    assert f"AccessorID:       {acc2}\n" in listing and f"AccessorID:       {cacc}\n" in listing
    assert "Legacy:           false" in listing and "\n\nAccessorID:" in listing
    listed = json.loads(ok(acl(dev, "token", "list", "-format=json")))
    assert {acc2, cacc, accessor} <= {t["AccessorID"] for t in listed}

    assert ok(acl(dev, "token", "delete", "-id", cacc)) == f'Token "{cacc}" deleted successfully\n'
    assert fails(acl(dev, "token", "read", "-id", cacc)) == \
        f'Error reading token "{cacc}": Unexpected response code: 403 (ACL not found)'
    assert fails(acl(dev, "token", "read", "-id", "zzzz")) == "Error determining token ID: No such token ID with prefix: zzzz"
    assert fails(acl(dev, "token", "read")) == "Must specify the -id parameter"
    assert fails(acl(dev, "token", "delete")) == "Must specify the -id parameter"
    assert fails(acl(dev, "token", "create", "-description", "x")).startswith(
        "Cannot create a token without specifying -policy-name")
    assert fails(acl(dev, "token", "create", "-policy-name", "tok-pol", "-expires-ttl", "soon")) == \
        'invalid value "soon" for flag -expires-ttl: parse error'
    assert fails(acl(dev, "token", "create", "-node-identity", "nodc")) == 'Malformed -node-identity argument: "nodc"'
    assert fails(acl(dev, "token", "create", "-policy-name", "no-such-policy")).startswith(
        "Failed to create new token: Unexpected response code: ")
    assert fails(acl(dev, "token", "list", "-format", "yaml")) == "Unknown format: yaml"
    assert fails(acl(dev, "token", "update", "-id", acc2, "-policy-name", "a", "-append-policy-name", "b")) \
        .startswith("Cannot combine the use of policy-id/policy-name flags with append- variants.")


def test_permission_denied_and_bootstrap(dev):
    pid = _policy(dev, "acl-read", 'acl = "read"')
    reader = as_json(acl(dev, "token", "create", "-policy-id", pid, "-format=json"))["SecretID"]
    assert ok(acl(dev, "policy", "list", token=reader))  # read is enough to list
    denied = fails(acl(dev, "token", "create", "-policy-name", "acl-read", token=reader))
    assert denied.startswith("Failed to create new token: Unexpected response code: 403 (Permission denied")
    assert fails(acl(dev, "token", "list", token="00000000-0000-0000-0000-00000000dead")) == \
        "Failed to retrieve the token list: Unexpected response code: 403 (ACL not found)"

    first = acl(dev, "bootstrap", "-format=json")
    if first.returncode == 0:  # the initial management token need not have used up the bootstrap
        assert UUID.match(json.loads(first.stdout)["SecretID"])
    again = fails(acl(dev, "bootstrap"))
    assert re.match(r"^Failed ACL bootstrapping: Unexpected response code: 403 "
                    r"\(ACL bootstrap no longer allowed \(reset index: \d+\)\)$", again), again


def test_set_agent_token(dev):
    assert ok(acl(dev, "set-agent-token", "agent", MGMT)) == 'ACL token "agent" set successfully\n'
    assert ok(acl(dev, "set-agent-token", "default", "-", stdin=MGMT + "\n")) == \
        'ACL token "default" set successfully\n'
    assert ok(acl(dev, "set-agent-token", "recovery", MGMT)) == 'ACL token "recovery" set successfully\n'
    assert fails(acl(dev, "set-agent-token", "agent")) == "Error! Missing TOKEN argument"
    assert fails(acl(dev, "set-agent-token", "bogus", "x")) == "Unknown token type"
    denied = fails(acl(dev, "set-agent-token", "agent", MGMT, token="00000000-0000-0000-0000-00000000dead"))
    assert denied.startswith('Failed to set ACL token "agent": Unexpected response code: 403')
