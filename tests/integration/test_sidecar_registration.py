"""Sidecar registration on a real single server with a data-dir: from a config file,
`/v1/agent/service/register` and `mesh services register`; Consul's shapes from the
agent and the catalog's connect view; the sidecar leaves with its parent; its port
survives a restart and a reload."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.harness.cluster import Agent, HTTPError, free_port, retry

WEB_HCL = """
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  connect {
    sidecar_service {
      proxy {
        config { local_connect_timeout_ms = 250 }
        upstreams = [{ destination_name = "api", local_bind_port = 9191 }]
      }
    }
  }
}
"""
DB_HCL = 'service {\n  name = "db"\n  port = 5432\n  connect {\n    sidecar_service {}\n  }\n}\n'


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


@pytest.fixture
def server(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "web.hcl").write_text(WEB_HCL)
    agent = Agent("side", str(tmp_path / "data"), free_port(), free_port(), free_port(), [],
                  str(tmp_path / "side.log"))
    agent.args = ["-server", "-bootstrap-expect", "1", "-node", "side", "-data-dir", agent.data_dir,
                  "-bind", "127.0.0.1", "-http-port", str(agent.http_port), "-server-port", str(agent.server_port),
                  "-raft-port", str(agent.raft_port), "-dns-port", "-1", "-config-dir", str(conf),
                  "-sidecar-min-port", "23000", "-sidecar-max-port", "23010", "-ae-interval", "1s"]

    def start() -> None:
        agent.start()
        retry(lambda: agent.leader(), 30, 0.1, "single server leader")

    start()
    try:
        yield agent, conf, tmp_path, start
    except BaseException:
        print(agent.log_tail())
        raise
    finally:
        agent.kill()


def _ports(agent: Agent) -> dict[str, int]:
    return {sid: s["Port"] for sid, s in agent.get("/v1/agent/services").items() if s.get("Kind") == "connect-proxy"}


def test_sidecars_from_every_source_their_shapes_lifecycle_and_ports(server):
    agent, conf, tmp_path, start = server
    # from the config file: Consul's shape, snake_case made CamelCase, Config as written
    side = agent.get("/v1/agent/service/web-sidecar-proxy")
    assert (side["Kind"], side["ID"], side["Service"], side["Port"], side["Tags"]) == (
        "connect-proxy", "web-sidecar-proxy", "web-sidecar-proxy", 23000, ["v1"])
    assert side["Proxy"] == {
        "DestinationServiceName": "web", "DestinationServiceID": "web", "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080, "Config": {"local_connect_timeout_ms": 250},
        "Upstreams": [{"DestinationType": "service", "DestinationName": "api", "LocalBindPort": 9191,
                       "MeshGateway": {}}],
        "MeshGateway": {}, "Expose": {},
    }
    assert side["ContentHash"] and "Connect" not in agent.get("/v1/agent/service/web")
    checks = agent.get("/v1/agent/checks")
    assert checks["service:web-sidecar-proxy:1"]["Name"] == "Connect Sidecar Listening"
    assert checks["service:web-sidecar-proxy:1"]["Definition"]["TCP"] == "127.0.0.1:23000"
    assert checks["service:web-sidecar-proxy:2"]["Name"] == "Connect Sidecar Aliasing web"

    # through the API, CamelCase and snake_case, and through the CLI
    agent.put("/v1/agent/service/register", {"Name": "api", "Port": 9000, "Connect": {"SidecarService": {}}})
    agent.put("/v1/agent/service/register", {"name": "cache", "port": 7000,
                                             "connect": {"sidecar_service": {"port": 24000}}})
    (tmp_path / "db.hcl").write_text(DB_HCL)
    out = mesh("services", "register", "-http-addr", agent.http, str(tmp_path / "db.hcl"))
    assert out.returncode == 0, out.stderr
    assert _ports(agent) == {"web-sidecar-proxy": 23000, "api-sidecar-proxy": 23001,
                             "cache-sidecar-proxy": 24000, "db-sidecar-proxy": 23002}

    # bad input: a 400 naming the field, nothing registered
    with pytest.raises(HTTPError) as err:
        agent.put("/v1/agent/service/register", {"Name": "bad", "Port": 1,
                                                 "Connect": {"SidecarService": {"ID": "mine"}}})
    assert err.value.status == 400 and "A SidecarService cannot specify an ID" in err.value.body
    assert "bad" not in agent.get("/v1/agent/services")

    # the catalog's connect view, once anti-entropy has synced
    def web_entries():
        entries = agent.get("/v1/health/connect/web")
        return entries if entries and entries[0]["Checks"] else None

    (entry,) = retry(web_entries, 15, 0.1, "web's sidecar in the catalog")
    assert entry["Service"]["ID"] == "web-sidecar-proxy"
    assert entry["Service"]["Proxy"]["DestinationServiceName"] == "web"
    assert "Connect Sidecar Listening" in {c["Name"] for c in entry["Checks"]}

    # deregistering the parent deregisters its sidecar, locally and in the catalog
    agent.put("/v1/agent/service/deregister/api")
    assert "api-sidecar-proxy" not in agent.get("/v1/agent/services")
    assert not any(c["ServiceID"] == "api-sidecar-proxy" for c in agent.get("/v1/agent/checks").values())
    retry(lambda: agent.get("/v1/catalog/service/api-sidecar-proxy") == [], 15, 0.1, "sidecar gone from catalog")

    ports_file = os.path.join(agent.data_dir, "local", "sidecar-ports.json")
    assert os.stat(ports_file).st_mode & 0o777 == 0o600

    # a restart keeps every port (config, API and CLI registrations)
    agent.stop()
    start()
    assert _ports(agent) == {"web-sidecar-proxy": 23000, "cache-sidecar-proxy": 24000,
                             "db-sidecar-proxy": 23002}
    agent.put("/v1/agent/service/register", {"Name": "api", "Port": 9000, "Connect": {"SidecarService": {}}})
    assert _ports(agent)["api-sidecar-proxy"] == 23001  # the lowest free one again

    # a reload that drops the parent from the config files drops its sidecar
    (conf / "web.hcl").unlink()
    out = mesh("reload", "-http-addr", agent.http)
    assert out.returncode == 0, out.stderr
    assert "web-sidecar-proxy" not in agent.get("/v1/agent/services")
    (conf / "web.hcl").write_text(WEB_HCL)
    assert mesh("reload", "-http-addr", agent.http).returncode == 0
    assert _ports(agent)["web-sidecar-proxy"] == 23000
