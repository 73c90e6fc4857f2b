"""Answers over a fixed catalog view: records, health filtering, rcodes, truncation."""

from __future__ import annotations

import random

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.dns.answer import AnswerPolicy, ttl_for_service
from mesh.dns.server import resolve_packet


def entry(node, address, service, port, tags=(), statuses=("passing",), svc_address="", weights=None, meta=None):
    checks = [{"CheckID": f"c{i}", "Status": s} for i, s in enumerate(statuses)]
    return {"Node": {"Node": node, "Address": address, "Meta": meta or {}},
            "Service": {"ID": f"{service}-{node}", "Service": service, "Port": port, "Tags": list(tags),
                        "Address": svc_address, "Weights": weights or {"Passing": 1, "Warning": 1}},
            "Checks": checks}


class View:
    def __init__(self) -> None:
        self.services = {
            "web": [entry("n1", "10.0.0.1", "web", 80, ["v1"]), entry("n2", "10.0.0.2", "web", 81, ["v2"]),
                    entry("n3", "10.0.0.3", "web", 82, ["v1"], ["passing", "critical"]),
                    entry("n4", "10.0.0.4", "web", 83, ["v1"], ["warning"], weights={"Passing": 10, "Warning": 2})],
            "v6": [entry("n6", "10.0.0.6", "v6", 90, svc_address="2001:db8::6")],
            "big": [entry(f"b{i}", f"10.1.{i // 250}.{i % 250}", "big", 1000 + i) for i in range(200)],
            "down": [entry("d1", "10.0.0.9", "down", 1, statuses=("critical",))],
        }
        self.nodes = {"n1": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"env": "prod", "rfc1035-x": "raw"}}}

    def service_entries(self, name):
        return self.services.get(name)

    def connect_entries(self, name):
        return None

    def node(self, name):
        return self.nodes.get(name)

    def ptr(self, address):
        return ("node", "n1") if address == "10.0.0.1" else None

    def server_nodes(self):
        return [{"Node": "s1", "Address": "10.0.0.100"}]


POLICY = AnswerPolicy(datacenter="dc1")


def ask(name, qtype="A", policy=POLICY, udp=True, edns=None, view=None):
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    data, _, _ = resolve_packet(q.pack(), view or View(), policy, ("consul.",), random.Random(1), udp=udp,
                                now=lambda: 1_700_000_000)
    return DNSRecord.parse(data), data


def answers(reply):
    return sorted(str(rr.rdata) for rr in reply.rr)


def test_a_records_leave_out_critical_instances():
    reply, _ = ask("web.service.consul")
    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa
    assert answers(reply) == ["10.0.0.1", "10.0.0.2", "10.0.0.4"]


def test_only_passing_leaves_out_warnings_too():
    reply, _ = ask("web.service.consul", policy=AnswerPolicy(only_passing=True))
    assert answers(reply) == ["10.0.0.1", "10.0.0.2"]


def test_tags_and_rfc2782():
    assert answers(ask("v1.web.service.consul")[0]) == ["10.0.0.1", "10.0.0.4"]
    assert answers(ask("V1.WEB.service.consul.")[0]) == ["10.0.0.1", "10.0.0.4"]
    srv = ask("_web._v2.service.consul", "SRV")[0]
    assert [(r.rdata.port, str(r.rdata.target)) for r in srv.rr] == [(81, "n2.node.dc1.consul.")]
    assert len(ask("_web._tcp.consul", "SRV")[0].rr) == 3


def test_srv_weights_targets_and_additional_records():
    reply, _ = ask("web.service.consul", "SRV")
    by_port = {r.rdata.port: r.rdata for r in reply.rr}
    assert by_port[83].weight == 2 and by_port[80].weight == 1 and by_port[80].priority == 1
    assert {str(r.rname) for r in reply.ar} == {"n1.node.dc1.consul.", "n2.node.dc1.consul.", "n4.node.dc1.consul."}
    v6 = ask("v6.service.consul", "SRV")[0]
    assert str(v6.rr[0].rdata.target) == "20010db8000000000000000000000006.addr.dc1.consul."
    assert v6.ar[0].rtype == QTYPE.AAAA


def test_nxdomain_and_nodata_carry_the_soa():
    for name in ("nope.service.consul", "down.service.consul", "web.service.dc9.consul", "x.consul", "n9.node.consul"):
        reply, _ = ask(name)
        assert reply.header.rcode == RCODE.NXDOMAIN, name
        assert reply.auth[0].rtype == QTYPE.SOA and str(reply.auth[0].rdata.rname) == "hostmaster.consul."
    nodata, _ = ask("web.service.consul", "AAAA")
    assert nodata.header.rcode == RCODE.NOERROR and not nodata.rr and nodata.auth[0].rtype == QTYPE.SOA
    soa = nodata.auth[0].rdata
    assert soa.times == (1_700_000_000, 3600, 600, 86400, 0)


def test_outside_the_domain_is_refused():
    assert ask("example.com")[0].header.rcode == RCODE.REFUSED


def test_nodes_txt_ptr_addr_apex():
    assert answers(ask("n1.node.consul")[0]) == ["10.0.0.1"]
    txt = ask("n1.node.consul", "TXT")[0]
    assert sorted(str(r.rdata) for r in txt.rr) == ['"env=prod"', '"raw"']
    srv_on_node = ask("n1.node.consul", "SRV")[0]
    assert srv_on_node.header.rcode == RCODE.NOERROR and not srv_on_node.rr and not srv_on_node.auth
    assert str(ask("1.0.0.10.in-addr.arpa", "PTR")[0].rr[0].rdata) == "n1.node.dc1.consul."
    assert ask("2.0.0.10.in-addr.arpa", "PTR")[0].header.rcode == RCODE.NXDOMAIN
    assert answers(ask("0a000001.addr.consul")[0]) == ["10.0.0.1"]
    assert ask("consul", "SOA")[0].rr[0].rtype == QTYPE.SOA
    ns = ask("consul", "NS")[0]
    assert str(ns.rr[0].rdata) == "s1.node.dc1.consul." and str(ns.ar[0].rdata) == "10.0.0.100"


def test_udp_without_edns_is_trimmed_and_tcp_is_whole():
    reply, data = ask("big.service.consul")
    assert len(reply.rr) == 3 and len(data) <= 512 and not reply.header.tc
    reply, data = ask("big.service.consul", policy=AnswerPolicy(enable_truncate=True))
    assert reply.header.tc
    reply, data = ask("big.service.consul", edns=8192)
    assert len(reply.rr) == 200 and len(data) <= 8192
    reply, data = ask("big.service.consul", "SRV", edns=1232)
    assert 1 <= len(reply.rr) < 200 and len(data) <= 1232
    assert {str(r.rname) for r in reply.ar if r.rtype == QTYPE.A} <= {str(r.rdata.target) for r in reply.rr}
    reply, _ = ask("big.service.consul", udp=False)
    assert len(reply.rr) == 200


def test_answers_are_shuffled():
    orders = set()
    view = View()
    for seed in range(20):
        q = DNSRecord.question("big.service.consul", "A")
        q.add_ar(EDNS0(udp_len=8192))
        data, _, _ = resolve_packet(q.pack(), view, POLICY, ("consul.",), random.Random(seed), udp=True)
        orders.add(tuple(str(r.rdata) for r in DNSRecord.parse(data).rr[:5]))
    assert len(orders) > 10


def test_service_ttls():
    policy = AnswerPolicy(service_ttl={"*": 5, "web*": 10, "web-api": 30})
    assert [ttl_for_service(policy, n) for n in ("db", "webby", "web-api")] == [5, 10, 30]
    assert ask("web.service.consul", policy=policy)[0].rr[0].ttl == 10


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_packets_never_raise(data):
    answer, _, _ = resolve_packet(data, View(), POLICY, ("consul.",), random.Random(0), udp=True)
    assert answer is None or len(answer) <= 512 or b"\x00\x00\x29" in answer


VALID = DNSRecord.question("web.service.consul", "SRV").pack()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_packets_never_raise_or_amplify(mutations):
    data = bytearray(VALID)
    for pos, value in mutations:
        data[pos] = value
    answer, _, _ = resolve_packet(bytes(data), View(), POLICY, ("consul.",), random.Random(0), udp=True)
    if answer is not None:
        request = DNSRecord.parse(bytes(data))
        limit = 512
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                limit = max(512, rr.rclass)
        assert len(answer) <= limit
