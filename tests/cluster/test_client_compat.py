"""Real Consul clients against a cluster of mesh agents: py-consul, Prometheus-style
service discovery, and the node `consul` package."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from tests.harness.cluster import Cluster, retry

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("compat"), 3)
    try:
        cluster.start()
        cluster.start_client("app-1", ["-ae-interval", "2s"])
        yield cluster
    finally:
        cluster.stop()


def test_py_consul_agent_catalog_health_status(mesh):
    consul = pytest.importorskip("consul")
    agent = mesh.clients[0]
    c = consul.Consul(host="127.0.0.1", port=agent.http_port)
    assert c.agent.service.register("pyweb", service_id="pyweb-1", port=8080, tags=["a"],
                                    check=consul.Check.ttl("30s"))
    assert "pyweb-1" in c.agent.services()
    assert c.agent.checks()["service:pyweb-1"]["Status"] == "critical"
    assert c.agent.check.ttl_pass("service:pyweb-1", notes="all good")
    index, nodes = retry(lambda: (lambda r: r if r[1] else None)(c.health.service("pyweb", passing=True)), 10)
    assert nodes[0]["Service"]["ID"] == "pyweb-1" and nodes[0]["Node"]["Node"] == "app-1"
    _, services = c.catalog.services()
    assert services["pyweb"] == ["a"]
    _, checks = c.health.checks("pyweb")
    assert checks[0]["Output"] == "all good"
    _, state = c.health.state("passing")
    assert any(ch["CheckID"] == "service:pyweb-1" for ch in state)
    assert c.status.leader() in [s.rpc for s in mesh.agents]
    assert sorted(c.status.peers()) == sorted(s.rpc for s in mesh.agents)
    retry(lambda: {m["Name"] for m in c.agent.members()} >= {"app-1", "s1", "s2", "s3"}, 10, 0.2)
    assert c.agent.maintenance(True, "upgrade")
    assert c.agent.checks()["_node_maintenance"]["Notes"] == "upgrade"
    assert c.agent.maintenance(False)
    assert c.agent.service.deregister("pyweb-1")
    retry(lambda: c.catalog.service("pyweb")[1] == [], 10)


def test_prometheus_style_discovery(mesh):
    """What Prometheus' consul_sd does: /v1/agent/self for the datacenter, then blocking
    ?stale watches on the service list and on each service's health."""
    agent = mesh.clients[0]
    assert agent.get("/v1/agent/self")["Config"]["Datacenter"] == "dc1"
    agent.put("/v1/agent/service/register", {"Name": "metrics", "Port": 9100, "Check": {"TTL": "30s"}})
    services, headers = agent.request("GET", "/v1/catalog/services?stale")
    index = int(headers["X-Consul-Index"])
    assert "metrics" in services or retry(lambda: "metrics" in agent.get("/v1/catalog/services?stale"), 10)
    entries, headers = agent.request("GET", "/v1/health/service/metrics?stale")
    assert entries and entries[0]["Service"]["Port"] == 9100
    result: dict = {}

    def watch() -> None:
        """Prometheus' loop: block on the last index until the service list changes."""
        last = index
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            body, h = agent.request("GET", f"/v1/catalog/services?stale&index={last}&wait=15s", timeout=30)
            new = int(h["X-Consul-Index"])
            assert new >= last
            last = new
            if "exporter" in body:
                result.update(body=body, index=new)
                return

    _, headers = agent.request("GET", "/v1/catalog/services?stale")
    index = int(headers["X-Consul-Index"])
    th = threading.Thread(target=watch)
    th.start()
    time.sleep(0.3)
    agent.put("/v1/agent/service/register", {"Name": "exporter", "Port": 9200})
    th.join(20)
    assert not th.is_alive() and "exporter" in result["body"] and result["index"] > index


def test_node_consul_client(mesh, tmp_path):
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node and npm are needed for the node `consul` client test (apt-get install nodejs npm)")
    install = subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "consul@2"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=180)
    if install.returncode != 0 or not os.path.isdir(tmp_path / "node_modules" / "consul"):
        pytest.skip(f"could not install the npm package `consul`: {install.stderr.strip()[-200:]}")
    agent = mesh.clients[0]
    script = tmp_path / "client.mjs"
    script.write_text(f"""
import Consul from "consul";
const consul = new Consul({{ host: "127.0.0.1", port: {agent.http_port} }});
await consul.agent.service.register({{ name: "nodeweb", id: "nodeweb-1", port: 3000, check: {{ ttl: "30s" }} }});
await consul.agent.check.pass({{ id: "service:nodeweb-1", note: "from node" }});
let healthy = [];
for (let i = 0; i < 50 && healthy.length === 0; i++) {{
  healthy = await consul.health.service({{ service: "nodeweb", passing: true }});
  if (healthy.length === 0) await new Promise(r => setTimeout(r, 100));
}}
const services = await consul.catalog.service.list();
const leader = await consul.status.leader();
const members = await consul.agent.members();
console.log(JSON.stringify({{ healthy, services, leader, members: members.map(m => m.Name) }}));
""")
    out = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["healthy"][0]["Service"]["ID"] == "nodeweb-1"
    assert result["healthy"][0]["Checks"][-1]["Output"] == "from node"
    assert "nodeweb" in result["services"]
    assert result["leader"] in [s.rpc for s in mesh.agents]
    assert "app-1" in result["members"]
