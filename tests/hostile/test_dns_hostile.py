"""DNS as an attacker (or a careless registration) reaches it, on a real dev agent.

Replays issue 10's findings: one node with a 70-character name made every SRV answer
for its service fail (UDP timed out, TCP closed, "label empty or too long" in the
log); a question name over 255 bytes in one UDP datagram gave "Unhandled exception in
event loop"; a 47-byte query with a large EDNS size drew a 20 KB answer."""

from __future__ import annotations

import socket
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from tests.harness.cluster import dev_agent, retry

pytestmark = pytest.mark.cluster

LONG = "n" * 70
MANY = 150


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dnshostile")
    agent = dev_agent(tmp, name="d", extra=["-log-level", "debug"], dns=True, node="dnsnode")
    try:
        for node, address in (("good", "10.0.0.1"), (LONG, "10.0.0.2")):
            agent.put("/v1/catalog/register", {"Node": node, "Address": address,
                                               "Service": {"Service": "web", "Port": 80}})
        agent.put("/v1/catalog/register", {"Node": "hosted", "Address": "10.0.0.3",
                                           "Service": {"Service": "web", "Port": 80,
                                                       "Address": LONG + ".example.com"}})
        for i in range(MANY):
            agent.put("/v1/catalog/register", {"Node": f"many-{i:03d}-{'m' * 40}", "Address": f"10.9.0.{i + 1}",
                                               "Service": {"Service": "many", "Port": 9000 + i}})
        yield agent
    finally:
        agent.kill()


def udp(agent, data: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", agent.dns_port))
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def tcp(agent, data: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.create_connection(("127.0.0.1", agent.dns_port), timeout=timeout) as s:
        s.sendall(struct.pack(">H", len(data)) + data)
        header = b""
        while len(header) < 2:
            chunk = s.recv(2 - len(header))
            if not chunk:
                return None
            header += chunk
        (length,) = struct.unpack(">H", header)
        body = b""
        while len(body) < length:
            chunk = s.recv(length - len(body))
            if not chunk:
                return None
            body += chunk
        return body


def query(name: str, qtype: str = "SRV", edns: int | None = None) -> bytes:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    return bytes(q.pack())


def long_name_query() -> bytes:
    """Five labels of 63 bytes: a 320-byte question name in one datagram."""
    name = b"".join(bytes([63]) + b"a" * 63 for _ in range(5)) + b"\x00"
    return struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", QTYPE.A, 1)


def log_text(agent) -> str:
    with open(agent.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def test_a_node_name_dns_cannot_carry_leaves_only_that_instance_out(agent):
    def srv_targets(send):
        answer = send(agent, query("web.service.consul"))
        assert answer is not None, "no answer"
        reply = DNSRecord.parse(answer)
        assert reply.header.rcode == RCODE.NOERROR
        return sorted(str(rr.rdata.target) for rr in reply.rr)

    assert retry(lambda: srv_targets(udp), 10, 0.1, "SRV over UDP") == ["good.node.dc1.consul."]
    assert srv_targets(tcp) == ["good.node.dc1.consul."]
    a = DNSRecord.parse(udp(agent, query("web.service.consul", "A")))
    assert sorted(str(rr.rdata) for rr in a.rr) == ["10.0.0.1", "10.0.0.2"]  # A records carry no names
    assert "label empty or too long" not in log_text(agent)


def test_a_question_over_255_bytes_gets_formerr_and_one_quiet_line(agent):
    for _ in range(50):
        answer = udp(agent, long_name_query())
        assert answer is not None
        reply = DNSRecord.parse(answer)
        assert reply.header.id == 0x4242 and reply.header.rcode == RCODE.FORMERR
    answer = tcp(agent, long_name_query())
    assert answer is not None and DNSRecord.parse(answer).header.rcode == RCODE.FORMERR
    for junk in (b"\x00", b"\xff" * 12, b"\x12\x34\x01\x00\x00\x01" + b"\xc0" * 30):
        udp(agent, junk, timeout=0.3)  # dropped; the listener lives on
    assert DNSRecord.parse(udp(agent, query("dnsnode.node.consul", "A"))).header.rcode == RCODE.NOERROR
    text = log_text(agent)
    assert "Unhandled exception" not in text and "Traceback" not in text
    assert text.count("dns_query_malformed") == 1  # rate-limited: one line a minute


def test_udp_answers_are_capped_whatever_edns_claims(agent):
    big = retry(lambda: tcp(agent, query("many.service.consul")), 10, 0.1, "many over TCP")
    assert len(DNSRecord.parse(big).rr) == MANY and len(big) > 16_384  # whole, and parseable, over TCP
    small = query("many.service.consul", edns=65535)
    assert len(small) < 60
    answer = udp(agent, small)
    reply = DNSRecord.parse(answer)
    assert len(answer) <= 4096 and reply.rr
    plain = udp(agent, query("many.service.consul"))
    assert len(plain) <= 512 and 1 <= len(DNSRecord.parse(plain).rr) <= 3  # udp_answer_limit without EDNS


def test_registering_a_name_dns_cannot_carry_warns_and_registers(agent):
    """Consul registers such services and warns that DNS will not find them."""
    agent.put("/v1/agent/service/register", {"Name": "my_" + "s" * 70, "Port": 1})
    assert any(s["Service"] == "my_" + "s" * 70 for s in agent.get("/v1/agent/services").values())
    assert retry(lambda: "service_not_discoverable_via_dns" in log_text(agent), 5, 0.05)
