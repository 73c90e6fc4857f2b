"""DNS on a real dev agent: recursors, dns_config, connect lookups."""

from __future__ import annotations

import socket
import threading

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from tests.harness.cluster import Agent, free_port, retry


class Upstream:
    """A tiny upstream resolver: example.org -> 1.2.3.4, anything else SERVFAIL."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            self.queries += 1
            request = DNSRecord.parse(data)
            reply = request.reply()
            if str(request.q.qname) == "example.org.":
                reply.add_answer(RR("example.org.", QTYPE.A, rdata=A("1.2.3.4"), ttl=60))
            else:
                reply.header.rcode = RCODE.SERVFAIL
            self.sock.sendto(reply.pack(), addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def dns_agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnsagent")
    upstream = Upstream()
    dead = free_port()  # nothing listens: the agent must move on to the next recursor
    conf = tmp / "dns.hcl"
    conf.write_text('dns_config {\n  node_ttl = "30s"\n  only_passing = true\n  service_ttl = {\n'
                    '    "*" = "5s"\n    "web" = "15s"\n  }\n  recursor_timeout = "300ms"\n}\n')
    agent = Agent("d", str(tmp), free_port(), free_port(), free_port(), [], str(tmp / "d.log"))
    agent.dns_port = free_port()
    agent.args = ["-dev", "-node", "dnsnode", "-http-port", str(agent.http_port), "-server-port", str(agent.server_port),
                  "-raft-port", str(agent.raft_port), "-dns-port", str(agent.dns_port),
                  "-recursor", f"127.0.0.1:{dead}", "-recursor", f"127.0.0.1:{upstream.port}",
                  "-config-file", str(conf)]
    agent.start()
    try:
        retry(lambda: agent.leader(), 10, 0.05)
        yield agent
    finally:
        agent.kill()
        upstream.close()


def ask(agent, name, qtype="A"):
    return DNSRecord.parse(DNSRecord.question(name, qtype).send("127.0.0.1", agent.dns_port, timeout=5))


def test_recursors_forward_in_order_and_servfail_when_all_fail(dns_agent):
    reply = ask(dns_agent, "example.org")
    assert reply.header.rcode == RCODE.NOERROR and str(reply.rr[0].rdata) == "1.2.3.4"
    assert ask(dns_agent, "broken.example").header.rcode == RCODE.SERVFAIL
    local = retry(lambda: (lambda r: r if r.rr else None)(ask(dns_agent, "dnsnode.node.consul")), 5, 0.05)
    assert local.header.ra == 1 and local.rr[0].ttl == 30


def test_dns_config_ttls_and_only_passing(dns_agent):
    for i, status in enumerate(("passing", "warning")):
        dns_agent.put("/v1/agent/service/register", {"Name": "web", "ID": f"web-{i}", "Address": f"10.5.0.{i + 1}",
                                                     "Port": 80, "Check": {"TTL": "60s", "Status": status}})
    dns_agent.put("/v1/agent/service/register", {"Name": "db", "Address": "10.6.0.1", "Port": 5432})
    retry(lambda: ask(dns_agent, "db.service.consul").rr, 5, 0.05)
    web = ask(dns_agent, "web.service.consul")
    assert [str(r.rdata) for r in web.rr] == ["10.5.0.1"]  # the warning instance is left out
    assert web.rr[0].ttl == 15 and ask(dns_agent, "db.service.consul").rr[0].ttl == 5


def test_connect_lookup_returns_sidecar_proxies(dns_agent):
    dns_agent.put("/v1/agent/service/register", {
        "Name": "api-sidecar-proxy", "Kind": "connect-proxy", "Address": "10.7.0.1", "Port": 21000,
        "Proxy": {"DestinationServiceName": "api", "DestinationServiceID": "api"}})
    srv = retry(lambda: ask(dns_agent, "api.connect.consul", "SRV").rr, 5, 0.05)
    assert srv[0].rdata.port == 21000
    entries = dns_agent.get("/v1/health/connect/api")
    assert [e["Service"]["Kind"] for e in entries] == ["connect-proxy"]
    assert ask(dns_agent, "nothing.connect.consul").header.rcode == RCODE.NXDOMAIN
