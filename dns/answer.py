"""DNS answers from catalog data (../shared/reference/consul.md §3.3–3.5). Pure: the
caller passes the view, the time and the random generator.

Health: an instance with any critical check (node or service, maintenance included)
is left out; with `only_passing`, warnings too. Answers are shuffled. Unknown names are
NXDOMAIN with the SOA in authority; known names without records of the asked type are
NOERROR with the SOA (NODATA). UDP answers are trimmed to what the client can take,
and never past `udp_max_payload` whatever size the client's EDNS record claims.

Catalog names are free text (dns/names.py): a record whose name cannot be encoded (a
70-character node name, a service address that is no hostname) is left out, and the
rest of the answer is served.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import AAAA, NS, PTR, QTYPE, RCODE, RR, SOA, SRV, TXT, A, DNSHeader, DNSLabel, DNSRecord

from .names import encodable
from .pack import pack
from .parse import Lookup

__all__ = ["DNSView", "AnswerPolicy", "build_answer", "formerr", "nxdomain", "refused", "servfail", "trim_for_udp",
           "ttl_for_service", "udp_limit", "DEFAULT_UDP_MAX_PAYLOAD"]

DEFAULT_UDP_MAX_PAYLOAD = 4096


class DNSView(Protocol):
    """What answers read. Entries are /v1/health/service shapes ({Node, Service, Checks})."""

    def service_entries(self, name: str) -> list[dict[str, Any]] | None: ...

    def connect_entries(self, name: str) -> list[dict[str, Any]] | None: ...

    def node(self, name: str) -> dict[str, Any] | None: ...

    def ptr(self, address: str) -> tuple[str, str] | None: ...

    def server_nodes(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class AnswerPolicy:
    datacenter: str = "dc1"
    node_ttl: int = 0
    service_ttl: dict[str, int] = field(default_factory=dict)
    only_passing: bool = False
    udp_answer_limit: int = 3
    a_record_limit: int = 0
    enable_truncate: bool = False
    recursion_available: bool = False
    # the largest UDP answer sent, whatever the client's EDNS size says: a spoofed
    # 47-byte query must not draw tens of kilobytes at a victim
    udp_max_payload: int = DEFAULT_UDP_MAX_PAYLOAD


def ttl_for_service(policy: AnswerPolicy, name: str) -> int:
    """Exact names beat prefixes ("web*"), the longest prefix wins, "*" matches all."""
    ttls = policy.service_ttl
    if name in ttls:
        return ttls[name]
    best, best_len = ttls.get("*", 0), 0
    for key, ttl in ttls.items():
        if key.endswith("*") and key != "*" and name.startswith(key[:-1]) and len(key) > best_len:
            best, best_len = ttl, len(key)
    return best


def _reply(request: DNSRecord, policy: AnswerPolicy, rcode: int = RCODE.NOERROR) -> DNSRecord:
    header = DNSHeader(id=request.header.id, qr=1, aa=1, rd=request.header.rd,
                       ra=1 if policy.recursion_available else 0, rcode=rcode)
    return DNSRecord(header, q=request.q)


def refused(request: DNSRecord) -> DNSRecord:
    return DNSRecord(DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, rcode=RCODE.REFUSED), q=request.q)


def nxdomain(request: DNSRecord, domain: str, policy: AnswerPolicy, now: Callable[[], float]) -> DNSRecord:
    reply = _reply(request, policy, RCODE.NXDOMAIN)
    reply.add_auth(_soa(domain, int(now())))
    return reply


def servfail(request: DNSRecord) -> DNSRecord:
    return DNSRecord(DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, rcode=RCODE.SERVFAIL), q=request.q)


def formerr(request: DNSRecord) -> DNSRecord:
    """A query we cannot even echo (its name is over 255 bytes): no question section."""
    return DNSRecord(DNSHeader(id=request.header.id, qr=1, rd=request.header.rd, rcode=RCODE.FORMERR))


def _txt(text: str) -> TXT:
    """Character-strings are at most 255 bytes: longer values are split, as Consul does."""
    data = text.encode()
    return TXT([data[i:i + 255] for i in range(0, len(data), 255)] or [b""])


def _soa(domain: str, now: int) -> RR:
    return RR(domain, QTYPE.SOA, ttl=0,
              rdata=SOA("ns." + domain, "hostmaster." + domain, (now, 3600, 600, 86400, 0)))


def _ip_record(name: str | DNSLabel, address: str, ttl: int) -> RR | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if ip.version == 4:
        return RR(name, QTYPE.A, ttl=ttl, rdata=A(address))
    return RR(name, QTYPE.AAAA, ttl=ttl, rdata=AAAA(address))


def _u16(value: Any) -> int:
    """SRV weights and ports are 16-bit on the wire; a stored value outside that range
    (or no number at all) must not make the whole answer fail to pack."""
    try:
        return max(0, min(0xFFFF, int(value)))
    except (TypeError, ValueError, OverflowError):
        return 0


def _healthy(entries: list[dict[str, Any]], only_passing: bool) -> list[dict[str, Any]]:
    bad = {"critical", "warning"} if only_passing else {"critical"}
    return [e for e in entries if not any(c["Status"] in bad for c in e["Checks"])]


def _wants(qtype: int, rr: RR) -> bool:
    return qtype in (QTYPE.ANY, rr.rtype) or (qtype in (QTYPE.TXT, QTYPE.NS) and rr.rtype in (QTYPE.A, QTYPE.AAAA))


def build_answer(
    request: DNSRecord,
    lookup: Lookup,
    view: DNSView,
    policy: AnswerPolicy,
    rng: random.Random,
    now: Callable[[], float],
) -> DNSRecord:
    qname = request.q.qname  # the owner name exactly as asked: it is known to encode
    qtype = request.q.qtype
    domain = lookup.domain
    serial = int(now())

    def unknown() -> DNSRecord:
        return nxdomain(request, domain, policy, lambda: serial)

    def nodata() -> DNSRecord:
        reply = _reply(request, policy)
        reply.add_auth(_soa(domain, serial))
        return reply

    if lookup.datacenter and lookup.datacenter != policy.datacenter.lower():
        return unknown()
    if lookup.kind == "apex":
        reply = _reply(request, policy)
        if qtype in (QTYPE.SOA, QTYPE.ANY):
            reply.add_answer(_soa(domain, serial))
        if qtype in (QTYPE.NS, QTYPE.ANY):
            for server in view.server_nodes()[:3]:
                target = f"{server['Node']}.node.{policy.datacenter}.{domain}"
                if not encodable(target):
                    continue
                reply.add_answer(RR(domain, QTYPE.NS, ttl=policy.node_ttl, rdata=NS(target)))
                glue = _ip_record(target, server["Address"], policy.node_ttl)
                if glue is not None:
                    reply.add_ar(glue)
        if not reply.rr:
            reply.add_auth(_soa(domain, serial))
        return reply
    if lookup.kind == "addr":
        reply = _reply(request, policy)
        rr = _ip_record(qname, lookup.address, policy.node_ttl)
        if rr is not None and _wants(qtype, rr):
            reply.add_answer(rr)
            return reply
        return nodata()
    if lookup.kind == "ptr":
        found = view.ptr(lookup.address)
        if found is None:
            return unknown()
        kind, name = found
        target = f"{name}.{kind}.{policy.datacenter}.{domain}"
        if not encodable(target):
            return unknown()
        reply = _reply(request, policy)
        if qtype in (QTYPE.PTR, QTYPE.ANY):
            reply.add_answer(RR(qname, QTYPE.PTR, ttl=policy.node_ttl, rdata=PTR(target)))
            return reply
        return nodata()
    if lookup.kind == "node":
        node = view.node(lookup.name)
        if node is None:
            return unknown()
        reply = _reply(request, policy)
        rr = _ip_record(qname, node["Address"], policy.node_ttl)
        if rr is not None and _wants(qtype, rr) and qtype not in (QTYPE.TXT,):
            reply.add_answer(rr)
        if qtype in (QTYPE.TXT, QTYPE.ANY):
            for key, value in sorted((node.get("Meta") or {}).items()):
                text = value if key.startswith("rfc1035-") else f"{key}={value}"
                reply.add_answer(RR(qname, QTYPE.TXT, ttl=policy.node_ttl, rdata=_txt(text)))
        return reply  # node lookups without a matching record: NOERROR, empty, no SOA
    # service and connect lookups
    entries = view.connect_entries(lookup.name) if lookup.kind == "connect" else view.service_entries(lookup.name)
    if entries is None:
        return unknown()
    if lookup.tag:
        tag = lookup.tag.lower()
        entries = [e for e in entries if tag in {t.lower() for t in e["Service"].get("Tags") or ()}]
    entries = _healthy(entries, policy.only_passing)
    if not entries:
        return unknown()
    entries = list(entries)
    rng.shuffle(entries)
    ttl = ttl_for_service(policy, lookup.name)
    reply = _reply(request, policy)
    seen: set[tuple[str, str, int]] = set()
    for entry in entries:
        node, svc = entry["Node"], entry["Service"]
        address = svc.get("Address") or node["Address"]
        key = (node["Node"], address, svc.get("Port", 0))
        if key in seen:
            continue
        seen.add(key)
        if qtype == QTYPE.SRV:
            if svc.get("Address") and svc["Address"] != node["Address"]:
                try:
                    packed = ipaddress.ip_address(svc["Address"]).packed.hex()
                    target = f"{packed}.addr.{policy.datacenter}.{domain}"
                except ValueError:
                    target = svc["Address"].rstrip(".") + "."
            else:
                target = f"{node['Node']}.node.{policy.datacenter}.{domain}"
            if not encodable(target):
                continue  # a name DNS cannot carry: leave this instance out, serve the rest
            warning = any(c["Status"] == "warning" for c in entry["Checks"])
            weights = svc.get("Weights") or {}
            weight = _u16(weights.get("Warning" if warning else "Passing", 1))
            reply.add_answer(RR(qname, QTYPE.SRV, ttl=ttl, rdata=SRV(1, weight, _u16(svc.get("Port", 0)), target)))
            glue = _ip_record(target, address, ttl)
            if glue is not None:
                reply.add_ar(glue)
        else:
            rr = _ip_record(qname, address, ttl)
            if rr is not None and _wants(qtype, rr):
                reply.add_answer(rr)
    if policy.a_record_limit and qtype != QTYPE.SRV:
        reply.rr = reply.rr[: policy.a_record_limit]
    if not reply.rr:
        return nodata()
    return reply


def udp_limit(policy: AnswerPolicy, edns_size: int | None) -> int:
    """The largest UDP answer for this query: 512 bytes without EDNS, else the client's
    size capped at `udp_max_payload`."""
    return max(512, min(edns_size or 512, policy.udp_max_payload))


def trim_for_udp(reply: DNSRecord, policy: AnswerPolicy, edns_size: int | None) -> bytes:
    """Wire bytes that fit the UDP limit (`udp_limit`): without EDNS at most
    `udp_answer_limit` answers within 512 bytes; with EDNS the advertised size up to
    the ceiling. At least one answer is kept when it fits; TC is set only with
    `enable_truncate` (Consul's default trims silently so resolvers do not retry over
    TCP), or when not even one answer fits: then none is sent, and TC tells the
    client to ask over TCP."""
    limit = udp_limit(policy, edns_size)
    trimmed = False
    if edns_size is None and len(reply.rr) > policy.udp_answer_limit:
        reply.rr = reply.rr[: max(1, min(policy.udp_answer_limit, 8))]
        trimmed = True
    data = pack(reply)
    while len(data) > limit and len(reply.rr) > 1:
        reply.rr = reply.rr[: max(1, len(reply.rr) // 2)]
        targets = {str(rr.rdata.target) for rr in reply.rr if rr.rtype == QTYPE.SRV}
        reply.ar = [rr for rr in reply.ar if str(rr.rname) in targets or rr.rtype == QTYPE.OPT]
        trimmed = True
        data = pack(reply)
    if len(data) > limit:
        reply.ar = [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]
        data = pack(reply)
        trimmed = True
    if len(data) > limit:
        reply.rr = []
        reply.auth = []
        reply.header.tc = 1
        return pack(reply)
    if trimmed and policy.enable_truncate:
        reply.header.tc = 1
        data = pack(reply)
    return data
