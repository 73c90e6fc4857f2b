"""Names that cannot go on the wire, oversized questions and answers (issue 10)."""

from __future__ import annotations

import random
import struct

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from mesh.dns.answer import AnswerPolicy
from mesh.dns.names import dns_compatible, label_problem, name_problem
from mesh.dns.recursor import parse_recursor
from mesh.dns.server import QuietLog, resolve_packet

LONG = "x" * 70


def entry(node, address, port, svc_address=""):
    return {"Node": {"Node": node, "Address": address, "Meta": {}},
            "Service": {"ID": f"web-{node}", "Service": "web", "Port": port, "Tags": [], "Address": svc_address,
                        "Weights": {"Passing": 1, "Warning": 1}},
            "Checks": [{"CheckID": "c", "Status": "passing"}]}


class View:
    def __init__(self, web, nodes=None, servers=None):
        self.web = web
        self.nodes = nodes or {}
        self.servers = servers or []

    def service_entries(self, name):
        return self.web if name == "web" else None

    def connect_entries(self, name):
        return None

    def node(self, name):
        return self.nodes.get(name)

    def ptr(self, address):
        return ("node", LONG) if address == "10.0.0.1" else None

    def server_nodes(self):
        return self.servers


def ask(view, name, qtype="SRV", policy=AnswerPolicy(), udp=True, edns=None, report=None):
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=edns))
    data, _, rcode = resolve_packet(q.pack(), view, policy, ("consul.",), random.Random(1), udp=udp,
                                    now=lambda: 1_700_000_000, report=report)
    return DNSRecord.parse(data), data, rcode


@pytest.mark.parametrize("name, ok", [
    ("web", True), ("web-1", True), ("_web", True), ("db.node", True), ("consul.", True),
    (LONG, False), ("", False), ("a..b", False), ("my web", False), ("café", False), ("x" * 63, True),
    (".".join(["a" * 60] * 5), False),
])
def test_which_names_encode(name, ok):
    assert dns_compatible(name) is ok
    assert (name_problem(name) is None) is ok


def test_label_problem_names_the_reason():
    assert "63" in label_problem(LONG)
    assert "characters" in label_problem("a.b")
    assert label_problem("web") is None


def test_one_bad_node_name_leaves_only_that_instance_out_of_srv():
    view = View([entry("good", "10.0.0.1", 80), entry(LONG, "10.0.0.2", 81),
                 entry("svc-host", "10.0.0.3", 82, svc_address=LONG + ".example.com")])
    for udp in (True, False):
        reply, _, rcode = ask(view, "web.service.consul", udp=udp)
        assert rcode == "NOERROR"
        assert [str(rr.rdata.target) for rr in reply.rr] == ["good.node.dc1.consul."]
    reply, _, _ = ask(view, "web.service.consul", "A")  # A records carry no names: the bad node's too
    assert sorted(str(rr.rdata) for rr in reply.rr) == ["10.0.0.1", "10.0.0.2"]


def test_only_bad_names_is_nodata_not_an_error():
    reply, _, rcode = ask(View([entry(LONG, "10.0.0.2", 81)]), "web.service.consul")
    assert rcode == "NOERROR" and not reply.rr and reply.auth  # NODATA with the SOA


def test_bad_ptr_target_and_ns_server_are_left_out():
    view = View([entry("good", "10.0.0.1", 80)], servers=[{"Node": LONG, "Address": "10.0.0.9"}])
    reply, _, rcode = ask(view, "1.0.0.10.in-addr.arpa", "PTR")
    assert rcode == "NXDOMAIN"
    reply, _, rcode = ask(view, "consul", "NS")
    assert rcode == "NOERROR" and not reply.rr


def test_out_of_range_port_and_weight_still_pack():
    bad = entry("good", "10.0.0.1", 70000)
    bad["Service"]["Weights"] = {"Passing": 10**9, "Warning": "x"}
    reply, _, rcode = ask(View([bad]), "web.service.consul")
    assert rcode == "NOERROR" and reply.rr[0].rdata.port == 65535 and reply.rr[0].rdata.weight == 65535


def test_long_node_meta_is_split_into_character_strings():
    view = View([], nodes={"n1": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"k": "v" * 600}}})
    reply, _, rcode = ask(view, "n1.node.consul", "TXT", udp=False)
    assert rcode == "NOERROR"
    (txt,) = reply.rr
    assert [len(d) for d in txt.rdata.data] == [255, 255, 92]


def _long_name_query(labels: int = 5) -> bytes:
    """A question of 5 labels of 63 bytes (320 bytes on the wire): dnslib parses it and
    cannot pack it back."""
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    name = b"".join(bytes([63]) + b"a" * 63 for _ in range(labels)) + b"\x00"
    return header + name + struct.pack(">HH", QTYPE.A, 1)


def test_question_over_255_bytes_is_formerr_and_reported():
    reports = []
    data, _, rcode = resolve_packet(_long_name_query(), View([]), AnswerPolicy(), ("consul.",), random.Random(1),
                                    udp=True, report=lambda event, detail: reports.append(event))
    reply = DNSRecord.parse(data)
    assert rcode == "FORMERR" and reply.header.rcode == RCODE.FORMERR and reply.header.id == 0x1234
    assert not reply.questions and reports == ["dns_query_malformed"]


def test_garbage_is_dropped_and_reported():
    reports = []
    data, _, rcode = resolve_packet(b"\x00\x01\x01\x00\x00\x01" + b"\xff" * 20, View([]), AnswerPolicy(),
                                    ("consul.",), random.Random(1), udp=True,
                                    report=lambda event, detail: reports.append(event))
    assert data is None and rcode == "dropped" and reports == ["dns_query_malformed"]


def big_view(n=300):
    return View([entry(f"node-{i:03d}-{'y' * 40}", f"10.1.{i // 250}.{i % 250}", 1000 + i) for i in range(n)])


@pytest.mark.parametrize("edns, limit", [(None, 512), (1232, 1232), (65535, 4096), (4096, 4096)])
def test_udp_answers_never_exceed_the_ceiling(edns, limit):
    reply, data, _ = ask(big_view(), "web.service.consul", edns=edns)
    assert reply.rr and len(data) <= limit


def test_ceiling_is_configurable_and_echoed_in_opt():
    policy = AnswerPolicy(udp_max_payload=1400)
    reply, data, _ = ask(big_view(), "web.service.consul", policy=policy, edns=65535)
    assert len(data) <= 1400
    (opt,) = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
    assert opt.rclass == 1400


def test_one_answer_too_big_for_udp_sends_none_with_tc():
    view = View([], nodes={"n1": {"Node": "n1", "Address": "10.0.0.1", "Meta": {"k": "v" * 600}}})
    reply, data, _ = ask(view, "n1.node.consul", "TXT")
    assert len(data) <= 512 and reply.header.tc and not reply.rr


def test_tcp_answers_are_whole_and_parse_past_16_kib():
    """Compression pointers have 14 bits: a name written past 16 KiB must not be
    pointed at (dnslib's own pack wraps the offset and corrupts the message)."""
    reply, data, _ = ask(big_view(), "web.service.consul", udp=False)
    assert len(data) > 0x4000 and len(reply.rr) == 300
    assert sorted(str(rr.rdata.target) for rr in reply.rr)[0] == "node-000-" + "y" * 40 + ".node.dc1.consul."


@pytest.mark.parametrize("text, parsed", [
    ("8.8.8.8", ("8.8.8.8", 53)), ("8.8.8.8:5353", ("8.8.8.8", 5353)), ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)), ("dns.example", ("dns.example", 53)), ("dns.example:54", ("dns.example", 54)),
])
def test_recursor_addresses(text, parsed):
    assert parse_recursor(text) == parsed


@pytest.mark.parametrize("text", ["::::", "", "1.2.3.4:99999", "1.2.3.4:0", "a..b", "[zz]:53", "1.2.3.4:x",
                                  "[::1]x", "host:1:2"])
def test_bad_recursor_addresses(text):
    with pytest.raises(ValueError):
        parse_recursor(text)


def test_quiet_log_says_once_per_interval_and_counts_the_rest():
    now = [0.0]
    lines = []
    quiet = QuietLog(interval=60.0, clock=lambda: now[0], sink=lambda event, **kw: lines.append((event, kw)))
    assert quiet("dns_query_malformed", "a") is True
    for _ in range(1000):
        quiet("dns_query_malformed", "b")
    assert quiet("dns_answer_failed", "c") is True  # another event has its own budget
    now[0] = 61.0
    quiet("dns_query_malformed", "d")
    assert [(e, kw["suppressed"]) for e, kw in lines] == [
        ("dns_query_malformed", 0), ("dns_answer_failed", 0), ("dns_query_malformed", 1000)]
