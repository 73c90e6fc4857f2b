"""The proxy's configuration value: Consul's keys and defaults, flags, and when it is complete."""

from __future__ import annotations

import pytest

from mesh.api.builders import sidecar_service
from mesh.api.types import parse_agent_service, parse_leaf, parse_roots
from mesh.proxy.config import (
    ConfigBuilder,
    ConfigError,
    parse_upstream_flag,
    registration_from_service,
)
from tests.harness.testca import TestCA


def service(**kw):
    return parse_agent_service(sidecar_service("web", 21000, **kw))


def test_consul_defaults():
    reg = registration_from_service(service(local_port=8080, upstreams=[("api", 9191)]))
    assert (reg.proxy_id, reg.service) == ("web-sidecar-proxy", "web")
    assert (reg.public_address, reg.public_port) == ("0.0.0.0", 21000)
    assert (reg.local_address, reg.local_port) == ("127.0.0.1", 8080)
    assert (reg.local_connect_timeout, reg.handshake_timeout, reg.idle_timeout) == (1.0, 10.0, 0.0)
    (up,) = reg.upstreams
    assert (up.destination_name, up.bind_address, up.bind_port, up.connect_timeout, up.load_balancer) == \
        ("api", "127.0.0.1", 9191, 10.0, "round_robin")


def test_config_keys_in_milliseconds_and_mesh_additions():
    reg = registration_from_service(service(
        config={"local_connect_timeout_ms": 250, "handshake_timeout_ms": "2000", "idle_timeout_ms": 60000,
                "prometheus_bind_addr": "127.0.0.1:9102"},
        upstreams=[{"DestinationName": "api", "LocalBindPort": 9191,
                    "Config": {"connect_timeout_ms": 500, "load_balancer": "least_request"}}]))
    assert (reg.local_connect_timeout, reg.handshake_timeout, reg.idle_timeout) == (0.25, 2.0, 60.0)
    assert reg.prometheus_bind_addr == "127.0.0.1:9102"
    assert (reg.upstreams[0].connect_timeout, reg.upstreams[0].load_balancer) == (0.5, "least_request")


def test_the_service_port_overrides_bind_port_as_in_consul():
    reg = registration_from_service(service(config={"bind_address": "10.0.0.1", "bind_port": 7000}))
    assert reg.public_port == 21000
    no_port = parse_agent_service({**sidecar_service("web", 0, config={"bind_port": 7000}), "Port": 0})
    assert registration_from_service(no_port).public_port == 7000


@pytest.mark.parametrize("config, fragment", [
    ({"local_connect_timeout_ms": "soon"}, "local_connect_timeout_ms"),
    ({"handshake_timeout_ms": -1}, "handshake_timeout_ms"),
    ({"handshake_timeout_ms": True}, "handshake_timeout_ms"),
])
def test_bad_config_values_are_refused_with_the_key(config, fragment):
    with pytest.raises(ConfigError, match=fragment):
        registration_from_service(service(config=config))


def test_bad_upstream_config_is_refused():
    with pytest.raises(ConfigError, match="load_balancer"):
        registration_from_service(service(upstreams=[{"DestinationName": "api", "LocalBindPort": 1,
                                                      "Config": {"load_balancer": "fastest"}}]))


def test_a_plain_service_is_not_a_proxy():
    with pytest.raises(ConfigError, match="not a connect-proxy"):
        registration_from_service(parse_agent_service({"ID": "web", "Service": "web", "Port": 80}))


@pytest.mark.parametrize("flag, expected", [
    ("api:9191", ("api", "127.0.0.1", 9191)),
    ("api.service:10.0.0.5:9191", ("api", "10.0.0.5", 9191)),
])
def test_upstream_flags(flag, expected):
    up = parse_upstream_flag(flag)
    assert (up.destination_name, up.bind_address, up.bind_port) == expected


@pytest.mark.parametrize("flag", ["api", "api:", ":9191", "api:port", "q.query:9191", "api:70000"])
def test_bad_upstream_flags(flag):
    with pytest.raises(ConfigError):
        parse_upstream_flag(flag)


def test_the_builder_waits_for_every_input_then_reuses_contexts():
    ca = TestCA()
    built: list[int] = []

    def contexts(identity, bundle, alpn):
        built.append(1)
        from mesh.ca.tls import build_contexts

        return build_contexts(identity, bundle, alpn)

    builder = ConfigBuilder(build_contexts=contexts)
    assert builder.build() is None and "registration" in builder.problem
    builder.registration = registration_from_service(service())
    assert builder.build() is None and "roots" in builder.problem
    builder.roots = parse_roots(ca.roots())
    assert builder.build() is None and "leaf" in builder.problem
    builder.leaf = parse_leaf(TestCA().leaf("web"))  # another CA: not ready
    assert builder.build() is None and "does not verify" in builder.problem
    builder.leaf = parse_leaf(ca.leaf("web"))
    first = builder.build()
    assert first is not None and first.trust_domain == ca.trust_domain
    builder.instances["api"] = ()
    second = builder.build()
    assert second is not None and second.server_context is first.server_context and len(built) == 1
    builder.leaf = parse_leaf(ca.leaf("web"))
    third = builder.build()
    assert third is not None and third.server_context is not first.server_context
    assert third.generation == first.generation + 1


def test_authorize_uses_the_intentions_and_the_default():
    ca = TestCA()
    builder = ConfigBuilder(registration=registration_from_service(service()), roots=parse_roots(ca.roots()),
                            leaf=parse_leaf(ca.leaf("web")))
    from mesh.catalog.intentions import intention_from_api

    builder.set_intentions((intention_from_api({"SourceName": "api", "DestinationName": "web", "Action": "deny"}),),
                           default_allow=True)
    config = builder.build()
    assert config is not None
    assert not config.authorize("api").allowed
    assert config.authorize("db").allowed
    builder.set_intentions((), default_allow=False)
    assert not builder.build().authorize("db").allowed


def test_the_first_configuration_waits_for_the_instances_of_local_targets_only():
    ca = TestCA()
    reg = registration_from_service(service(upstreams=[("api", 9191), {"DestinationName": "db", "LocalBindPort": 9192,
                                                                      "Datacenter": "dc2"}]))
    builder = ConfigBuilder(datacenter="dc1", registration=reg, roots=parse_roots(ca.roots()),
                            leaf=parse_leaf(ca.leaf("web")))
    assert builder.build() is None and builder.problem == "waiting for the instances of api"
    builder.instances["api"] = ()  # answered, even with none: "no healthy upstream" is then the truth
    first = builder.build()
    assert first is not None  # db@dc2 may never answer (an unknown datacenter): not waited for
    del builder.instances["api"]
    assert builder.build() is not None  # once serving, a configuration never waits again
