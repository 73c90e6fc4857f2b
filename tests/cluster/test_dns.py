"""DNS on every agent, answered from the agent's local view of the catalog."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from tests.harness.cluster import Cluster, retry

pytestmark = pytest.mark.cluster


def query(port: int, name: str, qtype: str = "A", tcp: bool = False) -> DNSRecord:
    return DNSRecord.parse(DNSRecord.question(name, qtype).send("127.0.0.1", port, tcp=tcp, timeout=3))


def addresses(port: int, name: str) -> list[str]:
    return sorted(str(rr.rdata) for rr in query(port, name).rr if rr.rtype == QTYPE.A)


@pytest.fixture
def mesh(tmp_path):
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()
        cluster.start_client("c1", dns=True)
        yield cluster
    finally:
        cluster.stop()


def test_client_agent_dns_follows_health_within_a_second_and_survives_servers(mesh):
    client = mesh.clients[0]
    port = client.dns_port
    for i, ip in enumerate(("10.9.0.1", "10.9.0.2")):
        client.put("/v1/agent/service/register", {"Name": "web", "ID": f"web-{i}", "Address": ip, "Port": 80 + i,
                                                  "Tags": ["v1"], "Check": {"TTL": "60s", "Status": "passing"}})
    retry(lambda: addresses(port, "web.service.consul") == ["10.9.0.1", "10.9.0.2"], 10, 0.1, "both in DNS")
    srv = query(port, "_web._tcp.service.consul", "SRV", tcp=True)
    assert sorted(rr.rdata.port for rr in srv.rr) == [80, 81]
    assert query(port, "c1.node.consul").rr[0].rdata is not None
    assert query(port, "nothing.service.consul").header.rcode == RCODE.NXDOMAIN
    assert query(port, "example.org").header.rcode == RCODE.REFUSED
    changed = time.monotonic()
    client.put("/v1/agent/check/fail/service:web-1")
    retry(lambda: addresses(port, "web.service.consul") == ["10.9.0.1"], 3, 0.02, "critical instance leaves DNS")
    assert time.monotonic() - changed < 1.0
    for server in mesh.agents:
        server.kill()
    for _ in range(20):  # answered from the view, many times, with no server
        assert addresses(port, "web.service.consul") == ["10.9.0.1"]
    metrics = client.get("/v1/agent/metrics?format=prometheus").decode()
    assert 'mesh_dns_queries_total{qtype="A",rcode="NOERROR"}' in metrics


def test_dig_against_a_server_agent(mesh, tmp_path):
    if shutil.which("dig") is None:
        pytest.skip("dig not installed: apt-get install bind9-dnsutils")
    client = mesh.clients[0]
    client.put("/v1/agent/service/register", {"Name": "db", "Port": 5432, "Check": {"TTL": "60s", "Status": "passing"}})
    port = client.dns_port
    out = retry(lambda: (lambda o: o if "5432" in o else None)(subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(port), "db.service.consul", "SRV", "+tries=1", "+time=2"],
        capture_output=True, text=True, timeout=10).stdout), 10, 0.2)
    assert "status: NOERROR" in out and "flags: qr aa rd" in out
    assert "c1.node.dc1.consul." in out and "ADDITIONAL SECTION" in out
    nx = subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "nope.service.consul", "+tries=1", "+time=2"],
                        capture_output=True, text=True, timeout=10).stdout
    assert "status: NXDOMAIN" in nx and "hostmaster.consul." in nx
