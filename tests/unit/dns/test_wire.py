"""The wire cache's packet reader and the cached-answer path of the server."""

from __future__ import annotations

import random

from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.dns.answer import AnswerPolicy
from mesh.dns.server import DNSServer
from mesh.dns.wire import patch_answer, question_key
from tests.unit.dns.test_answer import View


def test_plain_and_edns_queries_have_keys():
    plain = DNSRecord.question("web.service.consul", "SRV")
    key = question_key(plain.pack())
    assert key is not None and key[1] == 33 and key[2] is None
    assert key[0].startswith(b"\x03web\x07service\x06consul\x00")
    edns = DNSRecord.question("web.service.consul", "A")
    edns.add_ar(EDNS0(udp_len=4096))
    assert question_key(edns.pack())[2] == 4096


def test_other_shapes_take_the_full_path():
    q = DNSRecord.question("web.service.consul")
    response = DNSRecord.parse(q.pack())
    response.header.qr = 1
    assert question_key(response.pack()) is None
    assert question_key(b"\x00" * 11) is None
    two = DNSRecord.question("a.consul")
    two.add_question(DNSRecord.question("b.consul").q)
    assert question_key(two.pack()) is None
    assert question_key(q.pack() + b"trailing") is None


def test_patch_answer_sets_id_and_rd():
    cached = bytes([0xAA, 0xBB, 0x84, 0x00]) + b"rest"
    query = bytes([0x12, 0x34, 0x01, 0x00])
    assert patch_answer(cached, query) == bytes([0x12, 0x34, 0x85, 0x00]) + b"rest"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    question_key(data)


class Generational(View):
    generation = 1


def test_server_caches_rotates_and_invalidates():
    view = Generational()
    server = DNSServer("127.0.0.1", 0, view, AnswerPolicy(), ("consul.",), rng=random.Random(3))
    q = DNSRecord.question("big.service.consul", "A")
    q.add_ar(EDNS0(udp_len=8192))
    data = q.pack()
    assert server.cached(data, True) is None
    first = server.answer_now(data, udp=True)
    orders = set()
    for i in range(8):
        again = DNSRecord(q.header, q=q.q)
        again.header.id = 1000 + i
        again.add_ar(EDNS0(udp_len=8192))
        hit = server.cached(again.pack(), True)
        assert hit is not None and DNSRecord.parse(hit).header.id == 1000 + i
        orders.add(tuple(str(r.rdata) for r in DNSRecord.parse(hit).rr[:3]))
    assert len(orders) > 1 and server.cache_hits == 8
    assert sorted(str(r.rdata) for r in DNSRecord.parse(first).rr) == sorted(
        str(r.rdata) for r in DNSRecord.parse(hit).rr)
    view.generation = 2  # the catalog changed
    assert server.cached(data, True) is None
