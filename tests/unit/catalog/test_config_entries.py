"""Config entries: decoding and validation of every field (each error names it), Consul's
key spellings, unknown keys, the JSON read back, and resolve_protocol."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.config_entries import (
    RETRY_ON,
    entry_to_api,
    parse_config_entry,
    resolve_protocol,
)
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.store import Store

SD = {"Kind": "service-defaults", "Name": "web"}
PD = {"Kind": "proxy-defaults", "Name": "global"}
SR = {"Kind": "service-router", "Name": "web"}
SI = {"Kind": "service-intentions", "Name": "web"}


def route(match=None, dest=None):
    out = {}
    if match is not None:
        out["Match"] = {"HTTP": match}
    if dest is not None:
        out["Destination"] = dest
    return {**SR, "Routes": [out]}


def test_service_defaults_canonical_and_read_back_as_consul_writes_it():
    entry = parse_config_entry({**SD, "Protocol": "HTTP", "LocalConnectTimeoutMs": 100, "LocalRequestTimeoutMs": 0,
                                "MaxInboundConnections": 5, "Meta": {"team": "a"}})
    assert entry.body == {"Protocol": "http", "MaxInboundConnections": 5, "LocalConnectTimeoutMs": 100,
                          "Meta": {"team": "a"}}
    api = entry_to_api(entry)
    assert list(api) == ["Kind", "Name", "Protocol", "TransparentProxy", "MeshGateway", "Expose",
                         "MaxInboundConnections", "LocalConnectTimeoutMs", "Meta", "CreateIndex", "ModifyIndex"]
    assert api["TransparentProxy"] == {} and api["Protocol"] == "http"
    # what a read answers can be written again (Consul's empty structs included)
    assert parse_config_entry(api).body == entry.body
    bare = entry_to_api(parse_config_entry(SD))
    assert bare["Protocol"] == "" and "Meta" not in bare and "LocalConnectTimeoutMs" not in bare


def test_snake_case_and_camel_case_decode_the_same():
    camel = {**SR, "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a", "QueryParam": [{"Name": "q", "Exact": "1"}]}},
                               "Destination": {"Service": "api", "PrefixRewrite": "/", "RequestTimeout": "1m30s",
                                               "NumRetries": 2, "RetryOnConnectFailure": True,
                                               "RetryOnStatusCodes": [503], "RequestHeaders": {"Add": {"x": "1"}}}}]}
    snake = {"kind": "service-router", "name": "web",
             "routes": [{"match": {"http": {"path_prefix": "/a", "query_param": [{"name": "q", "exact": "1"}]}},
                         "destination": {"service": "api", "prefix_rewrite": "/", "request_timeout": "90s",
                                         "num_retries": 2, "retry_on_connect_failure": True,
                                         "retry_on_status_codes": [503], "request_headers": {"add": {"x": "1"}}}}]}
    assert parse_config_entry(camel) == parse_config_entry(snake)
    assert parse_config_entry(snake).body["Routes"][0]["Destination"]["RequestTimeout"] == "1m30s"
    sd = parse_config_entry({"kind": "service-defaults", "name": "web", "local_connect_timeout_ms": 7,
                             "max_inbound_connections": 3, "local_request_timeout_ms": 9})
    assert sd.body == {"MaxInboundConnections": 3, "LocalConnectTimeoutMs": 7, "LocalRequestTimeoutMs": 9}


def test_hcl_blocks_are_objects():
    """python-hcl2 gives a block as a list of one map; Consul decodes it as the map."""
    entry = parse_config_entry({**PD, "Config": [{"protocol": "http"}], "AccessLogs": [{"Enabled": True}],
                                "Meta": [{"a": "b"}]})
    assert entry.body == {"Config": {"protocol": "http"}, "AccessLogs": {"Enabled": True}, "Meta": {"a": "b"}}


def test_proxy_defaults():
    entry = parse_config_entry({"Kind": "proxy-defaults", "Config": {"protocol": "http", "tracing": {"x": 1}},
                                "AccessLogs": {"Enabled": True, "Type": "file", "Path": "/tmp/a.log",
                                               "JSONFormat": "{}"}})
    assert entry.name == "global" and entry.body["Config"]["tracing"] == {"x": 1}
    assert entry_to_api(entry)["AccessLogs"] == {"Enabled": True, "Type": "file", "Path": "/tmp/a.log",
                                                 "JSONFormat": "{}"}
    assert entry_to_api(parse_config_entry(PD))["Config"] is None  # Go's nil map


@pytest.mark.parametrize(
    "body, field",
    [
        ({"Name": "web"}, "kind/Kind"),
        ({"Kind": 3, "Name": "web"}, "Kind"),
        ({"Kind": "nope", "Name": "web"}, "invalid config entry kind: nope"),
        ({"Kind": "ingress-gateway", "Name": "web"}, "not supported by mesh yet"),
        ({**PD, "Name": "other"}, 'invalid name ("other")'),
        ({**PD, "Config": "x"}, "Config must be an object"),
        ({**PD, "Config": {"protocol": "grpc"}}, "Config.protocol: protocol 'grpc' is not supported yet"),
        ({**PD, "Config": {"protocol": 1}}, "Config.protocol"),
        ({**PD, "AccessLogs": {"Type": "syslog"}}, "AccessLogs.Type"),
        ({**PD, "AccessLogs": {"Type": "file"}}, "AccessLogs.Path must be set"),
        ({**PD, "AccessLogs": {"Path": "/x"}}, "AccessLogs.Path is only valid"),
        ({**PD, "AccessLogs": {"JSONFormat": "{}", "TextFormat": "%START_TIME%"}}, "AccessLogs.JSONFormat and "),
        ({**PD, "AccessLogs": {"Enabled": "yes"}}, "AccessLogs.Enabled must be a boolean"),
        ({**PD, "AccessLogs": {"Bogus": 1}}, '"AccessLogs.Bogus"'),
        ({**PD, "Mode": "transparent"}, "Mode is not supported by mesh"),
        ({**PD, "MeshGateway": {"Mode": "local"}}, "MeshGateway is not supported"),
        ({**SD, "Name": ""}, "Name is required"),
        ({**SD, "Name": "*"}, "not a wildcard"),
        ({**SD, "Name": "we b"}, "Name: invalid service name"),
        ({**SD, "Protocol": "http2"}, "Protocol: protocol 'http2' is not supported yet"),
        ({**SD, "Protocol": "grpc"}, "not supported yet"),
        ({**SD, "Protocol": "udp"}, "Protocol: unknown protocol 'udp'"),
        ({**SD, "Protocol": 1}, "Protocol must be a string"),
        ({**SD, "LocalConnectTimeoutMs": -1}, "LocalConnectTimeoutMs out of range"),
        ({**SD, "LocalRequestTimeoutMs": 1.5}, "LocalRequestTimeoutMs must be an integer"),
        ({**SD, "MaxInboundConnections": "3"}, "MaxInboundConnections must be an integer"),
        ({**SD, "Meta": {"consul-x": "1"}}, "Meta: meta key 'consul-x' uses the reserved prefix"),
        ({**SD, "Meta": {"a": 1}}, "Meta must be an object of strings"),
        ({**SD, "UpstreamConfig": {"Defaults": {"MeshGateway": {"Mode": "local"}}}},
         "UpstreamConfig.Defaults.MeshGateway is not supported"),
        ({**SD, "Namespace": "team"}, '"Namespace", namespaces are a consul enterprise feature'),
        ({**SD, "Partition": "p"}, '"Partition", partitions are a consul enterprise feature'),
        ({**SD, "Protocl": "http"}, 'invalid config key "Protocl"'),
        ({**SD, "Protocol": "http", "protocol": "tcp"}, "protocol is given more than once"),
        (route({"PathExact": "a"}), "Routes[0].Match.HTTP.PathExact doesn't start with '/'"),
        (route({"PathPrefix": "a"}), "Routes[0].Match.HTTP.PathPrefix doesn't start with '/'"),
        (route({"PathRegex": "("}), "Routes[0].Match.HTTP.PathRegex: invalid regular expression"),
        (route({"PathExact": "/a", "PathPrefix": "/b"}), "Routes[0].Match.HTTP should only contain at most one"),
        (route({"Header": [{"Exact": "x"}]}), "Routes[0].Match.HTTP.Header[0].Name is required"),
        (route({"Header": [{"Name": "x"}]}), "Routes[0].Match.HTTP.Header[0] should only contain one of"),
        (route({"Header": [{"Name": "x", "Exact": "a", "Prefix": "b"}]}), "Header[0] should only contain one"),
        (route({"Header": [{"Name": "x", "Regex": "["}]}), "Routes[0].Match.HTTP.Header[0].Regex"),
        (route({"Header": [{"Name": "x", "Present": True, "Invert": "no"}]}), "Header[0].Invert must be a boolean"),
        (route({"QueryParam": [{"Name": "q", "Suffix": "x"}]}), '"Routes[0].Match.HTTP.QueryParam[0].Suffix"'),
        (route({"QueryParam": [{"Name": "q"}]}), "QueryParam[0] should only contain one of Present, Exact, or Regex"),
        (route({"QueryParam": [{"Exact": "q"}]}), "QueryParam[0].Name is required"),
        (route({"Methods": ["FETCH"]}), 'Routes[0].Match.HTTP.Methods contains an invalid method "FETCH"'),
        (route({"Methods": ["GET", "get"]}), "Methods contains a method more than once"),
        (route({"Methods": "GET"}), "Routes[0].Match.HTTP.Methods must be a list of strings"),
        (route({"CaseInsensitive": True}), "CaseInsensitive is not supported"),
        (route(None, {"Service": "a b"}), "Routes[0].Destination.Service: invalid service name"),
        (route(None, {"ServiceSubset": 2}), "Routes[0].Destination.ServiceSubset must be a string"),
        (route(None, {"Namespace": "other"}), "Routes[0].Destination.Namespace"),
        (route(None, {"PrefixRewrite": "/x"}), "Routes[0].Destination.PrefixRewrite: cannot be used without"),
        (route({"PathRegex": "/x"}, {"PrefixRewrite": "/x"}), "PrefixRewrite"),
        (route(None, {"RequestTimeout": "5"}), "Routes[0].Destination.RequestTimeout"),
        (route(None, {"RequestTimeout": 5}), "Routes[0].Destination.RequestTimeout must be a duration string"),
        (route(None, {"IdleTimeout": "-1s"}), "Routes[0].Destination.IdleTimeout"),
        (route(None, {"NumRetries": -1}), "Routes[0].Destination.NumRetries out of range"),
        (route(None, {"NumRetries": 1 << 33}), "Routes[0].Destination.NumRetries out of range"),
        (route(None, {"RetryOnConnectFailure": 1}), "Routes[0].Destination.RetryOnConnectFailure must be a boolean"),
        (route(None, {"RetryOn": ["sometimes"]}), 'Routes[0].Destination.RetryOn contains an invalid retry condition'),
        (route(None, {"RetryOnStatusCodes": [99]}), "Routes[0].Destination.RetryOnStatusCodes[0] out of range"),
        (route(None, {"RetryOnStatusCodes": "503"}), "Routes[0].Destination.RetryOnStatusCodes must be a list"),
        (route(None, {"RequestHeaders": {"Add": {"x": 1}}}), "Routes[0].Destination.RequestHeaders.Add"),
        (route(None, {"ResponseHeaders": {"Remove": "x"}}), "Routes[0].Destination.ResponseHeaders.Remove"),
        (route(None, {"ResponseHeaders": {"Append": {}}}), '"Routes[0].Destination.ResponseHeaders.Append"'),
        ({**SR, "Routes": "x"}, "Routes must be a list of objects"),
        ({**SR, "Routes": [{"Match": {"HTTP": {}, "GRPC": {}}}]}, '"Routes[0].Match.GRPC"'),
        ({**SR, "Routes": [{"Mtch": {}}]}, 'invalid config key "Routes[0].Mtch"'),
        ({**SI, "Sources": []}, "At least one source is required"),
        ({**SI, "Name": "w*"}, "Name: wildcard character"),
        ({**SI, "Sources": [{"Action": "allow"}]}, "Sources[0].Name is required"),
        ({**SI, "Sources": [{"Name": "a*", "Action": "allow"}]}, "Sources[0].Name: wildcard character"),
        ({**SI, "Sources": [{"Name": "a"}]}, "Sources[0].Action must be set to 'allow' or 'deny'"),
        ({**SI, "Sources": [{"Name": "a", "Action": "maybe"}]}, "Sources[0].Action must be set"),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow"}, {"Name": "A", "Action": "deny"}]},
         'Sources[1] defines "A" more than once'),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow", "Type": "external"}]}, "Sources[0].Type must be"),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow", "Description": "x" * 513}]}, "Sources[0].Description"),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow", "LegacyMeta": {"a": "b"}}]},
         "Sources[0].LegacyMeta must be omitted"),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow", "Peer": "other"}]}, "Sources[0].Peer is not supported"),
        ({**SI, "JWT": {"Providers": [{"Name": "x"}]}, "Sources": [{"Name": "a", "Action": "allow"}]}, "JWT"),
        ({**SI, "Sources": [{"Name": "a", "Action": "allow", "Permissions": [{"Action": "deny",
                                                                             "HTTP": {"PathExact": "/"}}]}]},
         "Sources[0].Action must be omitted if Permissions are specified"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "x", "HTTP": {"PathExact": "/"}}]}]},
         "Sources[0].Permissions[0].Action must be set"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow"}]}]},
         "Sources[0].Permissions[0].HTTP is required"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {}}]}]},
         "Sources[0].Permissions[0].HTTP should not be empty"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "x"}}]}]},
         "Sources[0].Permissions[0].HTTP.PathExact doesn't start with '/'"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "h"}]}}]}]},
         "Sources[0].Permissions[0].HTTP.Header[0] should only contain one of"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["NOPE"]}}]}]},
         "Sources[0].Permissions[0].HTTP.Methods contains an invalid method"),
        ({**SI, "Sources": [{"Name": "a", "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/"},
                                                          "Extra": 1}]}]},
         '"Sources[0].Permissions[0].Extra"'),
        ({**SI, "Name": "*", "Sources": [{"Name": "a", "Permissions": [{"Action": "allow",
                                                                       "HTTP": {"PathExact": "/"}}]}]},
         "Sources[0].Permissions cannot be specified on intentions with wildcarded destinations"),
    ],
)
def test_invalid_fields_are_refused_by_name(body, field):
    with pytest.raises(InvalidRequest) as err:
        parse_config_entry(body)
    assert field in str(err.value)


def test_every_unknown_key_is_named():
    with pytest.raises(InvalidRequest) as err:
        parse_config_entry({**SD, "Bogus": 1, "local_bogus": 2})
    assert str(err.value) == ('Request decoding failed: invalid config key "Bogus"; '
                              'invalid config key "local_bogus"')


def test_read_only_and_default_fields_are_taken():
    """What Consul writes back (indexes, empty structs, the default namespace) is no error."""
    entry = parse_config_entry({**SD, "CreateIndex": 5, "ModifyIndex": 6, "Namespace": "default", "Partition": "",
                                "TransparentProxy": {"OutboundListenerPort": 0, "DialedDirectly": False},
                                "MeshGateway": {"Mode": ""}, "Expose": {}, "Mode": ""})
    assert entry.body == {} and entry.create_index == 0


def test_router_and_intentions_canonical():
    entry = parse_config_entry({**SR, "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin", "Methods": ["get"],
                            "Header": [{"Name": "x", "Prefix": "a", "Invert": True}]}},
         "Destination": {"Service": "admin", "RetryOn": list(RETRY_ON), "IdleTimeout": "500ms"}},
        {"Destination": {"NumRetries": 0}}]})
    assert entry.body["Routes"][0] == {
        "Match": {"HTTP": {"PathPrefix": "/admin", "Header": [{"Name": "x", "Prefix": "a", "Invert": True}],
                           "Methods": ["GET"]}},
        "Destination": {"Service": "admin", "IdleTimeout": "500ms", "RetryOn": list(RETRY_ON)}}
    assert entry.body["Routes"][1] == {}
    assert parse_config_entry(entry_to_api(entry)).body == entry.body
    si = parse_config_entry({**SI, "Sources": [
        {"Name": "a", "Action": "ALLOW", "Precedence": 3, "LegacyID": "x", "LegacyCreateTime": "t"},
        {"name": "b", "permissions": [{"action": "deny", "http": {"path_prefix": "/x", "methods": ["post"]}}]}]})
    assert si.body["Sources"] == [
        {"Name": "a", "Action": "allow", "Type": "consul"},
        {"Name": "b", "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/x", "Methods": ["POST"]}}],
         "Type": "consul"}]


def test_resolve_protocol_from_the_store_or_from_api_entries():
    store = Store()
    assert resolve_protocol(store, "web") == "tcp"
    store.set_config_entry(1, parse_config_entry({**PD, "Config": {"protocol": "http"}}))
    assert resolve_protocol(store, "web") == "http"
    store.set_config_entry(2, parse_config_entry({**SD, "Protocol": "tcp"}))
    assert resolve_protocol(store, "WEB") == "tcp" and resolve_protocol(store, "api") == "http"
    api = [entry_to_api(e) for e in store.config.values()]
    assert resolve_protocol(api, "web") == "tcp" and resolve_protocol(api, "api") == "http"
    assert resolve_protocol([], "web") == "tcp"


# ---- open-ended input: an entry or InvalidRequest, never another exception ----------

_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
            | st.sampled_from(["web", "/a", "http", "tcp", "GET", "5s", "allow", "deny", "*", "file", "("]))
_KEYS = st.sampled_from(["Kind", "Name", "Protocol", "Config", "protocol", "AccessLogs", "Type", "Path", "Meta",
                         "Routes", "Match", "HTTP", "PathPrefix", "PathExact", "PathRegex", "Header", "QueryParam",
                         "Methods", "Destination", "Service", "RequestTimeout", "NumRetries", "RetryOn",
                         "RetryOnStatusCodes", "RequestHeaders", "Add", "Sources", "Action", "Permissions",
                         "Present", "Exact", "Regex", "local_connect_timeout_ms", "MeshGateway", "Namespace"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
                       max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["proxy-defaults", "service-defaults", "service-router", "service-intentions"]),
       st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzzed_entries_are_entries_or_invalid_request(kind, body):
    try:
        entry = parse_config_entry({**body, "Kind": kind})
    except InvalidRequest:
        return
    # whatever was taken reads back as itself
    assert parse_config_entry(entry_to_api(entry)) == entry


_name = st.sampled_from(["web", "api", "db"])
_route = st.fixed_dictionaries({}, optional={
    "Match": st.fixed_dictionaries({"HTTP": st.fixed_dictionaries({}, optional={
        "PathPrefix": st.sampled_from(["/", "/a", "/b/c"]),
        "Methods": st.lists(st.sampled_from(["GET", "POST", "PUT"]), unique=True, max_size=3),
        "Header": st.lists(st.fixed_dictionaries({"Name": st.sampled_from(["x", "y"]),
                                                  "Exact": st.sampled_from(["1", "2"])}), max_size=2)})}),
    "Destination": st.fixed_dictionaries({}, optional={
        "Service": _name, "RequestTimeout": st.sampled_from(["1s", "250ms", "1m30s"]),
        "NumRetries": st.integers(0, 5), "RetryOn": st.lists(st.sampled_from(RETRY_ON), unique=True, max_size=3),
        "RetryOnStatusCodes": st.lists(st.integers(100, 599), max_size=3)})})


@settings(max_examples=200, deadline=None)
@given(_name, st.lists(_route, max_size=4), st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=5)))
def test_valid_routers_round_trip(name, routes, meta):
    body = {"Kind": "service-router", "Name": name, "Routes": routes, "Meta": meta}
    entry = parse_config_entry(body)
    assert parse_config_entry(entry_to_api(entry)) == entry
    assert len(entry.body.get("Routes", [])) == len(routes)
