"""The agent API and its CLI on a real dev agent: local services, checks, reload."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.harness.cluster import Agent, HTTPError, free_port, retry


def mesh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_register_check_update_and_agent_health_codes(dev):
    dev.put("/v1/agent/service/register", {"name": "pay", "id": "pay-1", "port": 7000,
                                           "checks": [{"ttl": "30s"}, {"ttl": "30s", "status": "passing"}]})
    checks = dev.get("/v1/agent/checks")
    assert checks["service:pay-1:1"]["Status"] == "critical" and checks["service:pay-1:2"]["Status"] == "passing"
    with pytest.raises(HTTPError) as err:
        dev.get("/v1/agent/health/service/name/pay")
    assert err.value.status == 503
    dev.put("/v1/agent/check/update/service:pay-1:1", {"Status": "warning", "Output": "slow"})
    with pytest.raises(HTTPError) as err:
        dev.get("/v1/agent/health/service/id/pay-1")
    assert err.value.status == 429 and '"AggregatedStatus":"warning"' in err.value.body
    dev.put("/v1/agent/check/pass/service:pay-1:1")
    body, _ = dev.request("GET", "/v1/agent/health/service/id/pay-1?format=text")
    assert body == b"passing"
    with pytest.raises(HTTPError) as err:
        dev.get("/v1/agent/health/service/name/nothing")
    assert err.value.status == 404
    with pytest.raises(HTTPError) as err:
        dev.put("/v1/agent/check/update/service:pay-1:1", {"Status": "great"})
    assert err.value.status == 400
    with pytest.raises(HTTPError) as err:
        dev.put("/v1/agent/check/pass/no-such-check")
    assert err.value.status == 404
    retry(lambda: [e["Service"]["ID"] for e in dev.get("/v1/health/service/pay?passing")] == ["pay-1"], 5, 0.05)
    dev.put("/v1/agent/service/deregister/pay-1")
    with pytest.raises(HTTPError) as err:
        dev.put("/v1/agent/service/deregister/pay-1")
    assert err.value.status == 404
    retry(lambda: dev.get("/v1/catalog/service/pay") == [], 5, 0.05)


def test_service_hash_blocking(dev):
    dev.put("/v1/agent/service/register", {"Name": "hashy", "Port": 1})
    body, headers = dev.request("GET", "/v1/agent/service/hashy")
    digest = headers["X-Consul-ContentHash"]
    assert body["ContentHash"] == digest
    t0 = time.monotonic()
    dev.request("GET", f"/v1/agent/service/hashy?hash={digest}&wait=300ms")
    assert 0.25 < time.monotonic() - t0 < 2
    result: dict = {}

    def wait() -> None:
        result["body"], _ = dev.request("GET", f"/v1/agent/service/hashy?hash={digest}&wait=20s")

    th = threading.Thread(target=wait)
    th.start()
    time.sleep(0.3)
    dev.put("/v1/agent/service/register", {"Name": "hashy", "Port": 2})
    th.join(5)
    assert not th.is_alive() and result["body"]["Port"] == 2 and result["body"]["ContentHash"] != digest


def test_tokens_are_accepted_in_every_spelling(dev):
    import urllib.request

    for headers, query in (({"X-Consul-Token": "t"}, ""), ({"Authorization": "Bearer t"}, ""), ({}, "?token=t")):
        req = urllib.request.Request(f"http://{dev.http}/v1/agent/services{query}", headers=headers)
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200


def test_maintenance_modes(dev):
    dev.put("/v1/agent/service/register", {"Name": "maint", "Port": 1, "Check": {"TTL": "60s", "Status": "passing"}})
    dev.request("PUT", "/v1/agent/service/maintenance/maint?enable=true&reason=patching")
    checks = dev.get("/v1/agent/checks")
    assert checks["_service_maintenance:maint"]["Status"] == "critical"
    assert checks["_service_maintenance:maint"]["Notes"] == "patching"
    retry(lambda: dev.get("/v1/health/service/maint?passing") == [], 5, 0.05)
    out = mesh("maint", "-disable", "-service", "maint", "-http-addr", dev.http)
    assert out.returncode == 0, out.stderr
    assert "_service_maintenance:maint" not in dev.get("/v1/agent/checks")
    with pytest.raises(HTTPError) as err:
        dev.request("PUT", "/v1/agent/maintenance")
    assert err.value.status == 400
    dev.put("/v1/agent/service/deregister/maint")


def test_services_cli_register_and_deregister(dev, tmp_path):
    path = tmp_path / "svc.hcl"
    path.write_text('service {\n  name = "clisvc"\n  port = 4321\n  check {\n    ttl = "30s"\n  }\n}\n')
    out = mesh("services", "register", "-http-addr", dev.http, str(path))
    assert out.returncode == 0 and "Registered service: clisvc" in out.stdout
    assert dev.get("/v1/agent/service/clisvc")["Port"] == 4321
    out = mesh("services", "deregister", "-http-addr", dev.http, "-id", "clisvc")
    assert out.returncode == 0 and "Deregistered service: clisvc" in out.stdout
    bad = tmp_path / "bad.json"
    bad.write_text('{"service": {"name": "x", "port": "eighty"}}')
    out = mesh("services", "register", "-http-addr", dev.http, str(bad))
    assert out.returncode == 1 and "Port" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def _start_agent(tmp_path, config_dir, extra=()):
    agent = Agent("r", str(tmp_path / "data"), free_port(), free_port(), free_port(), [], str(tmp_path / "r.log"))
    agent.args = ["-dev", "-node", "reloader", "-http-port", str(agent.http_port), "-server-port",
                  str(agent.server_port), "-raft-port", str(agent.raft_port), "-dns-port", "-1",
                  "-config-dir", str(config_dir), *extra]
    agent.start()
    retry(lambda: agent.leader(), 10, 0.05)
    return agent


def test_reload_by_sighup_and_cli_and_bad_files(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.json").write_text('{"service": {"name": "alpha", "port": 1}}')
    agent = _start_agent(tmp_path, conf)
    try:
        assert set(agent.get("/v1/agent/services")) >= {"alpha"}
        (conf / "b.hcl").write_text('service {\n  name = "beta"\n  port = 2\n}\n')
        os.kill(agent.proc.pid, signal.SIGHUP)
        retry(lambda: "beta" in agent.get("/v1/agent/services"), 5, 0.05, "SIGHUP reload")
        (conf / "a.json").unlink()
        out = mesh("reload", "-http-addr", agent.http)
        assert out.returncode == 0
        assert "alpha" not in agent.get("/v1/agent/services")
        (conf / "c.json").write_text('{"service": {"name": "gamma", "port": 99999}}')
        out = mesh("reload", "-http-addr", agent.http)
        assert out.returncode == 1 and "Port" in out.stderr
        assert set(agent.get("/v1/agent/services")) >= {"beta"}  # kept running as before
        os.kill(agent.proc.pid, signal.SIGHUP)
        time.sleep(0.3)
        assert agent.alive()
    finally:
        agent.kill()
    # a bad definition at start is one line and exit 1
    proc = subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-http-port", "0",
                           "-server-port", "0", "-raft-port", "0", "-dns-port", "-1", "-config-dir", str(conf)],
                          capture_output=True, text=True, timeout=30, cwd="/")
    assert proc.returncode == 1 and "Port" in proc.stderr


def test_deregister_critical_service_after(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    agent = _start_agent(tmp_path, conf)
    try:
        agent.put("/v1/agent/service/register", {"Name": "doomed", "Port": 1,
                                                 "Check": {"TTL": "60s", "DeregisterCriticalServiceAfter": "1s"}})
        retry(lambda: "doomed" not in agent.get("/v1/agent/services"), 6, 0.1, "reaped after 1s critical")
        retry(lambda: agent.get("/v1/catalog/service/doomed") == [], 5, 0.1)
    finally:
        agent.kill()


def test_leaf_requests_with_bad_input_get_400_with_the_reason(dev):
    retry(lambda: dev.get("/v1/connect/ca/roots")["Roots"], 10, 0.1, "CA initialized")
    dev.put("/v1/agent/service/register", {"Name": "my svc", "ID": "badname", "Port": 80})
    try:
        for path, reason in (("/v1/agent/connect/ca/leaf/my%20svc", "cannot be part of a SPIFFE identity"),
                             ("/v1/agent/connect/ca/leaf/" + "a" * 3000, "not registered"),
                             ("/v1/agent/connect/ca/leaf/nope", "not registered"),
                             ("/v1/agent/connect/ca/leaf/nope?index=x", "Invalid index")):
            with pytest.raises(HTTPError) as err:
                dev.get(path)
            assert err.value.status == 400 and reason in err.value.body, (path, err.value.body)
        roots = dev.get("/v1/connect/ca/roots")["ActiveRootID"]
        with pytest.raises(HTTPError) as err:
            dev.request("PUT", "/v1/connect/ca/configuration", {"Config": {}, "ForceRotation": "yes"})
        assert err.value.status == 400 and dev.get("/v1/connect/ca/roots")["ActiveRootID"] == roots
        assert [lf for lf in dev.get("/v1/agent/mesh/leaves")["Leaves"] if lf["Service"] == "nope"] == []
    finally:
        dev.request("PUT", "/v1/agent/service/deregister/badname")


def test_csr_rate_limit_makes_agents_wait_not_fail(dev):
    """CSRMaxPerSecond 2 and eight first leaves at once: all arrive (the agent retries
    the refused signings with backoff) and the server counted the refusals."""
    import concurrent.futures

    retry(lambda: dev.get("/v1/connect/ca/roots")["Roots"], 10, 0.1, "CA initialized")
    names = [f"limited-{i}" for i in range(8)]
    for name in names:
        dev.put("/v1/agent/service/register", {"Name": name, "Port": 80})
    before = dev.get("/v1/connect/ca/configuration")["Config"]
    dev.request("PUT", "/v1/connect/ca/configuration", {"Config": {**before, "CSRMaxPerSecond": 2}})
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            leaves = list(pool.map(lambda n: dev.get(f"/v1/agent/connect/ca/leaf/{n}", timeout=40), names))
        assert sorted(leaf["Service"] for leaf in leaves) == names
        text = dev.get("/v1/agent/metrics?format=prometheus").decode()
        refused = [line for line in text.splitlines() if line.startswith("mesh_ca_sign_rate_limited_total ")]
        assert refused and float(refused[0].split()[1]) > 0
        with pytest.raises(HTTPError) as err:
            dev.request("PUT", "/v1/connect/ca/configuration", {"Config": {**before, "CSRMaxPerSecond": -1}})
        assert err.value.status == 400 and "CSRMaxPerSecond" in err.value.body
    finally:
        dev.request("PUT", "/v1/connect/ca/configuration", {"Config": before})
        for name in names:
            dev.request("PUT", f"/v1/agent/service/deregister/{name}")
