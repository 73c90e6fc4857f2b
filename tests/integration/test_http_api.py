"""The HTTP API of a real `mesh agent -dev` process, as Consul clients use it."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.harness.cluster import Agent, HTTPError, retry


def raw_http(agent: Agent, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", agent.http_port), timeout=5) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_dev_agent_is_ready_in_under_two_seconds(dev):
    assert dev.ready_seconds < 2.0, dev.ready_seconds


def test_register_and_read_back_with_consul_headers(dev):
    assert dev.put("/v1/catalog/register", {
        "Node": "web-1", "Address": "10.0.0.5", "NodeMeta": {"env": "prod"},
        "Service": {"Service": "web", "Port": 8080, "Tags": ["v1", "primary"], "Meta": {"version": "1"}},
    }) is True
    body, headers = dev.request("GET", "/v1/catalog/service/web")
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"
    assert headers["X-Consul-LastContact"] == "0"
    (entry,) = body
    assert entry["ServiceName"] == "web" and entry["ServicePort"] == 8080 and entry["Node"] == "web-1"
    assert entry["Datacenter"] == "dc1" and entry["NodeMeta"] == {"env": "prod"}
    assert dev.get("/v1/catalog/services")["web"] == ["v1", "primary"]
    node = dev.get("/v1/catalog/node/web-1")
    assert node["Node"]["Address"] == "10.0.0.5" and "web" in node["Services"]
    assert dev.get("/v1/catalog/node-services/web-1")["Services"][0]["ID"] == "web"
    assert dev.get("/v1/catalog/datacenters") == ["dc1"]
    assert dev.get("/v1/catalog/service/WEB")  # names match case-insensitively


def test_unknown_things(dev):
    body, headers = dev.request("GET", "/v1/catalog/node/nope")
    assert body is None and int(headers["X-Consul-Index"]) >= 1
    assert dev.get("/v1/catalog/service/nope") == []
    with pytest.raises(HTTPError) as err:
        dev.get("/v1/no/such/path")
    assert err.value.status == 404 and err.value.headers["Content-Type"].startswith("text/plain")
    with pytest.raises(HTTPError) as err:
        dev.request("POST", "/v1/catalog/nodes", body={})
    assert err.value.status == 405
    with pytest.raises(HTTPError) as err:
        dev.get("/v1/catalog/nodes?dc=elsewhere")
    assert err.value.status == 500 and "No path to datacenter" in err.value.body


@pytest.mark.parametrize(
    "raw, needle",
    [
        (b"{not json", "decode"),
        (b"", "empty"),
        (b'["a"]', "JSON object"),
        (b'{"Node": 1, "Address": "x"}', "must be a string"),
        (b'{"Node": "n", "Address": "x", "Service": {"Service": "s", "Port": "eighty"}}', "Port"),
        (b'{"Node": "n", "Address": "x", "Service": {"Service": "s", "Port": 99999}}', "out of range"),
        (b'{"Node": "n", "Address": "x", "Check": {"Name": "c", "ServiceID": "missing"}}', "Missing service"),
    ],
)
def test_bad_register_bodies_get_400_with_a_reason(dev, raw, needle):
    with pytest.raises(HTTPError) as err:
        dev.request("PUT", "/v1/catalog/register", raw=raw)
    assert err.value.status == 400 and needle in err.value.body
    assert dev.leader()  # still serving


def test_oversized_body_is_refused_and_server_keeps_serving(dev):
    big = json.dumps({"Node": "big", "Address": "x", "NodeMeta": {"k": "v" * (600 * 1024)}}).encode()
    with pytest.raises(HTTPError) as err:
        dev.request("PUT", "/v1/catalog/register", raw=big)
    assert err.value.status == 413
    assert dev.get("/v1/catalog/node/big") is None
    assert dev.leader()


def test_garbage_on_the_socket_does_not_hurt(dev):
    for junk in (b"\x00\xff" * 100 + b"\r\n\r\n", b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                 b"PUT /v1/catalog/register HTTP/1.1\r\n" + b"X" * 70000 + b"\r\n\r\n"):
        try:
            raw_http(dev, junk)
        except OSError:
            pass
    assert dev.leader()


def test_bad_query_parameters(dev):
    for path, needle in [("/v1/catalog/nodes?index=abc", "index"), ("/v1/catalog/nodes?index=1&wait=10", "wait"),
                         ("/v1/catalog/nodes?wait=soon&index=1", "wait"), ("/v1/catalog/nodes?stale&consistent", "stale"),
                         ("/v1/catalog/nodes?filter=Node%20%3D%3D", "expression"),
                         ("/v1/catalog/nodes?node-meta=nocolon", "node-meta")]:
        with pytest.raises(HTTPError) as err:
            dev.get(path)
        assert err.value.status == 400 and needle in err.value.body.lower() or needle in err.value.body, path


def test_filter_node_meta_tag_pretty(dev):
    dev.put("/v1/catalog/register", {"Node": "db-1", "Address": "10.0.0.6", "NodeMeta": {"env": "dev"},
                                     "Service": {"Service": "db", "Tags": ["primary"], "Port": 5432}})
    dev.put("/v1/catalog/register", {"Node": "db-2", "Address": "10.0.0.7", "NodeMeta": {"env": "prod"},
                                     "Service": {"Service": "db", "Tags": ["replica"], "Port": 5432}})
    assert [e["Node"] for e in dev.get("/v1/catalog/service/db?tag=replica")] == ["db-2"]
    assert [e["Node"] for e in dev.get("/v1/catalog/service/db?node-meta=env:dev")] == ["db-1"]
    assert [n["Node"] for n in dev.get('/v1/catalog/nodes?filter=Meta.env%20%3D%3D%20"prod"')] == ["db-2", "web-1"]
    assert [e["Node"] for e in dev.get('/v1/catalog/service/db?filter="primary"%20in%20ServiceTags')] == ["db-1"]
    raw, _ = dev.request("GET", "/v1/catalog/datacenters?pretty")
    assert raw == ["dc1"]
    text = raw_http(dev, b"GET /v1/catalog/datacenters?pretty HTTP/1.0\r\n\r\n")
    assert b'[\n    "dc1"\n]' in text


def test_blocking_query_wakes_on_change_and_times_out_with_same_index(dev):
    dev.put("/v1/catalog/register", {"Node": "b-0", "Address": "10.0.0.8", "Service": {"Service": "blocky"}})
    _, headers = dev.request("GET", "/v1/catalog/service/blocky")
    index = int(headers["X-Consul-Index"])
    t0 = time.monotonic()
    _, headers2 = dev.request("GET", f"/v1/catalog/service/blocky?index={index}&wait=300ms")
    assert 0.25 < time.monotonic() - t0 < 2
    assert int(headers2["X-Consul-Index"]) == index

    result: dict = {}

    def waiter() -> None:
        t = time.monotonic()
        result["body"], result["headers"] = dev.request("GET", f"/v1/catalog/service/blocky?index={index}&wait=30s")
        result["elapsed"] = time.monotonic() - t

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.3)
    # an unrelated service must not wake the watcher
    dev.put("/v1/catalog/register", {"Node": "other", "Address": "10.9.9.9", "Service": {"Service": "unrelated"}})
    time.sleep(0.3)
    assert th.is_alive()
    dev.put("/v1/catalog/register", {"Node": "b-1", "Address": "10.0.0.8", "Service": {"Service": "blocky"}})
    th.join(5)
    assert not th.is_alive() and result["elapsed"] < 3
    assert int(result["headers"]["X-Consul-Index"]) > index
    assert [e["Node"] for e in result["body"]] == ["b-0", "b-1"]


def test_blocking_query_with_newer_index_returns_at_once(dev):
    _, headers = dev.request("GET", "/v1/catalog/nodes")
    index = int(headers["X-Consul-Index"])
    t0 = time.monotonic()
    dev.get(f"/v1/catalog/nodes?index={max(1, index - 1)}&wait=10s")
    assert time.monotonic() - t0 < 1


def test_deregister_semantics(dev):
    dev.put("/v1/catalog/register", {"Node": "gone", "Address": "10.0.1.1", "Service": {"Service": "tmp"},
                                     "Check": {"Name": "tmp-check", "ServiceID": "tmp", "Status": "passing"}})
    first = dev.get("/v1/catalog/service/tmp")[0]
    dev.put("/v1/catalog/register", {"Node": "gone", "Address": "10.0.1.1", "Service": {"Service": "tmp", "Port": 9}})
    again = dev.get("/v1/catalog/service/tmp")[0]
    assert again["CreateIndex"] == first["CreateIndex"] and again["ModifyIndex"] > first["ModifyIndex"]
    assert dev.put("/v1/catalog/deregister", {"Node": "gone"}) is True
    assert dev.get("/v1/catalog/node/gone") is None and dev.get("/v1/catalog/service/tmp") == []


def test_status_operator_agent_metrics(dev):
    assert dev.get("/v1/status/leader") == f"127.0.0.1:{dev.server_port}"
    assert dev.get("/v1/status/peers") == [f"127.0.0.1:{dev.server_port}"]
    conf = dev.get("/v1/operator/raft/configuration")
    assert conf["Servers"][0]["Leader"] is True and conf["Servers"][0]["Node"] == "devnode"
    me = dev.get("/v1/agent/self")
    assert me["Config"]["NodeName"] == "devnode" and me["Config"]["Datacenter"] == "dc1"
    assert me["DebugConfig"]["HTTPPort"] == dev.http_port
    assert me["DebugConfig"]["DNSPort"] == -1
    members = dev.get("/v1/agent/members")
    assert members[0]["Name"] == "devnode" and members[0]["Tags"]["role"] == "consul"
    metrics = dev.get("/v1/agent/metrics")
    names = {g["Name"] for g in metrics["Gauges"]} | {c["Name"] for c in metrics["Counters"]}
    assert "mesh.raft.commit.index" in names and "mesh.http.requests" in names
    prom = dev.get("/v1/agent/metrics?format=prometheus").decode()
    assert "mesh_raft_apply_seconds_bucket" in prom and 'mesh_http_requests_total{code="200"' in prom


def test_py_consul_client_works_unchanged(dev):
    consul = pytest.importorskip("consul")
    c = consul.Consul(host="127.0.0.1", port=dev.http_port)
    assert c.status.leader() == f"127.0.0.1:{dev.server_port}"
    assert c.catalog.register("pyc", "10.7.7.7", service={"service": "pysvc", "port": 1234, "tags": ["x"]})
    index, nodes = c.catalog.service("pysvc")
    assert index and nodes[0]["ServicePort"] == 1234
    index, services = c.catalog.services()
    assert "pysvc" in services
    _, node = c.catalog.node("pyc")
    assert node["Node"]["Address"] == "10.7.7.7"
    assert c.catalog.datacenters() == ["dc1"]
    assert c.catalog.deregister("pyc")
    assert c.agent.self()["Config"]["NodeName"] == "devnode"


def test_py_consul_connect_ca_calls_work_unchanged(dev):
    consul = pytest.importorskip("consul")
    c = consul.Consul(host="127.0.0.1", port=dev.http_port)
    retry(lambda: c.connect.ca.roots()["Roots"], 10, 0.1, "CA initialized")
    roots = c.connect.ca.roots()  # py-consul sends ?pem=0: JSON, not PEM
    assert roots["ActiveRootID"] == c.agent.connect.ca.roots()["ActiveRootID"]
    before = c.connect.ca.configuration()
    assert before["Provider"] == "consul"
    assert c.connect.ca.update_configuration("consul", {**before["Config"], "LeafCertTTL": "48h"}) is True
    assert c.connect.ca.configuration()["Config"]["LeafCertTTL"] == "48h"
    with pytest.raises(consul.exceptions.BadRequest):
        c.connect.ca.update_configuration("consul", {"PrivateKeyType": "dsa"})
    c.connect.ca.update_configuration("consul", before["Config"])
    c.agent.service.register("pyleaf", port=4321)
    try:
        leaf = c.agent.connect.ca.leaf("pyleaf")
        assert leaf["ServiceURI"].endswith("/svc/pyleaf") and leaf["PrivateKeyPEM"]
    finally:
        c.agent.service.deregister("pyleaf")


def test_port_zero_and_disabled_listeners(tmp_path):
    log = tmp_path / "z.log"
    proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-http-port", "0",
                             "-server-port", "0", "-raft-port", "0", "-dns-port", "-1"],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd="/")
    try:
        port = retry(lambda: re.search(rb"http=127\.0\.0\.1:(\d+)", log.read_bytes()), 10, what="startup log")
        agent = Agent("z", str(tmp_path), int(port.group(1)), 0, 0, [], str(log))
        retry(lambda: agent.leader(), 10)
        assert agent.get("/v1/agent/self")["DebugConfig"]["HTTPPort"] == int(port.group(1))
    finally:
        proc.kill()
        proc.wait()
    proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-http-port", "-1",
                             "-server-port", "0", "-raft-port", "0", "-dns-port", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
    try:
        out = b""
        deadline = time.monotonic() + 10
        while b"agent_started" not in out and time.monotonic() < deadline:
            out += proc.stdout.readline()
        assert b"http=127.0.0.1:-1" in out
    finally:
        proc.kill()
        proc.wait()


def test_single_server_writes_do_not_wait_for_a_tick(dev):
    """A one-server cluster gets no follower acks to wake Raft's loop; without the
    adapter's nudge every write waited out a 50 ms poll (100 writes took over 5 s)."""
    t0 = time.monotonic()
    for i in range(100):
        dev.put("/v1/catalog/register", {"Node": f"quick-{i}", "Address": "10.0.0.1"})
    assert time.monotonic() - t0 < 3


def test_raft_and_rpc_ports_bind_only_the_bind_address(dev):
    # the agent binds 127.0.0.1; another loopback address reaches a 0.0.0.0 listener,
    # not one bound to 127.0.0.1
    for port in (dev.raft_port, dev.server_port):
        with socket.socket() as ok:
            ok.settimeout(2)
            ok.connect(("127.0.0.1", port))
        with socket.socket() as other, pytest.raises(OSError):
            other.settimeout(2)
            other.connect(("127.0.0.2", port))


def test_effective_consistency_header(dev):
    for query, mode in (("", "leader"), ("?stale", "stale"), ("?consistent", "consistent")):
        _, headers = dev.request("GET", f"/v1/catalog/nodes{query}")
        assert headers["X-Consul-Effective-Consistency"] == mode


def test_log_json(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-log-json",
                             "-http-port", "0", "-server-port", "0", "-raft-port", "0", "-dns-port", "-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
    try:
        line = b""
        deadline = time.monotonic() + 10
        while b"agent_started" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        event = json.loads(line)
        assert event["event"] == "agent_started" and event["component"] == "agent" and "http" in event
    finally:
        proc.kill()
        proc.wait()
