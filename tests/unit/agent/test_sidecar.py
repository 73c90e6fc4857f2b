"""`connect { sidecar_service {} }` expanded as Consul's agent does (consul.md §6.6),
sidecar ports (lowest free, stable across re-registration, reload and restart,
Consul's errors), and the sidecar's life with its parent in the local state."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.agent.config import load_file
from mesh.agent.local.definitions import parse_service_definition, services_from_config
from mesh.agent.local.sidecar import (
    DEFAULT_PORT_RANGE,
    assign_port,
    draft,
    for_config,
    for_registration,
)
from mesh.agent.local.state import LocalState
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.structs import Node

WEB = {
    "ID": "web-1", "Name": "web", "Port": 8080, "Address": "10.0.0.5", "Tags": ["v1"], "Meta": {"team": "a"},
    "Token": "parent-token",
    "Connect": {"SidecarService": {"Proxy": {
        "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}],
        "Config": {"local_connect_timeout_ms": 500, "bind_address": "0.0.0.0"},
    }}},
}


def local_state(data_dir: str | None = None, started: bool = True) -> LocalState:
    """`started`: as the agent leaves it once its definitions are loaded (ports of
    sidecars that did not come back are forgotten from then on)."""
    local = LocalState(Node(node="n1", address="127.0.0.1"), data_dir)
    if started:
        local.prune_sidecar_ports()
    return local


def register(local: LocalState, body: dict, port_range: tuple[int, int] = DEFAULT_PORT_RANGE) -> list:
    regs = for_registration(parse_service_definition(body), local, port_range)
    local.register(regs, "api", body)
    return regs


def with_sidecar(body: dict, **block) -> dict:
    return {**body, "Connect": {"SidecarService": block}}


# ---- expansion --------------------------------------------------------------------------


def test_every_field_of_the_expansion():
    parent, sidecar = register(local_state(), WEB)
    assert parent.service.connect == {}  # the nested definition is not kept on the parent
    assert parent.token == "parent-token"
    s = sidecar.service
    assert (s.id, s.service, s.kind, s.port, s.address) == (
        "web-1-sidecar-proxy", "web-sidecar-proxy", "connect-proxy", 21000, "10.0.0.5")
    assert s.tags == ("v1",) and s.meta == {"team": "a"}
    assert s.proxy == {
        "DestinationServiceName": "web", "DestinationServiceID": "web-1",
        "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080,
        "Config": {"local_connect_timeout_ms": 500, "bind_address": "0.0.0.0"},
        "Upstreams": [{"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191,
                       "MeshGateway": {}}],
        "MeshGateway": {}, "Expose": {},
    }
    assert (sidecar.sidecar_for, sidecar.token, sidecar.port_assigned) == ("web-1", "parent-token", True)
    listening, aliasing = sidecar.checks
    assert (listening.check_id, listening.name, listening.kind, listening.tcp, listening.interval) == (
        "service:web-1-sidecar-proxy:1", "Connect Sidecar Listening", "tcp", "10.0.0.5:21000", 10.0)
    assert (aliasing.check_id, aliasing.name, aliasing.kind, aliasing.alias_service) == (
        "service:web-1-sidecar-proxy:2", "Connect Sidecar Aliasing web-1", "alias", "web-1")
    assert {c.service_id for c in sidecar.checks} == {"web-1-sidecar-proxy"}
    assert {c.service_name for c in sidecar.checks} == {"web-sidecar-proxy"}


def test_a_bare_block_on_a_parent_without_address_tags_or_meta():
    _, sidecar = register(local_state(), {"Name": "api", "Port": 9000, "connect": {"sidecar_service": {}}})
    s = sidecar.service
    assert (s.id, s.address, s.tags, s.meta, s.port) == ("api-sidecar-proxy", "", (), {}, 21000)
    assert s.proxy["LocalServicePort"] == 9000 and "Upstreams" not in s.proxy
    assert sidecar.checks[0].tcp == "127.0.0.1:21000"  # the sidecar's address, else LocalServiceAddress


def test_the_block_overrides_name_port_address_tags_meta_proxy_fields_and_token():
    _, sidecar = register(local_state(), with_sidecar(
        WEB, Name="edge", Port=20000, Address="10.0.0.9", Tags=["proxy"], Meta={"role": "p"}, Token="own",
        Proxy={"local_service_address": "127.0.0.2", "local_service_port": 8081,
               "destination_service_name": "ignored-not", "mode": "direct"}))
    s = sidecar.service
    assert (s.service, s.port, s.address, s.tags, s.meta) == ("edge", 20000, "10.0.0.9", ("proxy",), {"role": "p"})
    assert s.proxy["LocalServiceAddress"] == "127.0.0.2" and s.proxy["LocalServicePort"] == 8081
    assert s.proxy["DestinationServiceName"] == "ignored-not" and s.proxy["Mode"] == "direct"
    assert s.proxy["DestinationServiceID"] == "web-1"
    assert (sidecar.token, sidecar.port_assigned) == ("own", False)
    assert sidecar.checks[0].tcp == "10.0.0.9:20000"


def test_empty_tags_and_meta_in_the_block_copy_the_parents():
    _, sidecar = register(local_state(), with_sidecar(WEB, Tags=[], Meta={}))
    assert sidecar.service.tags == ("v1",) and sidecar.service.meta == {"team": "a"}


def test_checks_in_the_block_replace_the_default_ones():
    _, sidecar = register(local_state(), with_sidecar(WEB, Checks=[{"Name": "mine", "TTL": "30s"}]))
    (check,) = sidecar.checks
    assert (check.check_id, check.name, check.kind) == ("service:web-1-sidecar-proxy", "mine", "ttl")
    _, sidecar = register(local_state(), with_sidecar(WEB, check={"tcp": "127.0.0.1:1", "interval": "5s"}))
    assert [c.tcp for c in sidecar.checks] == ["127.0.0.1:1"]


def test_ipv6_sidecar_address_in_the_listening_check():
    _, sidecar = register(local_state(), with_sidecar(WEB, Address="fd00::5"))
    assert sidecar.checks[0].tcp == "[fd00::5]:21000"


def test_native_and_sidecar_together_as_consul_allows():
    parent, sidecar = register(local_state(), {"Name": "web", "Port": 1, "Connect": {"Native": True,
                                                                                     "SidecarService": {}}})
    assert parent.service.connect == {"Native": True} and sidecar.service.kind == "connect-proxy"


@pytest.mark.parametrize(
    "body, message",
    [
        (with_sidecar(WEB, ID="x"), r"SidecarService\.ID: A SidecarService cannot specify an ID"),
        (with_sidecar(WEB, Kind="mesh-gateway"), r"SidecarService\.Kind: a sidecar service is a connect-proxy"),
        (with_sidecar(WEB, Connect={"SidecarService": {}}), "A SidecarService cannot have a nested SidecarService"),
        (with_sidecar(WEB, Connect={"Native": True}), "A Proxy cannot also be Connect Native"),
        ({"Name": "web", "Connect": {"SidecarService": "yes"}}, r"Connect\.SidecarService must be an object"),
        ({"Name": "p", "Kind": "connect-proxy", "Port": 1, "Proxy": {"DestinationServiceName": "web"},
          "Connect": {"SidecarService": {}}}, "a connect-proxy cannot have a sidecar service"),
        ({"Name": "gw", "Kind": "mesh-gateway", "Port": 1, "Connect": {"SidecarService": {}}},
         "A mesh-gateway cannot have a sidecar service defined"),
        (with_sidecar(WEB, Proxy={"Upstreams": [{"DestinationName": "db"}]}),
         r"SidecarService\.Proxy\.Upstreams\[0\]: upstream local bind port"),
        (with_sidecar(WEB, Meta={"consul-x": "1"}), "reserved"),
        (with_sidecar(WEB, Port=70000), r"SidecarService\.Port out of range"),
        (with_sidecar(WEB, Checks=[{"HTTP": "http://x/"}]), r"Interval: must be > 0"),
    ],
)
def test_bad_sidecar_blocks_are_refused_naming_the_field(body, message):
    with pytest.raises(InvalidRequest, match=message):
        for_registration(parse_service_definition(body), local_state(), DEFAULT_PORT_RANGE)


def test_config_files_in_hcl_and_json_snake_case(tmp_path):
    hcl = tmp_path / "web.hcl"
    hcl.write_text("""
service {
  name = "web"
  port = 8080
  connect {
    sidecar_service {
      proxy {
        config { local_connect_timeout_ms = 250 }
        upstreams = [{ destination_name = "api", local_bind_port = 9191, config = { connect_timeout_ms = 5 } }]
      }
    }
  }
}
""")
    js = tmp_path / "web.json"
    js.write_text(json.dumps({"service": {"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {
        "config": {"local_connect_timeout_ms": 250},
        "upstreams": [{"destination_name": "api", "local_bind_port": 9191, "config": {"connect_timeout_ms": 5}}]}}}}}))
    proxies = []
    for path in (hcl, js):
        (defn,) = services_from_config(load_file(str(path)), str(path))
        (_, sidecar) = for_config([(defn, draft(defn))], local_state(), DEFAULT_PORT_RANGE)
        proxies.append(sidecar.service.proxy)
    assert proxies[0] == proxies[1]
    assert proxies[0]["Config"] == {"local_connect_timeout_ms": 250}
    assert proxies[0]["Upstreams"][0]["Config"] == {"connect_timeout_ms": 5}
    assert proxies[0]["Upstreams"][0]["LocalBindPort"] == 9191


def test_config_files_are_strict_inside_sidecar_and_proxy_blocks(tmp_path):
    for text, bad in [
        ('service {\n name = "w"\n connect {\n sidecar_service {\n prot = 1\n }\n }\n}\n', "'prot'"),
        ('service {\n name = "w"\n connect {\n sidecar_service {\n proxy {\n upstreams = [{ destination_nam = "a" }]'
         '\n }\n }\n }\n}\n', "proxy.upstreams[0].destination_nam"),
        ('service {\n name = "w"\n connect {\n nativ = true\n }\n}\n', "connect.nativ"),
    ]:
        path = tmp_path / "bad.hcl"
        path.write_text(text)
        with pytest.raises(InvalidRequest, match="unknown key") as err:
            services_from_config(load_file(str(path)), str(path))
        assert bad in str(err.value)


# ---- ports ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "used, remembered, current, expected",
    [
        (set(), {}, 0, 21000),
        ({21000, 21001}, {}, 0, 21002),
        ({21000}, {}, 21005, 21005),  # the port it has
        ({21000}, {"s": 21007}, 0, 21007),  # the port it had
        ({21007}, {"s": 21007}, 0, 21000),  # taken meanwhile: the lowest free
        (set(), {"other": 21000}, 0, 21001),  # another sidecar's, not back yet: avoided
        (set(range(21001, 21256)), {"other": 21000}, 0, 21000),  # ... unless nothing else is free
        (set(), {}, 30000, 21000),  # out of range: assigned anew
    ],
)
def test_assign_port(used, remembered, current, expected):
    assert assign_port("s", used, DEFAULT_PORT_RANGE, remembered, current) == expected


def test_assign_port_errors_are_consuls():
    with pytest.raises(InvalidRequest, match=r"^no port provided for sidecar_service and none left in the "
                                             r"configured range \[21000, 21001\]$"):
        assign_port("s", {21000, 21001}, (21000, 21001), {})
    for off in [(0, 21255), (-1, 21255), (0, 0)]:
        with pytest.raises(InvalidRequest, match=r"^no port provided for sidecar_service and auto-assignment "
                                                 r"disabled in config$"):
            assign_port("s", set(), off, {})


def test_assignment_off_still_takes_a_given_port():
    _, sidecar = register(local_state(), with_sidecar(WEB, Port=20000), port_range=(0, 21255))
    assert sidecar.service.port == 20000
    with pytest.raises(InvalidRequest, match="auto-assignment disabled"):
        register(local_state(), WEB, port_range=(0, 21255))


def test_lowest_port_not_used_by_another_service_and_stable_across_re_registration():
    local = local_state()
    register(local, {"Name": "taken", "Port": 21000})
    register(local, WEB)
    register(local, with_sidecar({"Name": "api", "Port": 9000}))
    assert local.services["web-1-sidecar-proxy"].service.port == 21001
    assert local.services["api-sidecar-proxy"].service.port == 21002
    register(local, {**WEB, "Port": 8081})  # re-registered: same port, new LocalServicePort
    sidecar = local.services["web-1-sidecar-proxy"].service
    assert sidecar.port == 21001 and sidecar.proxy["LocalServicePort"] == 8081
    assert local.sidecars() == {"web-1-sidecar-proxy": "web-1", "api-sidecar-proxy": "api"}
    assert local.sidecar_ports == {"web-1-sidecar-proxy": 21001, "api-sidecar-proxy": 21002}


def test_a_parent_on_a_port_of_the_range_is_not_given_to_its_sidecar():
    _, sidecar = register(local_state(), with_sidecar({"Name": "odd", "Port": 21000}))
    assert sidecar.service.port == 21001


def test_range_exhausted_leaves_everything_as_it_was():
    local = local_state()
    register(local, WEB, port_range=(21000, 21000))
    version = local.version
    with pytest.raises(InvalidRequest, match=r"none left in the configured range \[21000, 21000\]"):
        register(local, with_sidecar({"Name": "api", "Port": 1}), port_range=(21000, 21000))
    assert "api" not in local.services and local.version == version


# ---- life with the parent ------------------------------------------------------------------


def test_deregistering_the_parent_removes_the_sidecar_and_its_checks():
    local = local_state()
    register(local, WEB)
    removed = local.remove_service("web-1")
    assert set(removed) == {"service:web-1-sidecar-proxy:1", "service:web-1-sidecar-proxy:2"}
    assert local.services == {} and local.checks == {} and local.sidecars() == {}
    assert local.sidecar_ports == {}


def test_re_registering_the_parent_without_the_block_removes_its_sidecar():
    local = local_state()
    register(local, WEB)
    register(local, {k: v for k, v in WEB.items() if k != "Connect"})
    assert set(local.services) == {"web-1"} and local.checks == {}


def test_a_service_registered_over_a_sidecars_id_is_no_longer_the_agents_sidecar():
    local = local_state()
    register(local, WEB)
    register(local, {"ID": "web-1-sidecar-proxy", "Name": "mine", "Port": 1})
    assert local.sidecars() == {}
    local.remove_service("web-1")
    assert "web-1-sidecar-proxy" in local.services


def test_ports_survive_a_restart_and_are_kept_for_sidecars_not_back_yet(tmp_path):
    data = str(tmp_path)
    local = local_state(data)
    register(local, WEB)
    register(local, with_sidecar({"Name": "api", "Port": 9000}))
    path = os.path.join(data, "local", "sidecar-ports.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.load(open(path)) == {"api-sidecar-proxy": 21001, "web-1-sidecar-proxy": 21000}
    # restart: api comes back first; it keeps its port and web's stays reserved for web
    restarted = local_state(data, started=False)
    register(restarted, with_sidecar({"Name": "api", "Port": 9000}))
    register(restarted, with_sidecar({"Name": "new", "Port": 1}))
    register(restarted, WEB)
    restarted.prune_sidecar_ports()
    ports = {sid: s.service.port for sid, s in restarted.services.items() if s.sidecar_for}
    assert ports == {"api-sidecar-proxy": 21001, "new-sidecar-proxy": 21002, "web-1-sidecar-proxy": 21000}
    # a sidecar that did not come back is forgotten once the restart's registrations are in
    again = local_state(data, started=False)
    register(again, WEB)
    again.prune_sidecar_ports()
    assert again.sidecar_ports == {"web-1-sidecar-proxy": 21000}


def test_config_reload_keeps_ports_and_drops_removed_sidecars(tmp_path):
    local = local_state(str(tmp_path))
    register(local, {"Name": "apiside", "Port": 1})

    def load(*bodies):
        entries = [(d, draft(d)) for d in map(parse_service_definition, bodies)]
        local.replace_config(for_config(entries, local, DEFAULT_PORT_RANGE), [])

    load(with_sidecar({"Name": "a", "Port": 1}), with_sidecar({"Name": "b", "Port": 2}))
    assert local.sidecar_ports == {"a-sidecar-proxy": 21000, "b-sidecar-proxy": 21001}
    load(with_sidecar({"Name": "b", "Port": 2}), with_sidecar({"Name": "c", "Port": 3}))
    assert local.sidecar_ports == {"b-sidecar-proxy": 21001, "c-sidecar-proxy": 21002}
    assert local.sidecars() == {"b-sidecar-proxy": "b", "c-sidecar-proxy": "c"}
    assert local.services["b-sidecar-proxy"].source == "config"
    assert "apiside" in local.services


_json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), st.text(max_size=12),
              st.sampled_from(["web", "127.0.0.1", "::1", "connect-proxy", "10s"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
        st.sampled_from(["Name", "Port", "Address", "Tags", "Meta", "Proxy", "Upstreams", "DestinationName",
                         "LocalBindPort", "local_service_port", "Config", "Checks", "Kind", "ID", "Connect",
                         "SidecarService", "Native", "Token", "TTL", "x"]), inner, max_size=5)),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_any_sidecar_block_is_expanded_or_refused_with_a_400(block, proxy):
    body = {"Name": "web", "Port": 8080, "Connect": {"SidecarService": block}}
    if isinstance(block, dict):
        body["Connect"]["SidecarService"] = {**block, "Proxy": proxy}
    try:
        register(local_state(), body)
    except InvalidRequest:
        pass
