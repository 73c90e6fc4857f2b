"""DNS query names to lookups, as Consul reads them (../shared/reference/consul.md §3.2).

Labels are read right to left up to the first keyword (`service`, `node`, `connect`,
`addr`, ...); one label after the keyword is the datacenter. Names are matched
case-insensitively. Pure: no sockets, no catalog.

    web.service.consul            service web
    v1.web.service.dc1.consul     service web, tag v1, datacenter dc1
    _web._tcp.service.consul      RFC 2782: service web, any tag
    _web._v1.consul               RFC 2782 without the service label: tag v1
    db-1.node.consul              node db-1 (node names may contain dots)
    web.connect.consul            the mesh endpoints of web
    7f000001.addr.consul          the address 127.0.0.1
    1.0.0.127.in-addr.arpa        PTR for 127.0.0.1
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["Lookup", "InvalidName", "parse_qname", "KEYWORDS"]

KEYWORDS = frozenset({"service", "node", "connect", "addr", "query", "virtual", "ingress"})
SUPPORTED = frozenset({"service", "node", "connect", "addr"})


class InvalidName(ValueError):
    """A name inside our domain that does not resolve: NXDOMAIN (with `domain`'s SOA)."""

    def __init__(self, message: str, domain: str = "") -> None:
        super().__init__(message)
        self.domain = domain


@dataclass(frozen=True)
class Lookup:
    kind: str  # "apex", "service", "node", "connect", "addr", "ptr"
    domain: str  # the domain the query used, with a trailing dot
    name: str = ""
    tag: str | None = None
    datacenter: str | None = None
    address: str = ""  # addr and ptr lookups
    rfc2782: bool = False


def _domain_of(labels: list[str], domains: tuple[str, ...]) -> tuple[str, list[str]] | None:
    for domain in domains:
        parts = [p for p in domain.lower().strip(".").split(".") if p]
        if parts and labels[-len(parts):] == parts:
            return ".".join(parts) + ".", labels[: -len(parts)]
    return None


def _ptr_address(labels: list[str]) -> str | None:
    if labels[-2:] == ["in-addr", "arpa"]:
        octets = labels[:-2]
        if len(octets) != 4:
            raise InvalidName("PTR needs four octets")
        try:
            return str(ipaddress.IPv4Address(".".join(reversed(octets))))
        except ValueError:
            raise InvalidName("bad in-addr.arpa name") from None
    if labels[-2:] == ["ip6", "arpa"]:
        nibbles = labels[:-2]
        if len(nibbles) != 32 or any(len(n) != 1 for n in nibbles):
            raise InvalidName("PTR needs 32 nibbles")
        hexdigits = "".join(reversed(nibbles))
        try:
            return str(ipaddress.IPv6Address(int(hexdigits, 16)))
        except ValueError:
            raise InvalidName("bad ip6.arpa name") from None
    return None


def _hex_address(label: str) -> str:
    try:
        if len(label) == 8:
            return str(ipaddress.IPv4Address(int(label, 16)))
        if len(label) == 32:
            return str(ipaddress.IPv6Address(int(label, 16)))
    except ValueError:
        pass
    raise InvalidName(f"bad addr label {label!r}")


def parse_qname(qname: str, domains: tuple[str, ...]) -> Lookup | None:
    """The lookup a name asks for; None when it is outside our domains (and not a PTR).
    Raises InvalidName for names inside the domain that cannot resolve."""
    labels = [label for label in qname.lower().rstrip(".").split(".") if label != ""]
    if not labels:
        return None
    if labels[-1] == "arpa":
        address = _ptr_address(labels)
        if address is None:
            return None
        return Lookup("ptr", domains[0].lower().rstrip(".") + ".", address=address)
    found = _domain_of(labels, domains)
    if found is None:
        return None
    domain, rest = found
    try:
        return _parse_in_domain(domain, rest)
    except InvalidName as exc:
        exc.domain = domain
        raise


def _parse_in_domain(domain: str, rest: list[str]) -> Lookup:
    if not rest:
        return Lookup("apex", domain)
    # RFC 2782 without the service label: _svc._proto[.dc]
    if rest[0].startswith("_") and len(rest) in (2, 3) and rest[1].startswith("_") and "service" not in rest:
        dc = rest[2] if len(rest) == 3 else None
        return _rfc2782(rest[0], rest[1], dc, domain)
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] in KEYWORDS:
            keyword, prefix, after = rest[i], rest[:i], rest[i + 1:]
            break
    else:
        raise InvalidName("no lookup keyword")
    if len(after) > 1:
        raise InvalidName("too many labels after the keyword")
    dc = after[0] if after else None
    if keyword not in SUPPORTED:
        raise InvalidName(f"{keyword} lookups are not supported")
    if not prefix:
        raise InvalidName(f"{keyword} lookup without a name")
    if keyword == "service":
        if prefix[0].startswith("_") and len(prefix) == 2 and prefix[1].startswith("_"):
            return _rfc2782(prefix[0], prefix[1], dc, domain)
        return Lookup("service", domain, name=prefix[-1], tag=".".join(prefix[:-1]) or None, datacenter=dc)
    if keyword == "node":
        return Lookup("node", domain, name=".".join(prefix), datacenter=dc)
    if keyword == "connect":
        if len(prefix) != 1:
            raise InvalidName("connect lookups take no tag")
        return Lookup("connect", domain, name=prefix[0], datacenter=dc)
    if len(prefix) != 1:
        raise InvalidName("addr lookups take one label")
    return Lookup("addr", domain, address=_hex_address(prefix[0]), datacenter=dc)


def _rfc2782(service: str, proto: str, dc: str | None, domain: str) -> Lookup:
    name, tag = service[1:], proto[1:]
    if not name or not tag:
        raise InvalidName("empty RFC 2782 label")
    return Lookup("service", domain, name=name, tag=None if tag == "tcp" else tag, datacenter=dc, rfc2782=True)
