"""ACLs through real processes (issue 16): three servers and a client agent with
`default_policy = "deny"`.

- the initial management token bootstraps the cluster; `PUT /v1/acl/bootstrap` is then
  refused with Consul's text;
- a client agent holding only its agent token keeps its node and its configured service
  in the catalog (heartbeats and anti-entropy carry that token);
- a service token registers its own service and no other, and gets a leaf for it only;
- an intention write without `intentions = "write"` on the destination is a 403;
- with every server SIGKILLed, the client agent keeps answering requests whose tokens
  it has cached, past acl.token_ttl (down_policy extend-cache), and at once.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

from tests.harness.cluster import Agent, Cluster, HTTPError, retry

pytestmark = pytest.mark.cluster

MGMT = "6f1c1d2e-0000-4000-8000-00000000aaaa"
TOKEN_TTL = 2.0


def _write(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path


def _denied(fn: Any) -> str:
    with pytest.raises(HTTPError) as info:
        fn()
    assert info.value.status == 403, info.value.body
    return info.value.body


@pytest.fixture(scope="module")
def acl_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acl")
    server_cfg = _write(os.path.join(tmp, "server.hcl"), f"""
acl {{
  enabled = true
  default_policy = "deny"
  tokens {{
    initial_management = "{MGMT}"
    agent = "{MGMT}"
  }}
}}
""")
    c = Cluster(tmp, 3, extra_args=["-config-file", server_cfg, "-liveness-timeout", "3s"])
    try:
        c.start()
        leader = c.wait_leader()
        retry(lambda: leader.request("GET", "/v1/acl/token/self", token=MGMT), 20, 0.2, "initial management token")
        yield c, str(tmp)
    finally:
        c.stop()


def _token(agent: Agent, rules: str = "", **body: Any) -> str:
    if rules:
        policy = agent.request("PUT", "/v1/acl/policy", {"Name": f"p{time.monotonic_ns()}", "Rules": rules},
                               token=MGMT)[0]
        body.setdefault("Policies", []).append({"ID": policy["ID"]})
    return str(agent.request("PUT", "/v1/acl/token", body, token=MGMT)[0]["SecretID"])


def test_bootstrap_once_and_a_client_with_only_its_agent_token_stays_in_sync(acl_cluster) -> None:
    c, tmp = acl_cluster
    leader = c.wait_leader()
    assert _denied(lambda: leader.put("/v1/acl/bootstrap")).startswith("ACL bootstrap no longer allowed (reset index: ")

    agent_token = _token(leader, 'service "configured" { policy = "write" }',
                         NodeIdentities=[{"NodeName": "c1", "Datacenter": "dc1"}])
    client_cfg = _write(os.path.join(tmp, "c1.hcl"), f"""
acl {{
  enabled = true
  default_policy = "deny"
  token_ttl = "{TOKEN_TTL:g}s"
  tokens {{ agent = "{agent_token}" }}
}}
service {{
  name = "configured"
  port = 7000
}}
""")
    client = c.add_client("c1", ["-config-file", client_cfg]).start()
    retry(lambda: client.request("GET", "/v1/agent/self", token=MGMT), 15, 0.1, "c1 up")

    def synced() -> bool:
        rows = leader.request("GET", "/v1/health/service/configured", token=MGMT)[0]
        return bool(rows) and rows[0]["Node"]["Node"] == "c1" and any(
            ch["CheckID"] == "serfHealth" and ch["Status"] == "passing" for ch in rows[0]["Checks"])
    retry(synced, 20, 0.2, "c1 and its configured service in the catalog, serfHealth passing")
    assert "blocked" not in client.log_tail(200).lower()


def test_a_service_token_registers_its_own_service_only(acl_cluster) -> None:
    c, _ = acl_cluster
    leader, client = c.wait_leader(), c.clients[0]
    api = _token(leader, ServiceIdentities=[{"ServiceName": "api"}])
    client.request("PUT", "/v1/agent/service/register", {"Name": "api", "Port": 8080}, token=api)
    body = _denied(lambda: client.request("PUT", "/v1/agent/service/register", {"Name": "db", "Port": 5432},
                                          token=api))
    assert body.startswith("Permission denied: token with AccessorID '") and \
        "lacks permission 'service:write' on \"db\"" in body
    # the registration syncs with its own token: the agent token may not write "api"
    retry(lambda: leader.request("GET", "/v1/catalog/service/api", token=MGMT)[0] or None, 15, 0.2,
          "api in the catalog")
    assert leader.request("GET", "/v1/catalog/service/db", token=MGMT)[0] == []
    # a leaf is signed for a token that may write the service, and only for it
    leaf = client.request("GET", "/v1/agent/connect/ca/leaf/api", token=api, timeout=30)[0]
    assert leaf["Service"] == "api" and leaf["ServiceURI"].endswith("/svc/api")
    assert "'service:write' on \"configured\"" in _denied(
        lambda: client.request("GET", "/v1/agent/connect/ca/leaf/configured", token=api))
    # the same token cannot write the catalog directly for another service either
    _denied(lambda: leader.request("PUT", "/v1/catalog/register",
                                   {"Node": "c1", "Address": "127.0.0.1", "Service": {"Service": "db"}}, token=api))


def test_an_intention_needs_intentions_write_on_its_destination(acl_cluster) -> None:
    c, _ = acl_cluster
    leader, client = c.wait_leader(), c.clients[0]
    writer = _token(leader, 'service "api" { policy = "write" }')  # intentions default to read
    body = {"SourceName": "web", "DestinationName": "api", "Action": "allow"}
    denied = _denied(lambda: client.request("POST", "/v1/connect/intentions", body, token=writer))
    assert "lacks permission 'intention:write' on \"api\"" in denied
    allowed = _token(leader, 'service "api" { policy = "read"  intentions = "write" }')
    created = client.request("POST", "/v1/connect/intentions", body, token=allowed)[0]
    assert created["ID"]
    # and reading it back needs intentions read on api: the writer's read is enough
    assert client.request("GET", f"/v1/connect/intentions/{created['ID']}", token=writer)[0]["DestinationName"] == "api"
    _denied(lambda: client.request("GET", f"/v1/connect/intentions/{created['ID']}",
                                   token=_token(leader, 'service "web" { policy = "read" }')))


def test_with_every_server_killed_cached_tokens_keep_working(acl_cluster) -> None:
    """extend-cache: the client agent keeps deciding its own endpoints with the tokens it
    resolved before the outage, however old, and answers at once."""
    c, _ = acl_cluster
    leader, client = c.wait_leader(), c.clients[0]
    reader = _token(leader, 'service_prefix "" { policy = "read" } agent "c1" { policy = "read" }')
    never_seen = _token(leader, 'agent "c1" { policy = "read" }')
    assert "configured" in client.request("GET", "/v1/agent/services", token=reader)[0]
    for server in c.agents:
        server.signal(signal.SIGKILL)
    for server in c.agents:
        assert server.proc is not None
        server.proc.wait(10)
    time.sleep(TOKEN_TTL + 0.5)  # every cached entry is now past its TTL
    timings = []
    for _ in range(5):
        started = time.monotonic()
        services = client.request("GET", "/v1/agent/services", token=reader, timeout=10)[0]
        timings.append(time.monotonic() - started)
        assert "configured" in services
        assert client.request("GET", "/v1/agent/self", token=reader, timeout=10)[0]["Config"]["NodeName"] == "c1"
    # a token the agent never saw is refused (extend-cache has nothing to extend)
    _denied(lambda: client.request("GET", "/v1/agent/self", token=never_seen, timeout=10))
    # the first request after the TTL may wait out one resolution (0.5 s once the agent
    # has seen the servers go: its heartbeats fail first); the rest
    # are answered from the cache without asking again
    assert timings[0] < 2.0 and max(timings[1:]) < 0.5, timings
