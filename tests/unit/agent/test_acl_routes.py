"""Every HTTP route under ACLs (default deny): no token, a token without the right, and a
token with exactly the right, each gets what it should.

The table below names a case for every route of the app; a route added without a case
here (or without a rule in agent/http/permissions.py) fails `test_every_route_has_a_case`,
so no endpoint reaches users unguarded. One server agent in this process over the
in-memory Raft: the real handlers, backend, server role and FSM.

Each case is one of:
- deny: 403 without the right (Consul's texts), anything but 403 with it;
- filter: 200 either way; the row shows only with the right (and the filtered header
  says so for the token without it);
- open: answered without any token.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from mesh.agent.http.permissions import ROUTES, template
from tests.harness.one_server import one_server

MGMT = "11111111-1111-1111-1111-111111111111"
_NAMES = itertools.count()
LOCAL_RULES = 'service "lweb" { policy = "read" }'


@dataclass
class Case:
    method: str
    route: str  # the app's path template, as permissions.ROUTES keys it
    path: str  # the concrete request
    rules: str = ""  # the exact right ("" for open routes)
    kind: str = "deny"  # deny | filter | open | fixed
    body: Any = None
    sees: Any = None  # filter: a predicate over the parsed JSON body
    status: int = 0  # fixed: the status every token gets
    raw: bool = False  # body sent as bytes as is

    def kwargs(self, token: str | None) -> dict[str, Any]:
        out: dict[str, Any] = {"headers": {"X-Consul-Token": token} if token else {}}
        if self.body is not None:
            out["data" if self.raw else "json"] = self.body
        return out


def _has(key: str) -> Any:
    return lambda body: isinstance(body, dict) and key in body


def _rows_with(field_name: str, value: str) -> Any:
    return lambda body: any(isinstance(r, dict) and r.get(field_name) == value for r in body or [])


NODE_N1 = 'node "n1" { policy = "read" }'
WEB_READ = 'service "web" { policy = "read" } ' + NODE_N1


@dataclass
class World:
    intention_id: str = ""
    spare_intention_id: str = ""
    session_id: str = ""
    spare_session_id: str = ""
    token_id: str = ""
    spare_token_id: str = ""
    policy_id: str = ""
    spare_policy_id: str = ""
    role_id: str = ""
    spare_role_id: str = ""
    calls: list[str] = field(default_factory=list)


def cases(w: World) -> list[Case]:
    sid_rules = 'session "n1" { policy = "write" }'
    return [
        # ---- this agent ----------------------------------------------------------------
        Case("GET", "/v1/agent/services", "/v1/agent/services", LOCAL_RULES, "filter", sees=_has("lweb")),
        Case("GET", "/v1/agent/service/{id}", "/v1/agent/service/lweb", LOCAL_RULES),
        Case("PUT", "/v1/agent/service/register", "/v1/agent/service/register",
             'service "lweb2" { policy = "write" }', body={"Name": "lweb2"}),
        Case("PUT", "/v1/agent/service/deregister/{id}", "/v1/agent/service/deregister/lweb3",
             'service "lweb3" { policy = "write" }'),
        Case("PUT", "/v1/agent/service/maintenance/{id}", "/v1/agent/service/maintenance/lweb?enable=false",
             'service "lweb" { policy = "write" }'),
        Case("PUT", "/v1/agent/maintenance", "/v1/agent/maintenance?enable=false", 'node "s1" { policy = "write" }'),
        Case("GET", "/v1/agent/checks", "/v1/agent/checks", LOCAL_RULES, "filter", sees=_has("lweb-ttl")),
        Case("PUT", "/v1/agent/check/register", "/v1/agent/check/register", 'node "s1" { policy = "write" }',
             body={"Name": "n-check", "TTL": "30s"}),
        Case("PUT", "/v1/agent/check/deregister/{id}", "/v1/agent/check/deregister/n-check2",
             'node "s1" { policy = "write" }'),
        *[Case("PUT", f"/v1/agent/check/{verb}/{{id}}", f"/v1/agent/check/{verb}/lweb-ttl",
               'service "lweb" { policy = "write" }') for verb in ("pass", "warn", "fail")],
        Case("PUT", "/v1/agent/check/update/{id}", "/v1/agent/check/update/lweb-ttl",
             'service "lweb" { policy = "write" }', body={"Status": "passing"}),
        Case("GET", "/v1/agent/health/service/name/{name}", "/v1/agent/health/service/name/lweb", LOCAL_RULES),
        Case("GET", "/v1/agent/health/service/id/{id}", "/v1/agent/health/service/id/lweb", LOCAL_RULES),
        Case("PUT", "/v1/agent/join/{address}", "/v1/agent/join/127.0.0.1", 'agent "s1" { policy = "write" }'),
        Case("PUT", "/v1/agent/reload", "/v1/agent/reload", 'agent "s1" { policy = "write" }'),
        Case("PUT", "/v1/agent/leave", "/v1/agent/leave", 'agent "s1" { policy = "write" }'),
        Case("GET", "/v1/agent/self", "/v1/agent/self", 'agent "s1" { policy = "read" }'),
        Case("GET", "/v1/agent/members", "/v1/agent/members", 'node "s1" { policy = "read" }', "filter",
             sees=_rows_with("Name", "s1")),
        Case("GET", "/v1/agent/metrics", "/v1/agent/metrics", 'agent "s1" { policy = "read" }'),
        Case("GET", "/v1/agent/version", "/v1/agent/version", kind="open"),
        Case("PUT", "/v1/agent/token/{kind}", "/v1/agent/token/agent", 'acl = "write"', body={"Token": MGMT}),
        Case("GET", "/v1/agent/connect/ca/roots", "/v1/agent/connect/ca/roots", kind="open"),
        Case("GET", "/v1/agent/connect/ca/leaf/{service}", "/v1/agent/connect/ca/leaf/lweb",
             'service "lweb" { policy = "write" }'),
        *[Case(method, "/v1/agent/connect/authorize", "/v1/agent/connect/authorize",
               'service "lweb" { policy = "write" }',
               body={"Target": "lweb", "ClientCertURI": "spiffe://11111111.consul/ns/default/dc/dc1/svc/web"})
          for method in ("PUT", "POST")],
        Case("GET", "/v1/agent/mesh/leaves", "/v1/agent/mesh/leaves", 'agent "s1" { policy = "read" }'),
        Case("GET", "/v1/agent/mesh/proxies", "/v1/agent/mesh/proxies", 'agent "s1" { policy = "read" }'),
        Case("PUT", "/v1/agent/mesh/proxies/{id}/ready", "/v1/agent/mesh/proxies/lweb/ready",
             'service "lweb" { policy = "write" }', body={}),
        # ---- catalog and health ---------------------------------------------------------
        Case("PUT", "/v1/catalog/register", "/v1/catalog/register",
             'node "n2" { policy = "write" } service "db" { policy = "write" }',
             body={"Node": "n2", "Address": "10.1.1.2", "Service": {"Service": "db"}}),
        Case("PUT", "/v1/catalog/deregister", "/v1/catalog/deregister", 'service "db" { policy = "write" }',
             body={"Node": "n2", "ServiceID": "db"}),
        Case("GET", "/v1/catalog/datacenters", "/v1/catalog/datacenters", kind="open"),
        Case("GET", "/v1/catalog/nodes", "/v1/catalog/nodes", NODE_N1, "filter", sees=_rows_with("Node", "n1")),
        Case("GET", "/v1/catalog/services", "/v1/catalog/services", 'service "web" { policy = "read" }', "filter",
             sees=_has("web")),
        Case("GET", "/v1/catalog/service/{name}", "/v1/catalog/service/web", WEB_READ, "filter",
             sees=_rows_with("ServiceName", "web")),
        Case("GET", "/v1/catalog/node/{node}", "/v1/catalog/node/n1", NODE_N1, "filter",
             sees=lambda body: isinstance(body, dict) and body["Node"]["Node"] == "n1"),
        Case("GET", "/v1/catalog/node-services/{node}", "/v1/catalog/node-services/n1", NODE_N1, "fixed-right",
             status=404),
        Case("GET", "/v1/health/node/{node}", "/v1/health/node/n1", NODE_N1, "filter",
             sees=_rows_with("CheckID", "n1-node")),
        Case("GET", "/v1/health/checks/{service}", "/v1/health/checks/web", WEB_READ, "filter",
             sees=_rows_with("CheckID", "web-check")),
        Case("GET", "/v1/health/service/{service}", "/v1/health/service/web", WEB_READ, "filter",
             sees=lambda body: bool(body) and body[0]["Service"]["Service"] == "web"),
        Case("GET", "/v1/health/connect/{service}", "/v1/health/connect/web",
             'service_prefix "web" { policy = "read" } ' + NODE_N1, "filter",
             sees=lambda body: bool(body) and body[0]["Service"]["Service"] == "web-sidecar-proxy"),
        Case("GET", "/v1/health/state/{state}", "/v1/health/state/any", NODE_N1, "filter",
             sees=_rows_with("CheckID", "n1-node")),
        # ---- config entries and discovery chains ---------------------------------------
        Case("PUT", "/v1/config", "/v1/config", 'service "web" { policy = "write" }',
             body={"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}),
        Case("GET", "/v1/config/{kind}", "/v1/config/service-defaults", 'service "web2" { policy = "read" }',
             "filter", sees=_rows_with("Name", "web2")),
        Case("GET", "/v1/config/{kind}/{name}", "/v1/config/service-defaults/web2",
             'service "web2" { policy = "read" }'),
        Case("DELETE", "/v1/config/{kind}/{name}", "/v1/config/service-defaults/web2",
             'service "web2" { policy = "write" }'),
        *[Case(method, "/v1/discovery-chain/{service}", "/v1/discovery-chain/web", 'service "web" { policy = "read" }',
               body={} if method == "POST" else None) for method in ("GET", "POST")],
        # ---- Connect CA and intentions ----------------------------------------------------
        Case("GET", "/v1/connect/ca/roots", "/v1/connect/ca/roots", kind="open"),
        Case("GET", "/v1/connect/ca/configuration", "/v1/connect/ca/configuration", 'operator = "read"'),
        Case("PUT", "/v1/connect/ca/configuration", "/v1/connect/ca/configuration", 'operator = "write"',
             body={"Provider": "bogus"}),
        Case("GET", "/v1/connect/intentions", "/v1/connect/intentions", 'service "api" { policy = "read" }',
             "filter", sees=_rows_with("DestinationName", "api")),
        Case("POST", "/v1/connect/intentions", "/v1/connect/intentions",
             'service "b" { policy = "read"  intentions = "write" }',
             body={"SourceName": "a", "DestinationName": "b", "Action": "allow"}),
        Case("GET", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=web&destination=api",
             'service "api" { policy = "read" }'),
        Case("PUT", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=c&destination=d",
             'service "d" { policy = "read"  intentions = "write" }', body={"Action": "allow"}),
        Case("DELETE", "/v1/connect/intentions/exact", "/v1/connect/intentions/exact?source=c&destination=d",
             'service "d" { policy = "read"  intentions = "write" }'),
        Case("GET", "/v1/connect/intentions/match", "/v1/connect/intentions/match?by=destination&name=api",
             'service "api" { policy = "read" }', "filter", sees=lambda body: bool(body["api"])),
        Case("GET", "/v1/connect/intentions/check", "/v1/connect/intentions/check?source=web&destination=api",
             'service "api" { policy = "read" }'),
        Case("GET", "/v1/connect/intentions/{id}", f"/v1/connect/intentions/{w.intention_id}",
             'service "api" { policy = "read" }'),
        Case("PUT", "/v1/connect/intentions/{id}", f"/v1/connect/intentions/{w.intention_id}",
             'service "api" { policy = "read"  intentions = "write" }',
             body={"SourceName": "web", "DestinationName": "api", "Action": "deny"}),
        Case("DELETE", "/v1/connect/intentions/{id}", f"/v1/connect/intentions/{w.spare_intention_id}",
             'service "f" { policy = "read"  intentions = "write" }'),
        # ---- KV and sessions ---------------------------------------------------------------
        Case("GET", "/v1/kv/{key}", "/v1/kv/app/cfg", 'key "app/cfg" { policy = "read" }'),
        Case("PUT", "/v1/kv/{key}", "/v1/kv/app/x", 'key "app/x" { policy = "write" }', body=b"1", raw=True),
        Case("DELETE", "/v1/kv/{key}", "/v1/kv/app/y", 'key "app/y" { policy = "write" }'),
        Case("PUT", "/v1/txn", "/v1/txn", 'key "app/cfg" { policy = "read" }',
             body=[{"KV": {"Verb": "get", "Key": "app/cfg"}}]),
        Case("PUT", "/v1/session/create", "/v1/session/create", sid_rules, body={"Node": "n1", "Checks": []}),
        Case("PUT", "/v1/session/destroy/{id}", f"/v1/session/destroy/{w.spare_session_id}", sid_rules),
        Case("PUT", "/v1/session/renew/{id}", f"/v1/session/renew/{w.session_id}", sid_rules),
        *[Case("GET", route, path, 'session "n1" { policy = "read" }', "filter", sees=_rows_with("ID", w.session_id))
          for route, path in (("/v1/session/info/{id}", f"/v1/session/info/{w.session_id}"),
                              ("/v1/session/node/{node}", "/v1/session/node/n1"),
                              ("/v1/session/list", "/v1/session/list"))],
        # ---- status, operator, snapshots ---------------------------------------------------
        Case("GET", "/v1/status/leader", "/v1/status/leader", kind="open"),
        Case("GET", "/v1/status/peers", "/v1/status/peers", kind="open"),
        Case("GET", "/v1/operator/raft/configuration", "/v1/operator/raft/configuration", 'operator = "read"'),
        Case("GET", "/v1/operator/raft/state", "/v1/operator/raft/state", 'operator = "read"'),
        Case("DELETE", "/v1/operator/raft/peer", "/v1/operator/raft/peer", 'operator = "write"'),
        Case("GET", "/v1/snapshot", "/v1/snapshot", 'acl = "write"'),
        Case("PUT", "/v1/snapshot", "/v1/snapshot", 'acl = "write"', body=b"not a snapshot", raw=True),
        Case("GET", "/", "/", kind="open"),
        # ---- ACLs --------------------------------------------------------------------------
        Case("PUT", "/v1/acl/bootstrap", "/v1/acl/bootstrap", kind="fixed", status=403),
        Case("PUT", "/v1/acl/token", "/v1/acl/token", 'acl = "write"', body={"Description": "made"}),
        Case("GET", "/v1/acl/token/self", "/v1/acl/token/self", kind="fixed", status=200),
        Case("GET", "/v1/acl/token/{id}", f"/v1/acl/token/{w.token_id}", 'acl = "read"'),
        Case("PUT", "/v1/acl/token/{id}", f"/v1/acl/token/{w.token_id}", 'acl = "write"',
             body={"Description": "renamed"}),
        Case("PUT", "/v1/acl/token/{id}/clone", f"/v1/acl/token/{w.token_id}/clone", 'acl = "write"', body={}),
        Case("DELETE", "/v1/acl/token/{id}", f"/v1/acl/token/{w.spare_token_id}", 'acl = "write"'),
        Case("GET", "/v1/acl/tokens", "/v1/acl/tokens", 'acl = "read"'),
        Case("PUT", "/v1/acl/policy", "/v1/acl/policy", 'acl = "write"', body={"Name": "made", "Rules": ""}),
        Case("GET", "/v1/acl/policy/name/{name}", "/v1/acl/policy/name/target", 'acl = "read"'),
        Case("GET", "/v1/acl/policy/{id}", f"/v1/acl/policy/{w.policy_id}", 'acl = "read"'),
        Case("PUT", "/v1/acl/policy/{id}", f"/v1/acl/policy/{w.policy_id}", 'acl = "write"',
             body={"Name": "target", "Rules": 'key "x" { policy = "read" }'}),
        Case("DELETE", "/v1/acl/policy/{id}", f"/v1/acl/policy/{w.spare_policy_id}", 'acl = "write"'),
        Case("GET", "/v1/acl/policies", "/v1/acl/policies", 'acl = "read"'),
        Case("PUT", "/v1/acl/role", "/v1/acl/role", 'acl = "write"', body={"Name": "made-role"}),
        Case("GET", "/v1/acl/role/name/{name}", "/v1/acl/role/name/target-role", 'acl = "read"'),
        Case("GET", "/v1/acl/role/{id}", f"/v1/acl/role/{w.role_id}", 'acl = "read"'),
        Case("PUT", "/v1/acl/role/{id}", f"/v1/acl/role/{w.role_id}", 'acl = "write"',
             body={"Name": "target-role", "Description": "x"}),
        Case("DELETE", "/v1/acl/role/{id}", f"/v1/acl/role/{w.spare_role_id}", 'acl = "write"'),
        Case("GET", "/v1/acl/roles", "/v1/acl/roles", 'acl = "read"'),
    ]


@pytest.fixture
async def server():
    cluster, agent, client = await one_server(acl_enabled=True, acl_default_policy="deny",
                                              acl_initial_management_token=MGMT, acl_agent_token=MGMT)
    assert agent.server is not None
    await agent.server.duties.run_once()  # the leader creates the initial management token
    yield agent, client
    await client.close()
    for raft in cluster.nodes.values():
        await raft.stop()


async def _ok(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    headers = {"X-Consul-Token": MGMT}
    resp = await client.request(method, path, headers=headers, **kwargs)
    text = await resp.text()
    assert resp.status == 200, f"{method} {path}: {resp.status} {text}"
    return json.loads(text) if text.strip() else None


async def _token(client: Any, rules: str) -> str:
    policy = await _ok(client, "PUT", "/v1/acl/policy", json={"Name": f"policy-{next(_NAMES)}", "Rules": rules})
    token = await _ok(client, "PUT", "/v1/acl/token", json={"Policies": [{"ID": policy["ID"]}]})
    return str(token["SecretID"])


async def _world(agent: Any, client: Any) -> World:
    w = World()
    await _ok(client, "PUT", "/v1/catalog/register", json={
        "Node": "n1", "Address": "10.1.1.1",
        "Service": {"ID": "web1", "Service": "web", "Port": 80},
        "Checks": [{"CheckID": "web-check", "Name": "web", "ServiceID": "web1", "Status": "passing"},
                   {"CheckID": "n1-node", "Name": "node", "Status": "passing"}]})
    await _ok(client, "PUT", "/v1/catalog/register", json={
        "Node": "n1", "Address": "10.1.1.1",
        "Service": {"ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy", "Port": 21000,
                    "Proxy": {"DestinationServiceName": "web"}}})
    for name in ("lweb", "lweb3"):
        await _ok(client, "PUT", "/v1/agent/service/register",
                  json={"Name": name, "Check": {"CheckID": f"{name}-ttl", "TTL": "60s"}})
    await _ok(client, "PUT", "/v1/agent/check/register", json={"CheckID": "n-check2", "Name": "n2", "TTL": "60s"})
    await _ok(client, "PUT", "/v1/kv/app/cfg", data=b"v")
    await _ok(client, "PUT", "/v1/config", json={"Kind": "service-defaults", "Name": "web2", "Protocol": "tcp"})
    w.intention_id = (await _ok(client, "POST", "/v1/connect/intentions",
                                json={"SourceName": "web", "DestinationName": "api", "Action": "allow"}))["ID"]
    w.spare_intention_id = (await _ok(client, "POST", "/v1/connect/intentions",
                                      json={"SourceName": "e", "DestinationName": "f", "Action": "allow"}))["ID"]
    w.session_id = (await _ok(client, "PUT", "/v1/session/create", json={"Node": "n1", "Checks": []}))["ID"]
    w.spare_session_id = (await _ok(client, "PUT", "/v1/session/create", json={"Node": "n1", "Checks": []}))["ID"]
    w.policy_id = (await _ok(client, "PUT", "/v1/acl/policy", json={"Name": "target"}))["ID"]
    w.spare_policy_id = (await _ok(client, "PUT", "/v1/acl/policy", json={"Name": "spare"}))["ID"]
    w.role_id = (await _ok(client, "PUT", "/v1/acl/role", json={"Name": "target-role"}))["ID"]
    w.spare_role_id = (await _ok(client, "PUT", "/v1/acl/role", json={"Name": "spare-role"}))["ID"]
    w.token_id = (await _ok(client, "PUT", "/v1/acl/token", json={"Description": "target"}))["AccessorID"]
    w.spare_token_id = (await _ok(client, "PUT", "/v1/acl/token", json={"Description": "spare"}))["AccessorID"]

    # what would stop the agent or reach the network: recorded instead (the guard is
    # what is under test, not leaving or joining)
    async def leave() -> None:
        w.calls.append("leave")

    async def join(address: str) -> None:
        w.calls.append("join")

    agent.leave = leave
    agent.join = join
    return w


def test_every_route_has_a_case() -> None:
    from mesh.agent.agent import Agent
    from mesh.agent.config import AgentConfig
    from mesh.agent.http.app import build_app

    app = build_app(Agent(AgentConfig(node_name="x", dev=True)))
    routes = {(r.method, template(r.resource.canonical)) for r in app.router.routes()
              if r.resource is not None and r.method != "HEAD"}  # HEAD takes its GET's rule
    covered = {(c.method, c.route) for c in cases(World())}
    assert routes - set(ROUTES) == set(), "routes without an ACL rule in agent/http/permissions.py"
    assert routes - covered == set(), "routes without a case in this test"
    assert set(ROUTES) - routes == set(), "rules for routes that no longer exist"


async def _call(client: Any, case: Case, token: str | None) -> tuple[int, str, str | None]:
    resp = await client.request(case.method, case.path, **case.kwargs(token))
    text = (await resp.read()).decode(errors="replace")  # a snapshot is gzip
    return resp.status, text, resp.headers.get("X-Consul-Results-Filtered-By-ACLs")


async def test_each_route_answers_no_token_the_wrong_token_and_the_right_one(server) -> None:
    agent, client = server
    world = await _world(agent, client)
    wrong = await _token(client, 'key "unrelated" { policy = "write" }')
    failures: list[str] = []
    for case in cases(world):
        right = await _token(client, case.rules) if case.rules else None
        for label, token in (("no token", None), ("wrong token", wrong), ("right token", right)):
            status, text, filtered = await _call(client, case, token)
            where = f"{case.method} {case.path} with {label}: {status} {text[:200]!r}"
            with_right = label == "right token"
            if case.kind == "open":
                ok = status != 403
            elif case.kind == "fixed":
                ok = status == case.status
            elif case.kind == "fixed-right":
                ok = status == (200 if with_right else case.status)
            elif case.kind == "filter":
                body = json.loads(text) if status == 200 and text.strip() else None
                visible = status == 200 and bool(case.sees(body))
                ok = status == 200 and visible == with_right
                if ok and label == "wrong token" and filtered != "true":
                    ok, where = False, where + " (no X-Consul-Results-Filtered-By-ACLs: true)"
            else:
                ok = (status != 403) if with_right else status == 403 and text.startswith(
                    ("Permission denied: token with AccessorID '", "Permission denied: provided token"))
            if not ok:
                failures.append(where)
    assert not failures, "\n".join(failures)
    assert world.calls == ["join", "leave"]  # reached only with the right token


async def test_an_unknown_token_is_acl_not_found_even_on_open_data(server) -> None:
    agent, client = server
    for path in ("/v1/catalog/services", "/v1/agent/self", "/v1/kv/x"):
        resp = await client.get(path, headers={"X-Consul-Token": "00000000-0000-4000-8000-000000000099"})
        assert (resp.status, await resp.text()) == (403, "ACL not found\n")


async def test_the_token_may_come_as_bearer_or_query_and_the_header_wins(server) -> None:
    agent, client = server
    reader = await _token(client, 'operator = "read"')
    assert (await client.get("/v1/connect/ca/configuration",
                             headers={"Authorization": f"Bearer {reader}"})).status == 200
    assert (await client.get(f"/v1/connect/ca/configuration?token={reader}")).status == 200
    resp = await client.get(f"/v1/connect/ca/configuration?token={reader}",
                            headers={"X-Consul-Token": await _token(client, 'key "k" { policy = "read" }')})
    assert resp.status == 403


async def test_acl_endpoints_with_acls_off_answer_401() -> None:
    cluster, agent, client = await one_server()
    try:
        for method, path in (("PUT", "/v1/acl/bootstrap"), ("GET", "/v1/acl/tokens"), ("GET", "/v1/acl/policies")):
            resp = await client.request(method, path)
            assert (resp.status, await resp.text()) == (401, "ACL support disabled\n")
    finally:
        await client.close()
        for raft in cluster.nodes.values():
            await raft.stop()
