"""/v1/agent/mesh/proxies, the ready call and `mesh connect proxies` over a real agent's
handlers in one process (not started: aiohttp's test server serves its app), with the
fake proxy command standing in for `mesh connect proxy`."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from aiohttp.test_utils import TestClient, TestServer

from mesh.agent.agent import Agent, _proxy_settings
from mesh.agent.config import AgentConfig, ConfigError, parse_args
from mesh.agent.http.app import build_app
from mesh.agent.proxies.plan import Policy
from mesh.agent.proxies.supervisor import ProxySupervisor, SidecarInfo, SupervisorSettings

from .test_proxy_supervisor import FAKE, Harness, until

P = "web-sidecar-proxy"


def sidecar(port: int, **extra: object) -> dict[str, object]:
    """web with a sidecar the agent expands (and so supervises), on `port`, with one TCP
    check every 30 s instead of the defaults (so a test sees the ready call run it)."""
    return {"Name": "web", "Port": 8080, "Connect": {"SidecarService": {
        "Port": port, "Check": {"Name": "Connect Sidecar Listening", "TCP": f"127.0.0.1:{port}", "Interval": "30s"},
        **extra}}}


@pytest.fixture
async def env(tmp_path):
    harness = Harness(tmp_path)
    cfg = AgentConfig(node_name="n1", server=True, dev=True, bootstrap_expect=1, bind_addr="127.0.0.1",
                      client_addr="127.0.0.1")
    agent = Agent(cfg)
    client = TestClient(TestServer(build_app(agent)))
    await client.start_server()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    yield agent, client, harness, listener
    await agent.proxies.detach()
    for sup in harness.supervisors:
        await sup.detach()
    await agent.checks.stop()
    await client.close()
    listener.close()
    harness.cleanup()


def supervise(agent: Agent, harness: Harness) -> ProxySupervisor:
    """The agent's own wanted() and wiring, with the fake proxy command."""
    settings = SupervisorSettings(directory=harness.directory, tick=0.05, command=harness.command,
                                  policy=Policy(initial_backoff=0.3, drain_timeout=1.0))
    agent.proxies = ProxySupervisor(settings, agent._wanted_proxies)
    return agent.proxies


async def test_supervised_sidecar_its_ready_call_and_the_cli(env):
    agent, client, harness, listener = env
    port = listener.getsockname()[1]
    sup = supervise(agent, harness)
    await sup.start(f"127.0.0.1:{client.port}")
    resp = await client.put("/v1/agent/service/register", json=sidecar(port, Token="sidecar-secret"))
    assert resp.status == 200, await resp.text()
    pid = (await until(harness.pids, what="the sidecar's proxy"))[0]
    marker = harness.started()[0]
    assert marker["argv"][-2:] == ["-sidecar-for", "web"]
    assert marker["env"]["CONSUL_HTTP_TOKEN"] == "sidecar-secret"
    assert marker["env"]["CONSUL_HTTP_ADDR"] == f"127.0.0.1:{client.port}"

    body = await (await client.get("/v1/agent/mesh/proxies")).json()
    assert list(body) == [P]
    entry = body[P]
    assert (entry["ProxyServiceID"], entry["DestinationServiceID"], entry["Supervised"], entry["PID"]) == \
        (P, "web", True, pid)
    assert entry["State"] == "starting"

    # the proxy opens its listener and says so: the TCP check runs at once, not in 30 s
    listener.listen()
    check_id = f"service:{P}"
    assert agent.local.checks[check_id].status == "critical"
    resp = await client.put(f"/v1/agent/mesh/proxies/{P}/ready", json={"PID": pid + 1})
    assert resp.status == 409 and f"pid {pid}" in await resp.text()
    resp = await client.put(f"/v1/agent/mesh/proxies/{P}/ready",
                            json={"PID": pid, "Listeners": {"Public": f"127.0.0.1:{port}",
                                                            "Upstreams": {"api": "127.0.0.1:9191"}},
                                  "LeafExpires": "2099-01-01T00:00:00Z", "ConfigAge": 1.5})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["State"] == "ready"
    await until(lambda: agent.local.checks[check_id].status == "passing", timeout=3, what="check passing")
    assert (await client.put(f"/v1/agent/mesh/proxies/{P}/ready")).status == 200  # repeated, empty body: "still ready"

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "connect", "proxies", "-http-addr", f"127.0.0.1:{client.port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].split()[:4] == ["Proxy", "Service", "PID", "State"]
    assert lines[1].split()[:5] == [P, "web", str(pid), "ready", "0"]
    assert f"127.0.0.1:{port}" in lines[1] and "1.5s" in lines[1]

    # deregistered: drained and stopped
    assert (await client.put(f"/v1/agent/service/deregister/{P}")).status == 200
    await until(lambda: harness.terminated(pid), timeout=3, what="drained")
    await until(lambda: agent.proxies.describe() == {}, timeout=3, what="forgotten")
    assert await (await client.get("/v1/agent/mesh/proxies")).json() == {}


async def test_ready_for_an_unknown_or_plain_service_is_a_404_and_bad_bodies_400(env):
    agent, client, harness, listener = env
    resp = await client.put("/v1/agent/mesh/proxies/nope/ready")
    assert resp.status == 404 and "unknown proxy service ID" in await resp.text()
    await client.put("/v1/agent/service/register", json={"Name": "web", "Port": 8080})
    assert (await client.put("/v1/agent/mesh/proxies/web/ready")).status == 404
    await client.put("/v1/agent/service/register", json=sidecar(listener.getsockname()[1]))
    for bad in ({"PID": "x"}, {"LeafExpires": "soon"}, [1]):
        resp = await client.put(f"/v1/agent/mesh/proxies/{P}/ready", json=bad)
        assert resp.status == 400, bad
    resp = await client.put(f"/v1/agent/mesh/proxies/{P}/ready", data=b"{not json")
    assert resp.status == 400


async def test_which_services_are_supervised(env):
    agent, client, harness, listener = env
    await client.put("/v1/agent/service/register", json=sidecar(21000))
    # a connect-proxy registered on its own (an Envoy the user runs, a proxy with
    # -register) is not the agent's to start, even for a service on this agent
    for proxy_id, dest in (("remote-proxy", "api"), ("hand-proxy", "web")):
        await client.put("/v1/agent/service/register", json={
            "Kind": "connect-proxy", "ID": proxy_id, "Name": proxy_id, "Port": 21001,
            "Proxy": {"DestinationServiceName": dest, "DestinationServiceID": dest}})
    assert agent._wanted_proxies() == {P: SidecarInfo("web", "")}
    body = await (await client.get("/v1/agent/mesh/proxies")).json()
    assert list(body) == [P] and body[P]["Supervised"] is True and body[P]["State"] == "pending"


async def test_the_cli_without_an_agent_says_so_in_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "connect", "proxies", "-http-addr", f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1 and out == b""
    assert len(err.decode().strip().splitlines()) == 1 and err.startswith(b"Error: ")


def test_flags_and_config_keys(tmp_path):
    cfg = parse_args(["-dev"])
    assert cfg.supervise_proxies is True and cfg.proxy_drain_timeout == 5.0
    settings = _proxy_settings(cfg)
    assert settings.enabled and settings.directory == "" and settings.policy.drain_timeout == 5.0
    assert parse_args(["-dev", "-supervise-proxies=false"]).supervise_proxies is False
    assert _proxy_settings(parse_args(["-dev", "-supervise-proxies=false"])).enabled is False
    assert _proxy_settings(parse_args(["-dev", "-http-port", "-1"])).enabled is False
    assert parse_args(["-dev", "-proxy-drain-timeout", "2s"]).proxy_drain_timeout == 2.0
    data_dir = tmp_path / "data"
    path = tmp_path / "agent.hcl"
    path.write_text(f'data_dir = "{data_dir}"\nserver = true\nbootstrap_expect = 1\n'
                    'supervise_proxies = false\nproxy_drain_timeout = "10s"\n')
    cfg = parse_args(["-config-file", str(path)])
    assert (cfg.supervise_proxies, cfg.proxy_drain_timeout) == (False, 10.0)
    on = parse_args(["-config-file", str(path), "-supervise-proxies"])
    assert _proxy_settings(on).directory == os.path.join(str(data_dir), "proxies")
    with pytest.raises(ConfigError, match="proxy_drain_timeout"):
        parse_args(["-dev", "-proxy-drain-timeout", "0s"])


def test_the_fake_proxy_command_line_is_what_adoption_checks():
    from mesh.agent.proxies.procfs import cmdline_matches
    from mesh.agent.proxies.supervisor import default_command

    assert cmdline_matches(default_command("web"), "web")
    assert default_command("web")[:3] == [sys.executable, "-m", "mesh"]
    assert cmdline_matches([sys.executable, FAKE, "/m", "connect", "proxy", "-sidecar-for", "web"], "web")
