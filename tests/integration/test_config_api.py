"""/v1/config and `mesh config` against a real dev agent: writes, reads, lists, deletes,
CAS, blocking reads, Consul's error bodies, the CLI end to end and py-consul's calls.

The dev agent is shared with the other integration tests: entries here use names of
their own, and proxy-defaults (a singleton) is deleted by the test that writes it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from tests.harness.cluster import HTTPError


def mesh(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/", input=stdin)


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
