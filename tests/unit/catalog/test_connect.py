"""Proxy and Connect blocks in Consul's CamelCase (user maps untouched), Consul's
connect-proxy validation, and which rows belong in whose connect view."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.catalog.connect import (
    canonical_connect,
    canonical_proxy,
    connect_names,
    format_host_port,
    unknown_keys,
    validate_proxy,
)
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.requests import parse_service
from mesh.catalog.structs import Service

SNAKE = {
    "destination_service_name": "web",
    "destination_service_id": "web-1",
    "local_service_address": "127.0.0.1",
    "local_service_port": 8080,
    "config": {"local_connect_timeout_ms": 500, "Nested": {"keep_me": 1}},
    "upstreams": [{"destination_name": "db", "local_bind_port": 9191, "local_bind_address": "127.0.0.2",
                   "datacenter": "dc2", "config": {"connect_timeout_ms": 100}, "mesh_gateway": {"mode": "local"}}],
    "mesh_gateway": {"mode": "remote"},
    "expose": {"checks": True, "paths": [{"path": "/health", "local_path_port": 8080, "listener_port": 21500}]},
    "transparent_proxy": {"outbound_listener_port": 15001, "dialed_directly": False},
}


def test_snake_case_proxy_becomes_consuls_camel_case_with_user_maps_as_written():
    proxy = canonical_proxy(SNAKE)
    assert proxy == {
        "DestinationServiceName": "web",
        "DestinationServiceID": "web-1",
        "LocalServiceAddress": "127.0.0.1",
        "LocalServicePort": 8080,
        "TransparentProxy": {"OutboundListenerPort": 15001, "DialedDirectly": False},
        "Config": {"local_connect_timeout_ms": 500, "Nested": {"keep_me": 1}},
        "Upstreams": [{"DestinationType": "service", "DestinationName": "db", "Datacenter": "dc2",
                       "LocalBindAddress": "127.0.0.2", "LocalBindPort": 9191, "Config": {"connect_timeout_ms": 100},
                       "MeshGateway": {"Mode": "local"}}],
        "MeshGateway": {"Mode": "remote"},
        "Expose": {"Checks": True, "Paths": [{"ListenerPort": 21500, "Path": "/health", "LocalPathPort": 8080}]},
    }
    # Consul's field order, as its JSON has it
    assert list(proxy)[:4] == ["DestinationServiceName", "DestinationServiceID", "LocalServiceAddress",
                               "LocalServicePort"]


def test_camel_case_is_kept_and_wins_over_another_spelling():
    proxy = canonical_proxy({"LocalServicePort": 1, "local_service_port": 2, "destinationservicename": "a"})
    assert proxy["LocalServicePort"] == 1 and proxy["DestinationServiceName"] == "a"


def test_upstream_defaults_are_consuls_and_local_bind_address_stays_empty():
    (u,) = canonical_proxy({"Upstreams": [{"DestinationName": "db", "LocalBindPort": 1}]})["Upstreams"]
    assert u == {"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 1, "MeshGateway": {}}
    (q,) = canonical_proxy({"upstreams": [{"destination_type": "prepared_query", "destination_name": "q",
                                           "local_bind_port": 2}]})["Upstreams"]
    assert q["DestinationType"] == "prepared_query"


def test_empty_proxy_stays_empty_and_unknown_keys_are_dropped_as_go_json_does():
    assert canonical_proxy({}) == {}
    assert canonical_proxy({"DestinationServiceName": "web", "Bogus": 1}) == {
        "DestinationServiceName": "web", "MeshGateway": {}, "Expose": {}}
    assert canonical_connect({"native": True, "whatever": 1}) == {"Native": True}
    assert canonical_connect({"Native": False}) == {}
    assert canonical_connect({"sidecar_service": {"port": 1}}) == {"SidecarService": {"port": 1}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"local_service_port": "80"}, r"Proxy\.LocalServicePort must be an integer"),
        ({"local_service_port": 70000}, r"Proxy\.LocalServicePort out of range"),
        ({"upstreams": {"destination_name": "db"}}, r"Proxy\.Upstreams must be a list"),
        ({"upstreams": ["db"]}, r"Proxy\.Upstreams\[0\] must be an object"),
        ({"config": [1]}, r"Proxy\.Config must be an object"),
        ({"destination_service_name": 3}, r"Proxy\.DestinationServiceName must be a string"),
        ({"expose": {"checks": "yes"}}, r"Proxy\.Expose\.Checks must be a boolean"),
    ],
)
def test_bad_values_name_the_field(raw, message):
    with pytest.raises(InvalidRequest, match=message):
        canonical_proxy(raw)


def test_unknown_keys_for_config_files_do_not_look_into_user_maps():
    raw = {"destination_service_name": "web", "config": {"anything": 1},
           "upstreams": [{"destination_name": "db", "local_bind_prot": 1, "config": {"x": 1}}]}
    assert unknown_keys(raw, "proxy", "proxy") == ["proxy.upstreams[0].local_bind_prot"]
    assert unknown_keys({"native": True, "sidecar_service": {"nonsense": 1}}, "connect", "connect") == []
    assert unknown_keys({"nativ": True}, "connect", "connect") == ["connect.nativ"]


def test_catalog_service_rows_store_the_canonical_form():
    svc = parse_service({"Name": "web-proxy", "Kind": "connect-proxy", "Port": 21000,
                         "proxy": {"destination_service_name": "web"}, "connect": {"native": False}})
    assert svc.proxy["DestinationServiceName"] == "web" and svc.connect == {}
    assert svc.to_api()["Proxy"]["DestinationServiceName"] == "web"


def _proxy(**extra):
    return canonical_proxy({"DestinationServiceName": "web", **extra})


@pytest.mark.parametrize(
    "proxy, connect, message",
    [
        (canonical_proxy({"LocalServicePort": 1}), {}, r"s\.Proxy\.DestinationServiceName: must be set"),
        (_proxy(DestinationServiceName="*"), {}, "must not be a wildcard"),
        (_proxy(), {"Native": True}, "A Proxy cannot also be Connect Native, only typical services"),
        (_proxy(Upstreams=[{"DestinationType": "x", "DestinationName": "db", "LocalBindPort": 1}]), {},
         r"Upstreams\[0\]: unknown upstream destination type: 'x'"),
        (_proxy(Upstreams=[{"LocalBindPort": 1}]), {}, "upstream destination name cannot be empty"),
        (_proxy(Upstreams=[{"DestinationName": "*", "LocalBindPort": 1}]), {},
         "upstream destination name cannot be a wildcard"),
        (_proxy(Upstreams=[{"DestinationName": "db"}]), {},
         "upstream local bind port or local socket path must be defined and nonzero"),
        (_proxy(Upstreams=[{"DestinationName": "db", "LocalBindPort": 1, "LocalBindSocketPath": "/s"}]), {},
         "only one of upstream local bind port or local socket path"),
        (_proxy(Upstreams=[{"DestinationName": "db", "DestinationPeer": "p", "Datacenter": "dc2",
                            "LocalBindPort": 1}]), {}, "cannot specify both destination peer and datacenter"),
        (_proxy(Upstreams=[{"DestinationName": "db", "LocalBindPort": 1},
                           {"DestinationName": "db", "LocalBindPort": 2}]), {},
         r"Upstreams\[1\]: upstreams cannot contain duplicates of service 'db'"),
        (_proxy(Upstreams=[{"DestinationName": "db", "LocalBindPort": 1},
                           {"DestinationName": "api", "LocalBindPort": 1, "LocalBindAddress": "127.0.0.1"}]), {},
         "'127.0.0.1:1' is specified twice"),
    ],
)
def test_connect_proxy_validation_is_consuls(proxy, connect, message):
    with pytest.raises(InvalidRequest, match=message):
        validate_proxy("connect-proxy", proxy, connect, "s")


def test_valid_proxies_and_other_kinds_pass():
    validate_proxy("connect-proxy", _proxy(Upstreams=[
        {"DestinationName": "db", "LocalBindPort": 1},
        {"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 2},
        {"DestinationName": "q", "DestinationType": "prepared_query", "LocalBindPort": 3},
    ]), {}, "s")
    validate_proxy("", {}, {"Native": True}, "s")


def test_format_host_port_brackets_ipv6():
    assert format_host_port("127.0.0.1", 21000) == "127.0.0.1:21000"
    assert format_host_port("::1", 21000) == "[::1]:21000"
    assert format_host_port("host.example", 1) == "host.example:1"


def test_connect_names():
    proxy = Service(id="p", service="web-sidecar-proxy", kind="connect-proxy", proxy={"DestinationServiceName": "Web"})
    assert connect_names(proxy) == ("web",)
    assert connect_names(Service(id="n", service="API", connect={"Native": True})) == ("api",)
    assert connect_names(Service(id="w", service="web")) == ()
    # a proxy's destination only counts for a connect-proxy
    assert connect_names(Service(id="x", service="x", proxy={"DestinationServiceName": "web"})) == ()


@given(st.dictionaries(st.sampled_from(["Config", "config", "Meta"]),
                       st.dictionaries(st.text(min_size=1, max_size=8), st.integers(), max_size=4)))
def test_keys_inside_config_are_never_renamed(raw):
    proxy = canonical_proxy({"DestinationServiceName": "web", **raw})
    if "Config" in raw:
        assert proxy["Config"] == raw["Config"]
    elif "config" in raw:
        assert proxy["Config"] == raw["config"]


def test_a_node_may_hold_its_services_identities_and_those_its_proxies_front():
    from mesh.catalog.connect import may_hold_identity
    from mesh.catalog.structs import Service

    web = Service(id="web", service="web")
    proxy = Service(id="api-proxy", service="api-proxy", kind="connect-proxy",
                    proxy={"DestinationServiceName": "api"})
    native = Service(id="db", service="db", connect={"Native": True})
    assert may_hold_identity(web, "WEB") and not may_hold_identity(web, "api")
    assert may_hold_identity(proxy, "api") and may_hold_identity(proxy, "api-proxy")
    assert not may_hold_identity(proxy, "db")
    assert may_hold_identity(native, "db")
