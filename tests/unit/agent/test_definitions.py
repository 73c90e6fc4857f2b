"""Agent service and check definitions: Consul's keys in both spellings, automatic IDs,
one check kind each, config files in JSON and HCL, errors that name the field."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.agent.config import load_file
from mesh.agent.local.definitions import (
    CheckDefinition,
    checks_from_config,
    parse_check,
    parse_service_definition,
    services_from_config,
    split_host_port,
)
from mesh.catalog.errors import InvalidRequest


def check(**body):
    return parse_check(body, what="check")


def test_http_check_in_camel_case():
    c = check(ID="web-http", Name="web http", HTTP="https://127.0.0.1:8443/health", Method="POST",
              Header={"X-A": ["b", "c"], "X-Single": "d"}, Body="{}", Interval="10s", Timeout="1s",
              TLSSkipVerify=True, TLSServerName="web.local", DisableRedirects=True, Notes="n",
              SuccessBeforePassing=2, FailuresBeforeCritical=3, DeregisterCriticalServiceAfter="90m")
    assert c.check_id == "web-http" and c.name == "web http" and c.kind == "http" and c.type_name() == "http"
    assert c.http == "https://127.0.0.1:8443/health" and c.method == "POST" and c.body == "{}"
    assert c.header == {"X-A": ["b", "c"], "X-Single": ["d"]}
    assert (c.interval, c.timeout, c.deregister_critical_service_after) == (10.0, 1.0, 5400.0)
    assert c.tls_skip_verify and c.tls_server_name == "web.local" and c.disable_redirects
    assert (c.success_before_passing, c.failures_before_critical, c.notes) == (2, 3, "n")
    assert c.status == "critical"  # Consul's initial status unless one is given


def test_snake_case_keys_and_defaults():
    c = check(check_id="t", tcp="127.0.0.1:80", interval="5s", output_max_size=10, failures_before_warning=1,
              tls_skip_verify=False, status="passing")
    assert c.kind == "tcp" and c.tcp == "127.0.0.1:80" and c.output_max_size == 10 and c.failures_before_warning == 1
    assert c.timeout == 10.0 and c.status == "passing" and c.name == "t"


@pytest.mark.parametrize(
    "body, kind, extra",
    [
        ({"Name": "t", "TTL": "30s"}, "ttl", {"ttl": 30.0}),
        ({"Name": "s", "Args": ["/bin/true"], "Interval": "1s"}, "script", {"args": ("/bin/true",)}),
        ({"Name": "s", "ScriptArgs": ["/bin/true", "-x"], "Interval": "1s"}, "script", {"args": ("/bin/true", "-x")}),
        ({"Name": "a", "AliasService": "db"}, "alias", {"alias_service": "db"}),
        ({"Name": "a", "AliasService": "db", "AliasNode": "n1"}, "alias", {"alias_node": "n1"}),
        ({"Name": "a", "alias_node": "n1"}, "alias", {"alias_node": "n1"}),
        ({"Name": "bare", "Status": "passing"}, "", {"status": "passing"}),
    ],
)
def test_each_kind(body, kind, extra):
    c = parse_check(body, what="check")
    assert c.kind == kind
    for key, value in extra.items():
        assert getattr(c, key) == value


def test_standalone_check_ids_and_service_id():
    assert check(Name="mem", TTL="10s").check_id == "mem"
    c = check(ID="only-id", ServiceID="web", TTL="10s")
    assert (c.check_id, c.name, c.service_id) == ("only-id", "only-id", "web")


def test_definition_api_renders_go_durations():
    c = check(Name="h", HTTP="http://127.0.0.1/", Interval="1m30s", Timeout="2s", Header={"A": ["b"]})
    d = c.definition_api()
    assert d["Interval"] == "1m30s" and d["Timeout"] == "2s" and d["DeregisterCriticalServiceAfter"] == "0s"
    assert d["HTTP"] == "http://127.0.0.1/" and d["Method"] == "GET" and d["Header"] == {"A": ["b"]}
    assert {"Body", "TLSServerName", "TLSSkipVerify", "TCP"} <= set(d)
    t = check(Name="t", TTL="10s").definition_api()
    assert t["Interval"] == "0s" and t["Timeout"] == "0s" and t["Header"] is None and t["HTTP"] == ""
    json.dumps(d)


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, r"check\.Name: missing check name"),
        ({"Name": "x", "HTTP": "http://a/", "TCP": "a:1", "Interval": "1s"}, "exactly one of HTTP, TCP, TTL, Args.*got HTTP, TCP"),
        ({"Name": "x", "TTL": "10s", "Args": ["/bin/true"], "Interval": "1s"}, "got TTL, Args"),
        ({"Name": "x", "AliasService": "db", "TCP": "a:1", "Interval": "1s"}, "got TCP, AliasService"),
        ({"Name": "x", "GRPC": "127.0.0.1:9000/svc", "Interval": "1s"}, r"check\.GRPC: GRPC checks are not supported yet"),
        ({"Name": "x", "DockerContainerID": "abc", "Args": ["true"], "Interval": "1s"}, "Docker checks are not supported"),
        ({"Name": "x", "UDP": "127.0.0.1:53", "Interval": "1s"}, r"check\.UDP: UDP checks are not supported"),
        ({"Name": "x", "H2PING": "127.0.0.1:443", "Interval": "1s"}, "H2PING checks are not supported"),
        ({"Name": "x", "OSService": "sshd", "Interval": "1s"}, "OSService checks are not supported"),
        ({"Name": "x", "Script": "/bin/true", "Interval": "1s"}, r"check\.Script: no longer supported"),
        ({"Name": "x", "TCP": "a:1", "TCPUseTLS": True, "Interval": "1s"}, "not supported"),
        ({"Name": "x", "HTTP": "http://a/"}, r"check\.Interval: must be > 0 for script, HTTP, or TCP checks"),
        ({"Name": "x", "TCP": "a:1", "Interval": "0s"}, r"check\.Interval: must be > 0"),
        ({"Name": "x", "Args": ["/bin/true"]}, r"check\.Interval: must be > 0"),
        ({"Name": "x", "TTL": "0s"}, r"check\.TTL: must be > 0 for TTL checks"),
        ({"Name": "x", "TTL": "10s", "Interval": "10s"}, "Interval and TTL cannot both be specified"),
        ({"Name": "x", "Interval": "10s"}, "nothing to run"),
        ({"Name": "x", "HTTP": "http://a/", "Interval": "10x"}, r"Invalid check\.Interval"),
        ({"Name": "x", "HTTP": "http://a/", "Interval": "1s", "Timeout": "-1s"}, r"check\.Timeout.*negative"),
        ({"Name": "x", "TTL": "soon"}, r"Invalid check\.TTL"),
        ({"Name": "x", "TTL": "1s", "DeregisterCriticalServiceAfter": "1 hour"}, r"check\.DeregisterCriticalServiceAfter"),
        ({"Name": "x", "HTTP": "ftp://a/", "Interval": "1s"}, r"check\.HTTP: must be an http:// or https:// URL"),
        ({"Name": "x", "HTTP": "http://[::1", "Interval": "1s"}, r"check\.HTTP: must be an http:// or https:// URL"),
        ({"Name": "x", "TTL": "1s", "OutputMaxSize": float("nan")}, r"check\.OutputMaxSize must be an integer"),
        ({"Name": "x", "TTL": "1s", "FailuresBeforeCritical": float("inf")}, r"check\.FailuresBeforeCritical"),
        ({"Name": "x", "TTL": "999999999999999h"}, r"check\.TTL.*out of range"),
        ({"Name": "x", "HTTP": "127.0.0.1:80/health", "Interval": "1s"}, r"check\.HTTP"),
        ({"Name": "x", "TCP": "localhost", "Interval": "1s"}, r"check\.TCP: must be host:port"),
        ({"Name": "x", "TCP": "localhost:http", "Interval": "1s"}, r"check\.TCP: must be host:port"),
        ({"Name": "x", "TCP": "::1:80", "Interval": "1s"}, r"check\.TCP: must be host:port"),
        ({"Name": "x", "TCP": "a:70000", "Interval": "1s"}, r"check\.TCP: must be host:port"),
        ({"Name": "x", "TTL": "1s", "Status": "ok"}, r"check\.Status: must be one of passing, warning, critical"),
        ({"Name": "x", "HTTP": "http://a/", "Interval": "1s", "Method": "GE T"}, r"check\.Method"),
        ({"Name": "x", "HTTP": "http://a/", "Interval": "1s", "Header": {"A": 1}}, r"check\.Header"),
        ({"Name": "x", "HTTP": "http://a/", "Interval": "1s", "Header": ["A"]}, r"check\.Header"),
        ({"Name": "x", "Args": "/bin/true", "Interval": "1s"}, r"check\.ScriptArgs must be a list of strings"),
        ({"Name": "x", "TTL": "1s", "OutputMaxSize": -1}, r"check\.OutputMaxSize out of range"),
        ({"Name": "x", "TTL": "1s", "SuccessBeforePassing": "2"}, r"check\.SuccessBeforePassing must be an integer"),
        ({"Name": "x", "TTL": "1s", "TLSSkipVerify": "yes"}, r"check\.TLSSkipVerify must be a boolean"),
        ({"Name": 5, "TTL": "1s"}, r"check\.Name must be a string"),
    ],
)
def test_bad_checks_name_the_field(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_check(body, what="check")


def test_check_must_be_an_object():
    with pytest.raises(InvalidRequest, match="check must be a JSON object"):
        parse_check(["x"], what="check")


def test_split_host_port():
    assert split_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert split_host_port("[::1]:8500") == ("::1", 8500)
    assert split_host_port("db.local:5432") == ("db.local", 5432)
    for bad in ("", ":80", "a:", "a:0", "[::1:80", "a:b"):
        with pytest.raises(ValueError):
            split_host_port(bad)


# --- services ---------------------------------------------------------------------


def test_service_registration_with_one_check_gets_consul_auto_id():
    d = parse_service_definition({"Name": "web", "Port": 8080, "Tags": ["v1"],
                                  "Check": {"HTTP": "http://127.0.0.1:8080/", "Interval": "10s"}})
    assert d.service.id == "web" and d.service.service == "web" and d.service.port == 8080
    assert d.service.tags == ("v1",)
    (c,) = d.checks
    assert c.check_id == "service:web" and c.name == "Service 'web' check"
    assert c.service_id == "web" and c.service_name == "web"


def test_several_checks_are_numbered_from_one_check_first():
    d = parse_service_definition({"ID": "web-1", "Name": "web",
                                  "Check": {"TTL": "10s"},
                                  "Checks": [{"TCP": "127.0.0.1:1", "Interval": "5s"},
                                             {"ID": "mine", "Name": "named", "TTL": "5s"}]})
    assert [c.check_id for c in d.checks] == ["service:web-1:1", "service:web-1:2", "mine"]
    assert [c.kind for c in d.checks] == ["ttl", "tcp", "ttl"]
    assert d.checks[2].name == "named" and all(c.service_id == "web-1" for c in d.checks)


def test_empty_check_block_is_skipped():
    d = parse_service_definition({"Name": "web", "Check": {}, "Checks": [{"TTL": "3s"}]})
    assert [c.check_id for c in d.checks] == ["service:web"]


def test_service_snake_case_keys():
    d = parse_service_definition({"name": "web", "id": "web-2", "port": 1, "enable_tag_override": True,
                                  "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 1}},
                                  "weights": {"passing": 10, "warning": 2}, "meta": {"team": "a"},
                                  "checks": [{"ttl": "10s", "deregister_critical_service_after": "1m"}]})
    s = d.service
    assert s.id == "web-2" and s.enable_tag_override and s.weights == {"Passing": 10, "Warning": 2}
    assert s.meta == {"team": "a"} and s.tagged_addresses["lan"]["address"] == "10.0.0.1"
    assert d.checks[0].deregister_critical_service_after == 60.0


def test_connect_proxy_registration():
    d = parse_service_definition({"Kind": "connect-proxy", "Name": "web-proxy", "Port": 21000,
                                  "Proxy": {"DestinationServiceName": "web", "LocalServicePort": 8080}})
    assert d.service.kind == "connect-proxy" and d.service.proxy["DestinationServiceName"] == "web"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"Port": 80}, r"service\.Name: missing service name"),
        ({"Name": ""}, r"service\.Name: missing service name"),
        ({"Name": 3}, r"service\.Name must be a string"),
        ({"Name": "web", "Port": 70000}, r"service\.Port out of range: 70000"),
        ({"Name": "web", "Port": -1}, r"service\.Port out of range"),
        ({"Name": "web", "Port": "80"}, r"service\.Port must be an integer"),
        ({"Name": "web", "Kind": "nope"}, r"service\.Kind: unknown service kind"),
        ({"Name": "web", "Meta": {"consul-x": "1"}}, "reserved"),
        ({"Name": "web", "Kind": "connect-proxy", "Proxy": {"DestinationServiceName": "x"}}, r"service\.Port: must be set"),
        ({"Name": "web", "Kind": "connect-proxy", "Port": 1}, r"service\.Proxy\.DestinationServiceName"),
        ({"Name": "web", "Check": {"HTTP": "http://a/"}}, r"service\.check\.Interval: must be > 0"),
        ({"Name": "web", "Checks": [{"TTL": "1s"}, {"TCP": "a:1", "Interval": "1x"}]}, r"Invalid service\.checks\[1\]\.Interval"),
        ({"Name": "web", "Checks": [{"TTL": "1s"}, {"GRPC": "a:1", "Interval": "1s"}]}, r"service\.checks\[1\]\.GRPC: GRPC checks are not supported yet"),
        ({"Name": "web", "Checks": {"TTL": "1s"}}, r"service\.Checks must be a list"),
        ("web", "service must be a JSON object"),
    ],
)
def test_bad_services_name_the_field(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_service_definition(body)


# --- config files -----------------------------------------------------------------


def test_json_config_file(tmp_path):
    path = tmp_path / "web.json"
    path.write_text(json.dumps({
        "service": {"name": "web", "id": "web-1", "port": 8080, "tags": ["v1"], "meta": {"team": "a"},
                    "enable_tag_override": False, "weights": {"passing": 10, "warning": 1},
                    "check": {"id": "web-http", "name": "web http", "http": "http://127.0.0.1:8080/health",
                              "method": "GET", "header": {"X-A": ["b"]}, "interval": "10s", "timeout": "1s",
                              "tls_skip_verify": False, "success_before_passing": 2,
                              "failures_before_critical": 3, "deregister_critical_service_after": "90m"},
                    "connect": {"sidecar_service": {"proxy": {"upstreams": [
                        {"destination_name": "db", "local_bind_port": 9191}]}}}},
        "services": [{"name": "db", "port": 5432}, {"name": "cache"}],
        "check": {"id": "mem", "name": "memory", "args": ["/bin/true"], "interval": "30s"},
        "checks": [{"name": "disk", "ttl": "1m", "service_id": "db"}],
    }))
    data = load_file(str(path))
    services = services_from_config(data, str(path))
    assert [s.service.id for s in services] == ["web-1", "db", "cache"]
    web = services[0]
    assert web.service.weights == {"Passing": 10, "Warning": 1}
    # the block is taken off the service (Consul keeps nothing of it there) for the agent to expand
    assert web.service.connect == {}
    assert web.sidecar["proxy"]["upstreams"][0]["local_bind_port"] == 9191
    (c,) = web.checks
    assert c.check_id == "web-http" and c.success_before_passing == 2 and c.deregister_critical_service_after == 5400
    checks = checks_from_config(data, str(path))
    assert [(c.check_id, c.kind, c.service_id) for c in checks] == [("mem", "script", ""), ("disk", "ttl", "db")]


def test_hcl_config_file_blocks(tmp_path):
    path = tmp_path / "web.hcl"
    path.write_text("""
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  meta = { team = "a" }
  weights {
    passing = 5
    warning = 1
  }
  check {
    http     = "http://127.0.0.1:8080/health"
    interval = "10s"
    header   = { X-A = ["b"] }
  }
  checks = [{ tcp = "127.0.0.1:8080", interval = "5s" }]
  connect {
    sidecar_service {
      proxy {
        upstreams = [{ destination_name = "db", local_bind_port = 9191 }]
      }
    }
  }
}
service {
  name = "db"
  port = 5432
}
check {
  id  = "mem"
  ttl = "30s"
}
""")
    data = load_file(str(path))
    services = services_from_config(data, str(path))
    assert [s.service.service for s in services] == ["web", "db"]
    web = services[0]
    assert web.service.weights == {"Passing": 5, "Warning": 1} and web.service.meta == {"team": "a"}
    assert web.sidecar["proxy"]["upstreams"][0]["destination_name"] == "db"
    assert [(c.check_id, c.kind) for c in web.checks] == [("service:web:1", "http"), ("service:web:2", "tcp")]
    assert web.checks[0].header == {"X-A": ["b"]}
    assert [c.check_id for c in checks_from_config(data, str(path))] == ["mem"]


def test_hcl_single_service_block_is_named_without_index(tmp_path):
    path = tmp_path / "one.hcl"
    path.write_text('service {\n  name = "web"\n  port = 70000\n}\n')
    with pytest.raises(InvalidRequest, match=r"one\.hcl: service\.Port out of range: 70000"):
        services_from_config(load_file(str(path)), str(path))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"service": {"name": "web", "prot": 80}}, r"f\.json: service: unknown key 'prot'"),
        ({"service": {"name": "web", "check": {"ttl": "1s", "intervall": "1s"}}}, r"service\.check: unknown key 'intervall'"),
        ({"services": [{"name": "a"}, {"port": 1}]}, r"f\.json: services\[1\]\.Name: missing service name"),
        ({"services": {"name": "a"}}, "services must be a list of objects"),
        ({"service": "web"}, "service must be an object"),
        ({"check": {"name": "c", "tll": "1s"}}, r"f\.json: check: unknown key 'tll'"),
        ({"checks": [{"name": "c", "ttl": "1s"}, {"ttl": "1s"}]}, r"f\.json: checks\[1\]\.Name: missing check name"),
    ],
)
def test_bad_config_files_name_the_file_and_key(data, message):
    with pytest.raises(InvalidRequest, match=message):
        services_from_config(data, "f.json")
        checks_from_config(data, "f.json")


def test_config_without_services_or_checks():
    assert services_from_config({"datacenter": "dc1"}, "x.json") == []
    assert checks_from_config({}, "x.json") == []


def test_definitions_are_frozen_values():
    c = check(Name="t", TTL="1s")
    assert isinstance(c, CheckDefinition)
    with pytest.raises(AttributeError):
        c.name = "other"  # type: ignore[misc]


# --- any JSON is a definition or an InvalidRequest, never another exception (a 500) ---

_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
            | st.sampled_from(["10s", "http://[::1", "http://a/", "127.0.0.1:80", "1e999h", "-1s", "passing"]))
_KEYS = st.sampled_from(["Name", "ID", "Port", "Address", "Tags", "Meta", "Weights", "Passing", "Warning", "Check",
                         "Checks", "HTTP", "TCP", "TTL", "Args", "Interval", "Timeout", "OutputMaxSize", "Header",
                         "Status", "Kind", "Proxy", "Connect", "TaggedAddresses", "AliasService", "GRPC",
                         "FailuresBeforeCritical", "DeregisterCriticalServiceAfter", "Method", "ServiceID"])
_BODIES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=6),
                       max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _BODIES, max_size=8))
def test_fuzzed_bodies_are_definitions_or_invalid_request(body):
    for parse in (lambda b: parse_service_definition(b), lambda b: parse_check(b, what="check")):
        try:
            parse(body)
        except InvalidRequest:
            pass
