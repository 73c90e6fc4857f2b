"""/v1/config and `mesh config` against a real dev agent: writes, reads, lists, deletes,
CAS, blocking reads, Consul's error bodies, the CLI end to end and py-consul's calls.

The dev agent is shared with the other integration tests: entries here use names of
their own, and proxy-defaults (a singleton) is deleted by the test that writes it."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from tests.harness.cli import run_cli
from tests.harness.cluster import HTTPError


def mesh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`mesh ARGS`, in this process (tests/harness/cli.py): the flags name the agent."""
    return run_cli(list(args), None, stdin)


def error(dev, method: str, path: str, body=None) -> tuple[int, str]:
    with pytest.raises(HTTPError) as err:
        dev.request(method, path, body)
    return err.value.status, err.value.body.strip()


def test_write_read_list_delete_with_cas(dev):
    body = {"Kind": "service-defaults", "Name": "cfg-web", "Protocol": "http", "local_connect_timeout_ms": 250}
    assert dev.put("/v1/config?cas=0", body) is True
    assert dev.put("/v1/config?cas=0", body) is False  # create only
    entry, headers = dev.request("GET", "/v1/config/service-defaults/cfg-web")
    assert entry == {"Kind": "service-defaults", "Name": "cfg-web", "Protocol": "http", "TransparentProxy": {},
                     "MeshGateway": {}, "Expose": {}, "LocalConnectTimeoutMs": 250,
                     "CreateIndex": entry["CreateIndex"], "ModifyIndex": entry["CreateIndex"]}
    assert int(headers["X-Consul-Index"]) == entry["ModifyIndex"] and headers["X-Consul-KnownLeader"] == "true"
    index = entry["ModifyIndex"]
    assert dev.put(f"/v1/config?cas={index + 100}", {**body, "MaxInboundConnections": 3}) is False
    assert dev.put(f"/v1/config?cas={index}", {**body, "MaxInboundConnections": 3}) is True
    assert dev.put("/v1/config", {"Kind": "service-defaults", "Name": "cfg-api"}) is True
    listed = dev.get("/v1/config/service-defaults")
    mine = [e for e in listed if e["Name"].startswith("cfg-")]
    assert [e["Name"] for e in mine] == ["cfg-api", "cfg-web"] and mine[1]["MaxInboundConnections"] == 3
    assert dev.get("/v1/config/service-defaults?filter=Protocol%20%3D%3D%20%22http%22")[0]["Name"] == "cfg-web"
    current = dev.get("/v1/config/service-defaults/cfg-web")["ModifyIndex"]
    assert dev.request("DELETE", f"/v1/config/service-defaults/cfg-web?cas={current - 1}")[0] is False
    assert dev.request("DELETE", f"/v1/config/service-defaults/cfg-web?cas={current}")[0] is True
    assert dev.request("DELETE", "/v1/config/service-defaults/cfg-api")[0] == {}
    assert dev.request("DELETE", "/v1/config/service-defaults/cfg-api")[0] == {}  # nothing there: still {}
    status, text = error(dev, "GET", "/v1/config/service-defaults/cfg-web")
    assert (status, text) == (404, 'Config entry not found for "service-defaults" / "cfg-web"')


@pytest.mark.parametrize(
    "method, path, body, status, text",
    [
        ("PUT", "/v1/config", {"Name": "x"}, 400, "Payload does not contain a kind/Kind key at the top level"),
        ("PUT", "/v1/config", {"Kind": "bogus", "Name": "x"}, 400, "invalid config entry kind: bogus"),
        ("PUT", "/v1/config", {"Kind": "ingress-gateway", "Name": "x"}, 400, "not supported by mesh yet"),
        ("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "x", "Protocol": "grpc"}, 400,
         "not supported yet"),
        ("PUT", "/v1/config", {"Kind": "service-defaults", "Name": "x", "Protocl": "http"}, 400,
         'Request decoding failed: invalid config key "Protocl"'),
        ("PUT", "/v1/config", {"Kind": "service-router", "Name": "cfg-tcp",
                               "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}, 400,
         'discovery chain "cfg-tcp" uses a protocol "tcp" that does not permit advanced routing'),
        ("PUT", "/v1/config?cas=x", {"Kind": "service-defaults", "Name": "x"}, 400, "Invalid cas value"),
        ("PUT", "/v1/config", [1], 400, "must be a JSON object"),
        ("GET", "/v1/config/bogus", None, 400, "invalid config entry kind: bogus"),
        ("GET", "/v1/config/bogus/x", None, 400, "invalid config entry kind: bogus"),
        ("DELETE", "/v1/config/bogus/x", None, 400, "invalid config entry kind: bogus"),
        ("DELETE", "/v1/config/proxy-defaults/other", None, 400, 'invalid name ("other")'),
        ("GET", "/v1/config/ingress-gateway/x", None, 404, 'Config entry not found for "ingress-gateway" / "x"'),
    ],
)
def test_errors_as_consul_answers_them(dev, method, path, body, status, text):
    got_status, got_text = error(dev, method, path, body)
    assert got_status == status and text in got_text, got_text


def test_nothing_is_half_applied(dev):
    """An entry with one bad field deep inside changes nothing."""
    good = {"Kind": "service-defaults", "Name": "cfg-half", "Protocol": "http"}
    assert dev.put("/v1/config", good) is True
    before = dev.get("/v1/config/service-defaults/cfg-half")
    status, text = error(dev, "PUT", "/v1/config", {**good, "Protocol": "tcp", "MaxInboundConnections": -1})
    assert status == 400 and "MaxInboundConnections" in text
    assert dev.get("/v1/config/service-defaults/cfg-half") == before
    dev.request("DELETE", "/v1/config/service-defaults/cfg-half")


def test_a_blocking_read_waits_for_its_own_entry_only(dev):
    dev.put("/v1/config", {"Kind": "service-defaults", "Name": "cfg-block", "Protocol": "tcp"})
    _, headers = dev.request("GET", "/v1/config/service-defaults/cfg-block")
    index = int(headers["X-Consul-Index"])
    got: dict = {}

    def wait() -> None:
        started = time.monotonic()
        got["value"], got["headers"] = dev.request(
            "GET", f"/v1/config/service-defaults/cfg-block?index={index}&wait=20s", timeout=30)
        got["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.4)
    assert waiter.is_alive(), "the read answered before anything changed: it did not block"
    dev.put("/v1/config", {"Kind": "service-defaults", "Name": "cfg-other", "Protocol": "http"})
    time.sleep(0.3)
    assert waiter.is_alive(), "another entry's write woke it"
    written = time.monotonic()
    dev.put("/v1/config", {"Kind": "service-defaults", "Name": "cfg-block", "Protocol": "http"})
    waiter.join(10)
    assert not waiter.is_alive()
    assert got["value"]["Protocol"] == "http" and int(got["headers"]["X-Consul-Index"]) > index
    assert got["seconds"] >= 0.7 and time.monotonic() - written < 5
    # the list blocks on its kind
    _, headers = dev.request("GET", "/v1/config/service-router")
    list_index = int(headers["X-Consul-Index"])
    started = time.monotonic()
    value, _ = dev.request("GET", f"/v1/config/service-router?index={list_index}&wait=300ms")
    assert time.monotonic() - started >= 0.25 and all(e["Kind"] == "service-router" for e in value)
    for name in ("cfg-block", "cfg-other"):
        dev.request("DELETE", f"/v1/config/service-defaults/{name}")


def test_router_and_intentions_through_both_apis(dev):
    assert dev.put("/v1/config", {"Kind": "service-defaults", "Name": "cfg-r", "Protocol": "http"}) is True
    router = {"Kind": "service-router", "Name": "cfg-r", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x-debug", "Present": True}]}},
         "Destination": {"RequestTimeout": "2s", "NumRetries": 2, "RetryOn": ["5xx", "reset"]}}]}
    assert dev.put("/v1/config", router) is True
    got = dev.get("/v1/config/service-router/cfg-r")
    assert got["Routes"] == router["Routes"] and "Meta" not in got
    status, text = error(dev, "PUT", "/v1/config", {"Kind": "service-defaults", "Name": "cfg-r", "Protocol": "tcp"})
    assert status == 400 and "does not permit advanced routing" in text
    l7 = [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}]
    assert dev.put("/v1/config", {"Kind": "service-intentions", "Name": "cfg-r", "Meta": {"owner": "ops"},
                                  "Sources": [{"Name": "cfg-a", "Permissions": l7},
                                              {"Name": "*", "Action": "deny"}]}) is True
    rows = [i for i in dev.get("/v1/connect/intentions") if i["DestinationName"] == "cfg-r"]
    assert sorted((i["SourceName"], i["Action"]) for i in rows) == [("*", "deny"), ("cfg-a", "")]
    created = dev.request("POST", "/v1/connect/intentions",
                          {"SourceName": "cfg-b", "DestinationName": "cfg-r", "Action": "allow"})[0]
    entry = dev.get("/v1/config/service-intentions/cfg-r")
    assert [s["Name"] for s in entry["Sources"]] == ["cfg-a", "cfg-b", "*"] and entry["Meta"] == {"owner": "ops"}
    assert entry["Sources"][1]["LegacyID"] == created["ID"] and "LegacyID" not in entry["Sources"][0]
    assert any(e["Name"] == "cfg-r" for e in dev.get("/v1/config/service-intentions"))
    status, text = error(dev, "POST", "/v1/connect/intentions",
                         {"SourceName": "cfg-a", "DestinationName": "cfg-tcp-dest", "Permissions": l7})
    assert status == 400 and 'service "cfg-tcp-dest" has protocol "tcp"' in text
    assert dev.request("DELETE", "/v1/config/service-intentions/cfg-r")[0] == {}
    assert not [i for i in dev.get("/v1/connect/intentions") if i["DestinationName"] == "cfg-r"]
    dev.request("DELETE", "/v1/config/service-router/cfg-r")
    dev.request("DELETE", "/v1/config/service-defaults/cfg-r")


HCL_ROUTER = """
Kind = "service-router"
Name = "cfg-cli"
Routes = [
  {
    Match = { HTTP = { path_prefix = "/v2" } }
    Destination = { Service = "cfg-cli", prefix_rewrite = "/", request_timeout = "3s" }
  },
]
"""


def test_cli_end_to_end(dev, tmp_path):
    addr = ("-http-addr", dev.http)
    hcl_defaults = tmp_path / "defaults.hcl"
    hcl_defaults.write_text('Kind = "service-defaults"\nName = "cfg-cli"\nProtocol = "http"\n'
                            'Meta {\n  team = "web"\n}\n')
    out = mesh("config", "write", *addr, str(hcl_defaults))
    assert out.returncode == 0 and out.stdout.strip() == "Config entry written: service-defaults/cfg-cli", out.stderr
    router = tmp_path / "router.hcl"
    router.write_text(HCL_ROUTER)
    out = mesh("config", "write", *addr, str(router))
    assert out.returncode == 0 and "service-router/cfg-cli" in out.stdout, out.stderr
    json_file = tmp_path / "other.json"
    json_file.write_text(json.dumps({"Kind": "service-defaults", "Name": "cfg-cli2", "Protocol": "tcp"}))
    assert mesh("config", "write", *addr, str(json_file)).returncode == 0
    out = mesh("config", "write", *addr, "-", stdin=json.dumps({"Kind": "service-defaults", "Name": "cfg-cli3"}))
    assert out.returncode == 0 and "service-defaults/cfg-cli3" in out.stdout
    out = mesh("config", "read", *addr, "-kind", "service-router", "-name", "cfg-cli")
    assert out.returncode == 0
    read = json.loads(out.stdout)
    assert read["Routes"][0]["Destination"] == {"Service": "cfg-cli", "PrefixRewrite": "/", "RequestTimeout": "3s"}
    assert json.loads(mesh("config", "read", *addr, "-kind", "service-defaults", "-name", "cfg-cli").stdout)[
        "Meta"] == {"team": "web"}
    out = mesh("config", "list", *addr, "-kind", "service-defaults")
    assert out.returncode == 0 and [n for n in out.stdout.split() if n.startswith("cfg-cli")] == [
        "cfg-cli", "cfg-cli2", "cfg-cli3"]
    # CAS: a stale index is refused with one line and exit 1
    index = str(read["ModifyIndex"])
    out = mesh("config", "write", *addr, "-cas", "-modify-index", "1", str(router))
    assert out.returncode == 1 and out.stderr.strip() == "Config entry not updated: service-router/cfg-cli"
    out = mesh("config", "write", *addr, "-cas", "-modify-index", index, str(router))
    assert out.returncode == 0, out.stderr
    assert mesh("config", "write", *addr, "-cas", str(router)).returncode == 1
    # errors: one line on stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"Kind": "service-defaults", "Name": "cfg-cli", "Protocol": "udp"}))
    out = mesh("config", "write", *addr, str(bad))
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "Protocol" in out.stderr
    out = mesh("config", "read", *addr, "-kind", "service-defaults", "-name", "cfg-none")
    assert out.returncode == 1 and "Config entry not found" in out.stderr
    assert mesh("config", "read", *addr, "-kind", "service-defaults").returncode == 1
    assert mesh("config", "frobnicate").returncode == 1
    # delete by -filename and by -kind -name, with and without CAS
    out = mesh("config", "delete", *addr, "-filename", str(router))
    assert out.returncode == 0 and out.stdout.strip() == "Config entry deleted: service-router/cfg-cli"
    out = mesh("config", "delete", *addr, "-kind", "service-defaults", "-name", "cfg-cli2", "-cas",
               "-modify-index", "1")
    assert out.returncode == 1 and "not deleted" in out.stderr
    current = str(dev.get("/v1/config/service-defaults/cfg-cli2")["ModifyIndex"])
    assert mesh("config", "delete", *addr, "-kind", "service-defaults", "-name", "cfg-cli2", "-cas",
                "-modify-index", current).returncode == 0
    for name in ("cfg-cli", "cfg-cli3"):
        assert mesh("config", "delete", *addr, "-kind", "service-defaults", "-name", name).returncode == 0
    assert not [n for n in mesh("config", "list", *addr, "-kind", "service-defaults").stdout.split()
                if n.startswith("cfg-cli")]


def test_py_consul_config_calls(dev):
    consul = pytest.importorskip("consul")
    c = consul.Consul(port=dev.http_port)
    assert c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}}) is True
    try:
        assert c.config.set("service-defaults", "cfg-py", {"Protocol": "http"}, cas=0) is True
        assert c.config.set("service-defaults", "cfg-py", {"Protocol": "tcp"}, cas=0) is False
        entry = c.config.get("service-defaults", "cfg-py")
        assert entry["Protocol"] == "http" and entry["Kind"] == "service-defaults"
        assert c.config.set("service-defaults", "cfg-py", {"Protocol": "tcp"}, cas=entry["ModifyIndex"]) is True
        assert c.config.get("proxy-defaults", "global")["Config"] == {"protocol": "http"}
        names = [e["Name"] for e in c.config.list("service-defaults")]
        assert "cfg-py" in names
        assert [e["Name"] for e in c.config.list("service-defaults", filter_expr='Name == "cfg-py"')] == ["cfg-py"]
        assert c.config.list("service-defaults", dc="dc1")
        with pytest.raises(consul.ConsulException):
            c.config.list("service-defaults", dc="nowhere")
        index = c.config.get("service-defaults", "cfg-py")["ModifyIndex"]
        assert c.config.delete("service-defaults", "cfg-py", cas=index - 1) is False
        assert c.config.delete("service-defaults", "cfg-py", cas=index) is True
        assert c.config.get("service-defaults", "cfg-py") is None  # py-consul's answer to a 404
        assert c.config.set("service-defaults", "cfg-py", {"Protocol": "http"}) is True
        assert c.config.delete("service-defaults", "cfg-py") is True
    finally:
        assert c.config.delete("proxy-defaults", "global") is True


# ---- traffic management: resolvers, splitters, /v1/discovery-chain --------------------

CHAIN_ENTRIES = [
    {"Kind": "service-defaults", "Name": "dc-web", "Protocol": "http", "Meta": {"owner": "web-team"}},
    {"Kind": "service-defaults", "Name": "dc-admin", "Protocol": "http"},
    {"Kind": "service-resolver", "Name": "dc-web", "DefaultSubset": "v1", "ConnectTimeout": "3s",
     "Subsets": {"v1": {"Filter": 'Service.Meta.version == "1"'}, "v2": {"OnlyPassing": True}},
     "Failover": {"*": {"Datacenters": ["dc2"]}}},
    {"Kind": "service-splitter", "Name": "dc-web", "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                              {"Weight": 10, "ServiceSubset": "v2"}]},
    {"Kind": "service-router", "Name": "dc-web", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "dc-admin"}}]},
]


def _delete_chain_entries(dev) -> None:
    for body in reversed(CHAIN_ENTRIES):
        dev.request("DELETE", f"/v1/config/{body['Kind']}/{body['Name']}")


def test_discovery_chain_get_post_and_compile_dc(dev):
    for body in CHAIN_ENTRIES:
        assert dev.put("/v1/config", body) is True, body
    try:
        trust_domain = dev.get("/v1/connect/ca/roots")["TrustDomain"]
        chain, headers = dev.request("GET", "/v1/discovery-chain/dc-web")
        chain = chain["Chain"]
        assert int(headers["X-Consul-Index"]) >= max(
            dev.get(f"/v1/config/{b['Kind']}/{b['Name']}")["ModifyIndex"] for b in CHAIN_ENTRIES)
        assert (chain["ServiceName"], chain["Datacenter"], chain["Protocol"], chain["Default"]) == (
            "dc-web", "dc1", "http", False)
        assert chain["StartNode"] == "router:dc-web.default.default" and chain["ServiceMeta"] == {"owner": "web-team"}
        routes = chain["Nodes"]["router:dc-web.default.default"]["Routes"]
        assert [r["NextNode"] for r in routes] == ["resolver:dc-admin.default.default.dc1",
                                                   "splitter:dc-web.default.default"]
        assert chain["Nodes"]["splitter:dc-web.default.default"]["Splits"] == [
            {"Weight": 90, "NextNode": "resolver:v1.dc-web.default.default.dc1"},
            {"Weight": 10, "NextNode": "resolver:v2.dc-web.default.default.dc1"}]
        v1 = chain["Nodes"]["resolver:v1.dc-web.default.default.dc1"]["Resolver"]
        assert v1 == {"Default": False, "ConnectTimeout": "3s", "Target": "v1.dc-web.default.default.dc1",
                      "Failover": {"Targets": ["v1.dc-web.default.default.dc2"]}}
        target = chain["Targets"]["v2.dc-web.default.default.dc1"]
        assert target["Subset"] == {"OnlyPassing": True} and target["ConnectTimeout"] == "3s"
        assert target["SNI"] == f"v2.dc-web.default.dc1.internal.{trust_domain}" == target["Name"]
        # POST with overrides: tcp drops the router, the timeout replaces every resolver's
        posted, _ = dev.request("POST", "/v1/discovery-chain/dc-web?compile-dc=dc7",
                                {"OverrideProtocol": "tcp", "OverrideConnectTimeout": "750ms",
                                 "OverrideMeshGateway": {"Mode": ""}})
        posted = posted["Chain"]
        assert posted["Datacenter"] == "dc7" and posted["Protocol"] == "tcp"
        assert posted["StartNode"] == "splitter:dc-web.default.default"
        assert {t["ConnectTimeout"] for t in posted["Targets"].values()} == {"750ms"}
        assert "v1.dc-web.default.default.dc7" in posted["Targets"]
        # a service nobody configured: the default chain
        plain = dev.get("/v1/discovery-chain/dc-nobody")["Chain"]
        assert plain["Default"] is True and plain["StartNode"] == "resolver:dc-nobody.default.default.dc1"
        for method, path, body, status, text in [
            ("POST", "/v1/discovery-chain/dc-web", {"OverrideMeshGateway": {"Mode": "local"}}, 400,
             "mesh gateways are not supported"),
            ("POST", "/v1/discovery-chain/dc-web", {"OverrideConnectTimeout": "soon"}, 400,
             "Invalid OverrideConnectTimeout"),
            ("POST", "/v1/discovery-chain/dc-web", {"Bogus": 1}, 400, 'invalid config key "Bogus"'),
            ("GET", "/v1/discovery-chain/", None, 400, "Missing chain name"),
            ("GET", "/v1/discovery-chain/dc-web?dc=nowhere", None, 500, "No path to datacenter"),
            ("PUT", "/v1/discovery-chain/dc-web", None, 405, "method PUT not allowed"),
        ]:
            got_status, got_text = error(dev, method, path, body)
            assert (got_status, text in got_text) == (status, True), (path, got_text)
    finally:
        _delete_chain_entries(dev)


def test_writes_that_break_a_chain_are_refused(dev):
    resolver = {"Kind": "service-resolver", "Name": "dc-api", "Subsets": {"v1": {}, "v2": {}}}
    assert dev.put("/v1/config", resolver) is True
    splitter = {"Kind": "service-splitter", "Name": "dc-front", "Splits": [
        {"Weight": 50, "Service": "dc-api", "ServiceSubset": "v1"}, {"Weight": 50, "Service": "dc-api",
                                                                     "ServiceSubset": "v2"}]}
    try:
        assert dev.put("/v1/config", splitter) is True
        status, text = error(dev, "PUT", "/v1/config", {**resolver, "Subsets": {"v1": {}}})
        assert (status, text) == (400, 'service "dc-api" does not have a subset named "v2"')
        status, text = error(dev, "DELETE", "/v1/config/service-resolver/dc-api")
        assert status == 400 and "does not have a subset named" in text
        assert dev.put("/v1/config", {"Kind": "service-splitter", "Name": "dc-loop-a",
                                      "Splits": [{"Weight": 100, "Service": "dc-loop-b"}]}) is True
        status, text = error(dev, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "dc-loop-b",
                                                        "Splits": [{"Weight": 100, "Service": "dc-loop-a"}]})
        assert (status, text) == (400, "detected circular reference: [splitter:dc-loop-a.default.default -> "
                                       "splitter:dc-loop-b.default.default -> splitter:dc-loop-a.default.default]")
        status, text = error(dev, "PUT", "/v1/config", {"Kind": "service-splitter", "Name": "dc-x",
                                                        "Splits": [{"Weight": 60}, {"Weight": 30, "Service": "y"}]})
        assert (status, text) == (400, "the sum of all split weights must be 100, not 90.000000")
    finally:
        for kind, name in (("service-splitter", "dc-loop-a"), ("service-splitter", "dc-front"),
                           ("service-resolver", "dc-api")):
            dev.request("DELETE", f"/v1/config/{kind}/{name}")


def test_a_blocking_discovery_chain_read_waits_for_a_change(dev):
    _, headers = dev.request("GET", "/v1/discovery-chain/dc-block")
    index = int(headers["X-Consul-Index"])
    got: dict = {}

    def wait() -> None:
        got["value"], got["headers"] = dev.request("GET", f"/v1/discovery-chain/dc-block?index={index}&wait=20s",
                                                   timeout=30)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    try:
        time.sleep(0.4)
        assert waiter.is_alive(), "the read answered before anything changed: it did not block"
        dev.put("/v1/config", {"Kind": "service-intentions", "Name": "dc-block",
                               "Sources": [{"Name": "x", "Action": "allow"}]})
        time.sleep(0.3)
        assert waiter.is_alive(), "an entry the chain does not read woke it"
        written = time.monotonic()
        assert dev.put("/v1/config", {"Kind": "service-resolver", "Name": "dc-block", "ConnectTimeout": "9s"}) is True
        waiter.join(10)
        assert not waiter.is_alive()
        assert got["at"] >= written and int(got["headers"]["X-Consul-Index"]) > index
        node = got["value"]["Chain"]["Nodes"]["resolver:dc-block.default.default.dc1"]
        assert node["Resolver"]["ConnectTimeout"] == "9s"
    finally:
        waiter.join(1)
        dev.request("DELETE", "/v1/config/service-resolver/dc-block")
        dev.request("DELETE", "/v1/config/service-intentions/dc-block")


def test_py_consul_discovery_chain(dev):
    consul = pytest.importorskip("consul")
    c = consul.Consul(port=dev.http_port)
    assert c.config.set("service-resolver", "dc-py", {"Subsets": {"v1": {}}, "DefaultSubset": "v1"}) is True
    try:
        chain = c.discovery_chain.get("dc-py")["Chain"]
        assert chain["StartNode"] == "resolver:v1.dc-py.default.default.dc1"
        chain = c.discovery_chain.get("dc-py", compile_dc="dc3", token="anything")["Chain"]
        assert chain["Datacenter"] == "dc3" and "v1.dc-py.default.default.dc3" in chain["Targets"]
        chain = c.discovery_chain.get("dc-py", override_connect_timeout="12s", override_protocol="http")["Chain"]
        assert chain["Protocol"] == "http"
        assert chain["Nodes"]["resolver:v1.dc-py.default.default.dc1"]["Resolver"]["ConnectTimeout"] == "12s"
        with pytest.raises(consul.ConsulException, match="mesh gateways are not supported"):
            c.discovery_chain.get("dc-py", override_mesh_gateway_mode="local")
    finally:
        assert c.config.delete("service-resolver", "dc-py") is True


HCL_TRAFFIC = """
Kind = "service-resolver"
Name = "dc-cli"
DefaultSubset = "v1"
ConnectTimeout = "4s"
Subsets = {
  v1 = { Filter = "Service.Meta.version == v1" }
  v2 = { OnlyPassing = true }
}
Failover = {
  "*" = { Datacenters = ["dc2", "dc3"] }
}
LoadBalancer {
  Policy = "ring_hash"
  HashPolicies = [{ Field = "header", FieldValue = "x-user" }]
}
"""

HCL_SPLITTER = """
Kind = "service-splitter"
Name = "dc-cli"
Splits = [
  { Weight = 75, ServiceSubset = "v1" },
  { Weight = 25, ServiceSubset = "v2", RequestHeaders = { Set = { "x-canary" = "1" } } },
]
"""


def test_cli_writes_resolvers_and_splitters(dev, tmp_path):
    addr = ("-http-addr", dev.http)
    resolver, splitter = tmp_path / "resolver.hcl", tmp_path / "splitter.hcl"
    resolver.write_text(HCL_TRAFFIC)
    splitter.write_text(HCL_SPLITTER)
    try:
        out = mesh("config", "write", *addr, str(resolver))
        assert out.returncode == 0 and out.stdout.strip() == "Config entry written: service-resolver/dc-cli", out.stderr
        out = mesh("config", "write", *addr, str(splitter))
        assert out.returncode == 0 and "service-splitter/dc-cli" in out.stdout, out.stderr
        read = json.loads(mesh("config", "read", *addr, "-kind", "service-resolver", "-name", "dc-cli").stdout)
        assert read["Subsets"] == {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"OnlyPassing": True}}
        assert read["Failover"] == {"*": {"Datacenters": ["dc2", "dc3"]}} and read["ConnectTimeout"] == "4s"
        assert read["LoadBalancer"] == {"Policy": "ring_hash",
                                        "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}
        split = json.loads(mesh("config", "read", *addr, "-kind", "service-splitter", "-name", "dc-cli").stdout)
        assert split["Splits"][1] == {"Weight": 25, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-canary": "1"}}}
        out = mesh("config", "list", *addr, "-kind", "service-resolver")
        assert "dc-cli" in out.stdout.split()
        # deleting the resolver under the splitter's subsets is refused, one line, exit 1
        out = mesh("config", "delete", *addr, "-kind", "service-resolver", "-name", "dc-cli")
        assert out.returncode == 1 and 'does not have a subset named "v1"' in out.stderr
    finally:
        assert mesh("config", "delete", *addr, "-filename", str(splitter)).returncode == 0
        assert mesh("config", "delete", *addr, "-filename", str(resolver)).returncode == 0
