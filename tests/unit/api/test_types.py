"""api.types: the agent's answers parsed into typed values, CamelCase or snake_case,
unknown fields ignored, wrong shapes refused with the field named."""

from __future__ import annotations

import pytest

from mesh.api.builders import connect_entry, leaf_body, roots_body, sidecar_service
from mesh.api.errors import APIError, DecodeError
from mesh.api.types import (
    AgentService,
    Proxy,
    Upstream,
    default_allow,
    parse_agent_service,
    parse_agent_services,
    parse_connect_endpoints,
    parse_intention_match,
    parse_leaf,
    parse_rfc3339,
    parse_roots,
)
from mesh.catalog.authz import IntentionIndex
from mesh.catalog.intentions import parse_intention

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"

CAMEL = {
    "Kind": "connect-proxy", "ID": "web-sidecar-proxy", "Service": "web-sidecar-proxy", "Tags": ["v1"],
    "Meta": {"team": "a"}, "Port": 21000, "Address": "10.0.0.5", "Datacenter": "dc1", "ContentHash": "abc",
    "Weights": {"Passing": 1, "Warning": 1}, "SomethingNewer": {"x": [1]},
    "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web", "LocalServiceAddress": "127.0.0.1",
              "LocalServicePort": 8080, "Config": {"local_connect_timeout_ms": 500, "Nested": {"KeepCase": 1}},
              "Upstreams": [{"DestinationName": "api", "LocalBindPort": 9191},
                            {"DestinationType": "prepared_query", "DestinationName": "db", "Datacenter": "dc2",
                             "LocalBindAddress": "127.0.0.2", "LocalBindPort": 9192,
                             "Config": {"connect_timeout_ms": 2000}}]},
}
SNAKE = {
    "kind": "connect-proxy", "id": "web-sidecar-proxy", "service": "web-sidecar-proxy", "tags": ["v1"],
    "meta": {"team": "a"}, "port": 21000, "address": "10.0.0.5", "datacenter": "dc1", "content_hash": "abc",
    "proxy": {"destination_service_name": "web", "destination_service_id": "web",
              "local_service_address": "127.0.0.1", "local_service_port": 8080,
              "config": {"local_connect_timeout_ms": 500, "Nested": {"KeepCase": 1}},
              "upstreams": [{"destination_name": "api", "local_bind_port": 9191},
                            {"destination_type": "prepared_query", "destination_name": "db", "datacenter": "dc2",
                             "local_bind_address": "127.0.0.2", "local_bind_port": 9192,
                             "config": {"connect_timeout_ms": 2000}}]},
}
EXPECTED = AgentService(
    id="web-sidecar-proxy", service="web-sidecar-proxy", kind="connect-proxy", address="10.0.0.5", port=21000,
    tags=("v1",), meta={"team": "a"}, datacenter="dc1", content_hash="abc",
    proxy=Proxy(destination_service_name="web", destination_service_id="web", local_service_address="127.0.0.1",
                local_service_port=8080, config={"local_connect_timeout_ms": 500, "Nested": {"KeepCase": 1}},
                upstreams=(Upstream("api", 9191),
                           Upstream("db", 9192, destination_type="prepared_query", datacenter="dc2",
                                    local_bind_address="127.0.0.2", config={"connect_timeout_ms": 2000}))),
)


@pytest.mark.parametrize("body", [CAMEL, SNAKE], ids=["CamelCase", "snake_case"])
def test_agent_service_in_either_spelling(body):
    assert parse_agent_service(body) == EXPECTED


def test_upstream_defaults_are_consuls():
    up = EXPECTED.proxy.upstreams[0]
    assert (up.destination_type, up.local_bind_address, up.datacenter, up.config) == ("service", "127.0.0.1", "", {})


def test_plain_service_has_no_proxy_and_id_defaults_to_name():
    got = parse_agent_service({"Service": "web", "Port": 8080, "Proxy": {}, "Connect": {"Native": True}})
    assert got.id == "web" and got.proxy is None and got.connect_native and got.port == 8080


def test_the_builders_shapes_parse():
    body = sidecar_service("web", 21000, upstreams=[("api", 9191)], config={"bind_port": 21001})
    svc = parse_agent_service(body)
    assert svc.id == "web-sidecar-proxy" and svc.proxy.destination_service_id == "web"
    assert svc.proxy.upstreams == (Upstream("api", 9191),) and svc.proxy.config == {"bind_port": 21001}
    assert parse_agent_services({"web-sidecar-proxy": body, "web": {"ID": "web", "Service": "web"}}).keys() == {
        "web-sidecar-proxy", "web"}


@pytest.mark.parametrize("body, message", [
    ([], "AgentService must be a JSON object"),
    ({"ID": "x"}, "AgentService.Service: missing service name"),
    ({"Service": "web", "Kind": "spaceship"}, "AgentService.Kind: unknown service kind"),
    ({"Service": "web", "Port": "8080"}, "AgentService.Port must be an integer"),
    ({"Service": "web", "Port": 70000}, "AgentService.Port out of range"),
    ({"Service": "web", "Port": True}, "AgentService.Port must be an integer"),
    ({"Service": "web", "Tags": "a,b"}, "AgentService.Tags must be a list of strings"),
    ({"Service": "web", "Meta": {"a": 1}}, "AgentService.Meta must be an object of strings"),
    ({"Service": "web", "Proxy": []}, "AgentService.Proxy must be an object"),
    ({"Service": "web", "Proxy": {"Upstreams": {}}}, "AgentService.Proxy.Upstreams must be a list"),
    ({"Service": "web", "Proxy": {"Upstreams": [{"LocalBindPort": 1}]}},
     r"AgentService.Proxy.Upstreams\[0\].DestinationName must be set"),
    ({"Service": "web", "Proxy": {"Upstreams": [{"DestinationName": "a", "LocalBindPort": "9191"}]}},
     r"Upstreams\[0\].LocalBindPort must be an integer"),
    ({"Service": "web", "Proxy": {"Config": "x"}}, "AgentService.Proxy.Config must be an object"),
])
def test_wrong_shapes_are_refused_naming_the_field(body, message):
    with pytest.raises(DecodeError, match=message) as info:
        parse_agent_service(body)
    assert isinstance(info.value, ValueError) and isinstance(info.value, APIError)


def test_agent_services_must_be_a_map():
    with pytest.raises(DecodeError, match="JSON object"):
        parse_agent_services([CAMEL])
    with pytest.raises(DecodeError, match=r"services\['b'\].Service: missing service name"):
        parse_agent_services({"b": {}})


# ---- certificates ---------------------------------------------------------------------


def test_leaf():
    body = dict(leaf_body("web", CERT, KEY, valid_after=1714557600, valid_before=1714816800, serial=0x1f2),
                CreateIndex=7, ModifyIndex=9, Unknown=1)
    leaf = parse_leaf(body)
    assert leaf.serial_number == "01:f2" and leaf.cert_pem == CERT and leaf.private_key_pem == KEY
    assert leaf.service == "web" and leaf.service_uri.endswith("/ns/default/dc/dc1/svc/web")
    assert (leaf.valid_after, leaf.valid_before, leaf.modify_index) == (1714557600, 1714816800, 9)


@pytest.mark.parametrize("text, epoch", [
    ("2024-05-01T10:00:00Z", 1714557600),
    ("2024-05-01T10:00:00.123456789Z", 1714557600.123456),
    ("2024-05-01T12:00:00+02:00", 1714557600),
])
def test_rfc3339(text, epoch):
    assert parse_rfc3339(text) == pytest.approx(epoch)


@pytest.mark.parametrize("change, message", [
    ({"CertPEM": ""}, "Leaf.CertPEM must hold a PEM certificate"),
    ({"PrivateKeyPEM": CERT}, "Leaf.PrivateKeyPEM must hold a PEM private key"),
    ({"ValidBefore": "tomorrow"}, "Leaf.ValidBefore is not an RFC 3339 time"),
    ({"ValidBefore": "2024-05-01T10:00:00"}, "Leaf.ValidBefore has no time zone"),
    ({"ValidAfter": 1714557600}, "Leaf.ValidAfter must be a string"),
    ({"ModifyIndex": -1}, "Leaf.ModifyIndex out of range"),
])
def test_bad_leaves(change, message):
    body = dict(leaf_body("web", CERT, KEY, valid_after=0, valid_before=1), **change)
    with pytest.raises(DecodeError, match=message):
        parse_leaf(body)


def test_roots_bundle_holds_every_root_and_the_cross_signed_certificates():
    old, new, cross = (CERT.replace("MIIB", tag) for tag in ("OLD", "NEW", "CROSS"))
    roots = parse_roots(roots_body([old, new], intermediates={1: [cross]}))
    assert roots.trust_domain.endswith(".consul") and roots.active().root_cert == new
    assert roots.active().intermediate_certs == (cross,) and roots.active().active
    assert roots.bundle() == (old, new, cross)


def test_roots_before_the_ca_exists():
    roots = parse_roots({"ActiveRootID": "", "TrustDomain": "", "Roots": None})
    assert roots.roots == () and roots.active() is None and roots.bundle() == ()


@pytest.mark.parametrize("body, message", [
    ({"TrustDomain": "x", "Roots": {}}, "CARoots.Roots must be a list"),
    ({"ActiveRootID": "a", "Roots": [{"ID": "a", "RootCert": "nope"}]}, r"CARoots.Roots\[0\].RootCert must hold"),
    ({"ActiveRootID": "b", "Roots": [{"ID": "a", "RootCert": CERT}]}, "ActiveRootID 'b' is not among the roots"),
    ({"Roots": [{"ID": "a", "RootCert": CERT, "IntermediateCerts": "x"}]}, "IntermediateCerts must be a list"),
])
def test_bad_roots(body, message):
    with pytest.raises(DecodeError, match=message):
        parse_roots(body)


# ---- health connect ---------------------------------------------------------------------


def test_connect_endpoints():
    entries = [connect_entry("api", "n1", "10.0.0.1", 21000),
               connect_entry("api", "n2", "", 21001, node_address="10.0.0.2", status="critical", datacenter="dc2"),
               connect_entry("api", "n3", "10.0.0.3", 8443, native=True)]
    a, b, c = parse_connect_endpoints(entries)
    assert (a.node, a.address, a.port, a.destination, a.service_id, a.passing) == (
        "n1", "10.0.0.1", 21000, "api", "api-sidecar-proxy", True)
    assert a.checks == (("serfHealth", "passing"), ("service:api-sidecar-proxy", "passing"))
    assert (b.address, b.datacenter, b.passing) == ("10.0.0.2", "dc2", False)  # the node's address
    assert (c.destination, c.service_name, c.port) == ("api", "api", 8443)
    assert parse_connect_endpoints(None) == () and parse_connect_endpoints([]) == ()


@pytest.mark.parametrize("entries, message", [
    ({}, "health entries must be a list"),
    (["x"], r"entries\[0\] must be a JSON object"),
    ([{"Node": {}, "Service": {"Service": "api"}}], "neither a connect-proxy nor Connect-native"),
    ([{"Node": {}, "Service": {"Kind": "connect-proxy", "Service": "p", "Port": "1"}}],
     r"entries\[0\].Service.Port must be"),
    ([{"Node": {}, "Service": {"Kind": "connect-proxy", "Service": "p"}, "Checks": {}}],
     r"entries\[0\].Checks must be a list"),
    ([{"Node": [], "Service": {"Kind": "connect-proxy", "Service": "p"}}], r"entries\[0\].Node must be an object"),
])
def test_bad_connect_entries(entries, message):
    with pytest.raises(DecodeError, match=message):
        parse_connect_endpoints(entries)


# ---- intentions -------------------------------------------------------------------------


def _api(src, dst, action):
    return parse_intention({"SourceName": src, "DestinationName": dst, "Action": action}).to_api()


def test_intention_match_feeds_the_catalogs_decision():
    body = {"api": [_api("web", "api", "allow"), _api("*", "api", "deny"), _api("*", "*", "allow")]}
    rows = parse_intention_match(body, "api")
    index = IntentionIndex(rows)
    assert index.decide("web", "api", default_allow=False).allowed
    assert not index.decide("cache", "api", default_allow=True).allowed
    assert parse_intention_match({"API": body["api"]}, "api") == rows  # keyed in another case
    assert parse_intention_match({}, "api") == ()


@pytest.mark.parametrize("body, message", [
    ([], "intention match must be a JSON object"),
    ({"api": {}}, r"intention match\['api'\] must be a list"),
    ({"api": [{"SourceName": "web", "DestinationName": "api", "Action": "maybe"}]},
     r"intention match\['api'\]\[0\]: Action must be allow or deny"),
])
def test_bad_intention_matches(body, message):
    with pytest.raises(DecodeError, match=message):
        parse_intention_match(body, "api")


def test_default_policy_header():
    assert default_allow({}) is True
    assert default_allow({"X-Consul-Default-ACL-Policy": "deny"}) is False
    assert default_allow({"X-Consul-Default-ACL-Policy": "allow"}) is True
    with pytest.raises(DecodeError, match="allow or deny"):
        default_allow({"X-Consul-Default-ACL-Policy": "maybe"})
