"""3 servers + 2 client agents as processes: local services, health, liveness, anti-entropy.

One cluster for the module (a cluster start is most of each test's time): the tests run
in file order, the ones that kill or remove c2 last."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest

from tests.harness.cluster import Cluster, HTTPError, retry

pytestmark = pytest.mark.cluster

LIVENESS = 3.0


class Backend:
    """A tiny HTTP service whose health endpoint a test can break."""

    def __init__(self) -> None:
        self.healthy = True
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                code = 200 if outer.healthy else 500
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok" if code == 200 else b"broken")

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def backend():
    b = Backend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory, backend):
    tmp_path = tmp_path_factory.mktemp("clients")
    cluster = Cluster(tmp_path, 3, extra_args=["-liveness-timeout", f"{LIVENESS}s"])
    config = tmp_path / "web.hcl"
    config.write_text(f'''
service {{
  name = "web"
  id   = "web-1"
  port = {backend.port}
  tags = ["v1"]
  check {{
    http     = "http://127.0.0.1:{backend.port}/health"
    interval = "200ms"
    timeout  = "1s"
  }}
}}
''')
    try:
        cluster.start()
        cluster.start_client("c1", ["-config-file", str(config), "-ae-interval", "2s"])
        cluster.start_client("c2", ["-ae-interval", "2s"])
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def mesh(shared, request):
    yield shared
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(shared.logs())


def passing(agent, service: str) -> list[str]:
    return [e["Service"]["ID"] for e in agent.get(f"/v1/health/service/{service}?passing&stale")]


def serf_status(agent, node: str) -> str | None:
    for check in agent.get(f"/v1/health/node/{node}?stale"):
        if check["CheckID"] == "serfHealth":
            return check["Status"]
    return None


def test_client_service_reaches_every_server_and_follows_its_http_check(mesh, backend):
    c1 = mesh.clients[0]
    for server in mesh.agents:
        retry(lambda s=server: passing(s, "web") == ["web-1"], 15, 0.1, f"web passing on {server.name}")
    entry = mesh.agents[0].get("/v1/health/service/web")[0]
    assert entry["Node"]["Node"] == "c1" and entry["Service"]["Port"] == backend.port
    assert {c["CheckID"] for c in entry["Checks"]} == {"serfHealth", "service:web-1"}
    # the HTTP check fails: web leaves ?passing everywhere, and a client agent answers too
    backend.healthy = False
    retry(lambda: passing(mesh.agents[1], "web") == [], 5, 0.1, "web dropped from ?passing")
    assert passing(c1, "web") == []
    assert mesh.agents[2].get("/v1/health/service/web")[0]["Checks"][1]["Status"] == "critical"
    backend.healthy = True
    retry(lambda: passing(mesh.agents[2], "web") == ["web-1"], 5, 0.1, "web back in ?passing")


def test_blocking_health_query_wakes_for_its_service_only(mesh):
    c2 = mesh.clients[1]
    c2.put("/v1/agent/service/register", {"Name": "api", "ID": "api-1", "Port": 9000, "Check": {"TTL": "60s"}})
    c2.put("/v1/agent/service/register", {"Name": "other", "Port": 9001, "Check": {"TTL": "60s"}})
    server = mesh.agents[0]
    retry(lambda: len(server.get("/v1/health/service/api")) == 1, 10, 0.1)
    _, headers = server.request("GET", "/v1/health/service/api")
    index = int(headers["X-Consul-Index"])
    result: dict = {}

    def watch() -> None:
        t0 = time.monotonic()
        body, h = server.request("GET", f"/v1/health/service/api?index={index}&wait=20s", timeout=30)
        result.update(body=body, index=int(h["X-Consul-Index"]), at=time.monotonic(), took=time.monotonic() - t0)

    th = threading.Thread(target=watch)
    th.start()
    time.sleep(0.3)
    c2.put("/v1/agent/check/pass/service:other")  # another service: must not wake the watcher
    time.sleep(1.0)
    assert th.is_alive(), "woke for a change to another service"
    changed_at = time.monotonic()
    c2.put("/v1/agent/check/pass/service:api-1?note=fine")
    th.join(10)
    assert not th.is_alive()
    assert result["at"] - changed_at < 1.0, result["at"] - changed_at
    assert result["index"] > index
    assert result["body"][0]["Checks"][-1]["Status"] == "passing"


def test_bad_service_definitions_are_400_naming_the_field(mesh):
    c1 = mesh.clients[0]
    cases = [
        ({"Port": 80}, "name"),
        ({"Name": "x", "Port": 70000}, "Port"),
        ({"Name": "x", "Check": {"HTTP": "http://127.0.0.1:1/", "Interval": "soon"}}, "Interval"),
        ({"Name": "x", "Check": {"Docker": "abc", "DockerContainerID": "abc", "Interval": "10s"}}, "not supported"),
        ({"Name": "x", "Check": {"Args": ["/bin/true"], "Interval": "10s"}}, "Scripts are disabled"),
    ]
    for body, needle in cases:
        with pytest.raises(HTTPError) as err:
            c1.put("/v1/agent/service/register", body)
        assert err.value.status == 400 and needle.lower() in err.value.body.lower(), (body, err.value.body)
    assert c1.get("/v1/agent/self")
    assert "x" not in c1.get("/v1/agent/services")


def test_catalog_deregistration_of_an_agent_service_is_undone(mesh):
    server = mesh.agents[0]
    retry(lambda: server.get("/v1/catalog/service/web"), 10, 0.1)
    assert server.put("/v1/catalog/deregister", {"Node": "c1", "ServiceID": "web-1"}) is True
    assert server.get("/v1/catalog/service/web?consistent") == []
    retry(lambda: server.get("/v1/catalog/service/web?stale"), 10, 0.2, "anti-entropy restores web-1")


def test_killed_client_goes_critical_and_comes_back_with_the_same_ids(mesh):
    c1, c2 = mesh.clients
    c2.put("/v1/agent/service/register", {"Name": "db", "ID": "db/primary:1", "Port": 5432})
    server = mesh.agents[1]
    retry(lambda: "db/primary:1" in server.get("/v1/catalog/node/c2?stale")["Services"], 10, 0.1)
    assert c2.get("/v1/agent/service/db/primary:1")["ID"] == "db/primary:1"  # IDs with / and : in paths
    retry(lambda: serf_status(server, "c2") == "passing", 10, 0.1)
    c2.kill()
    t0 = time.monotonic()
    retry(lambda: serf_status(server, "c2") == "critical", LIVENESS + 5, 0.1, "serfHealth critical")
    assert time.monotonic() - t0 < LIVENESS + 3
    assert "db" not in [e["Service"]["Service"] for e in server.get("/v1/health/service/db?passing&stale")]
    c2.start()
    retry(lambda: serf_status(server, "c2") == "passing", 15, 0.1, "serfHealth passing after restart")
    retry(lambda: "db/primary:1" in server.get("/v1/catalog/node/c2?stale")["Services"], 10, 0.1)
    assert "db/primary:1" in c2.get("/v1/agent/services")  # persisted in the data-dir


def test_leave_removes_the_node_and_members_show_roles(mesh):
    c1, c2 = mesh.clients
    server = mesh.agents[0]
    members = retry(lambda: [m for m in c1.get("/v1/agent/members") if m["Name"] in ("c1", "c2", "s1")]
                    if len(c1.get("/v1/agent/members")) == 5 else None, 10, 0.2, "five members")
    roles = {m["Name"]: m["Tags"]["role"] for m in members}
    assert roles == {"c1": "node", "c2": "node", "s1": "consul"}
    out = subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "leave", "-http-addr", c2.http],
                         capture_output=True, text=True, timeout=30, cwd="/")
    assert out.returncode == 0, out.stderr
    c2.proc.wait(10)
    retry(lambda: server.get("/v1/catalog/node/c2?stale") is None, 5, 0.1, "left node deregistered")
    listing = subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "members", "-http-addr", c1.http],
                             capture_output=True, text=True, timeout=30, cwd="/").stdout
    line = next(line for line in listing.splitlines() if line.startswith("c2"))
    assert "left" in line
