"""qname -> lookup, table-driven (../shared/reference/consul.md §3.2)."""

from __future__ import annotations

import pytest

from mesh.dns.parse import InvalidName, Lookup, parse_qname

D = ("consul.", "alt.test.")


@pytest.mark.parametrize(
    "qname, expected",
    [
        ("web.service.consul.", Lookup("service", "consul.", name="web")),
        ("web.service.consul", Lookup("service", "consul.", name="web")),
        ("WEB.Service.CONSUL.", Lookup("service", "consul.", name="web")),
        ("v1.web.service.consul.", Lookup("service", "consul.", name="web", tag="v1")),
        ("a.b.web.service.consul.", Lookup("service", "consul.", name="web", tag="a.b")),
        ("web.service.dc1.consul.", Lookup("service", "consul.", name="web", datacenter="dc1")),
        ("v1.web.service.dc2.consul.", Lookup("service", "consul.", name="web", tag="v1", datacenter="dc2")),
        ("_web._tcp.service.consul.", Lookup("service", "consul.", name="web", rfc2782=True)),
        ("_web._v1.service.consul.", Lookup("service", "consul.", name="web", tag="v1", rfc2782=True)),
        ("_web._tcp.consul.", Lookup("service", "consul.", name="web", rfc2782=True)),
        ("_web._tcp.dc1.consul.", Lookup("service", "consul.", name="web", datacenter="dc1", rfc2782=True)),
        ("db-1.node.consul.", Lookup("node", "consul.", name="db-1")),
        ("db.example.com.node.dc1.consul.", Lookup("node", "consul.", name="db.example.com", datacenter="dc1")),
        ("web.connect.consul.", Lookup("connect", "consul.", name="web")),
        ("7f000001.addr.consul.", Lookup("addr", "consul.", address="127.0.0.1")),
        ("20010db8000000000000000000000001.addr.dc1.consul.",
         Lookup("addr", "consul.", address="2001:db8::1", datacenter="dc1")),
        ("consul.", Lookup("apex", "consul.")),
        ("web.service.alt.test.", Lookup("service", "alt.test.", name="web")),
        ("1.0.0.127.in-addr.arpa.", Lookup("ptr", "consul.", address="127.0.0.1")),
        ("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
         Lookup("ptr", "consul.", address="2001:db8::1")),
    ],
)
def test_names(qname, expected):
    assert parse_qname(qname, D) == expected


@pytest.mark.parametrize("qname", ["example.com.", "consul.example.com.", "com.", "", "2.1.in-addr.arpa.x."])
def test_outside_the_domain(qname):
    assert parse_qname(qname, D) is None


@pytest.mark.parametrize(
    "qname",
    [
        "web.consul.",  # no keyword
        "service.consul.",  # keyword without a name
        "web.service.dc1.extra.consul.",  # two labels after the keyword
        "zz.addr.consul.",
        "x.connect.consul.",  # fine name? no: see below
        "a.b.connect.consul.",
        "web.query.consul.",  # prepared queries: not supported yet
        "1.2.in-addr.arpa.",
        "_._tcp.consul.",
    ],
)
def test_invalid_names_are_nxdomain(qname):
    if qname == "x.connect.consul.":
        assert parse_qname(qname, D) == Lookup("connect", "consul.", name="x")
        return
    with pytest.raises(InvalidName) as err:
        parse_qname(qname, D)
    if qname.endswith("consul."):
        assert err.value.domain == "consul."
