"""service-resolver, service-splitter and service-defaults' UpstreamConfig/RateLimits:
every field decoded, every rule refused with a message naming the field, the JSON read
back (and written again unchanged)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.config_entries import entry_to_api, parse_config_entry
from mesh.catalog.errors import InvalidRequest

RS = {"Kind": "service-resolver", "Name": "web"}
SP = {"Kind": "service-splitter", "Name": "web"}
SD = {"Kind": "service-defaults", "Name": "web"}
SUBSETS = {"v1": {"Filter": 'Service.Meta.version == "1"'}, "v2": {"OnlyPassing": True}}


def lb(**fields):
    return {**RS, "LoadBalancer": fields}


def hash_policy(**fields):
    return lb(Policy="ring_hash", HashPolicies=[fields])


def upstream(**fields):
    return {**SD, "UpstreamConfig": {"Defaults": fields}}


def limits(**fields):
    return {**SD, "RateLimits": {"InstanceLevel": fields}}


def route(**fields):
    return limits(Routes=[fields])


def test_resolver_canonical_and_read_back():
    entry = parse_config_entry({
        **RS, "connect_timeout": "1500ms", "RequestTimeout": "1m30s", "default_subset": "v1", "Subsets": SUBSETS,
        "Failover": {"v1": {"Service": "web-backup"}, "*": {"Targets": [{"Datacenter": "dc2"},
                                                                      {"Service": "db", "ServiceSubset": "x"}]}},
        "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 16, "MaximumRingSize": 64},
                         "HashPolicies": [{"Field": "cookie", "FieldValue": "id",
                                           "CookieConfig": {"TTL": "10s", "Path": "/"}},
                                          {"SourceIP": True, "Terminal": True}]},
        "Meta": {"team": "a"}, "Namespace": "default", "PrioritizeByLocality": {}})
    assert entry.body == {
        "ConnectTimeout": "1.5s", "RequestTimeout": "1m30s", "DefaultSubset": "v1",
        "Subsets": {"v1": {"Filter": 'Service.Meta.version == "1"'}, "v2": {"OnlyPassing": True}},
        "Failover": {"*": {"Targets": [{"Datacenter": "dc2"}, {"Service": "db", "ServiceSubset": "x"}]},
                     "v1": {"Service": "web-backup"}},
        "LoadBalancer": {"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 16, "MaximumRingSize": 64},
                         "HashPolicies": [{"Field": "cookie", "FieldValue": "id",
                                           "CookieConfig": {"TTL": "10s", "Path": "/"}},
                                          {"SourceIP": True, "Terminal": True}]},
        "Meta": {"team": "a"}}
    api = entry_to_api(entry)
    assert api["Kind"] == "service-resolver" and api["Meta"] == {"team": "a"} and "Splits" not in api
    assert parse_config_entry(api) == entry
    redirect = parse_config_entry({**RS, "Redirect": {"Service": "api", "ServiceSubset": "v2", "Datacenter": "dc2",
                                                      "Partition": "default", "Peer": ""}})
    assert redirect.body == {"Redirect": {"Service": "api", "ServiceSubset": "v2", "Datacenter": "dc2"}}
    assert parse_config_entry(RS).body == {}  # Consul's default resolver, written explicitly


def test_hcl_shaped_resolver_blocks_decode():
    """python-hcl2 gives each block as a list of one map, maps keyed by user names too."""
    entry = parse_config_entry({**RS, "Subsets": [{"v1": [{"Filter": "Service.Meta.v == 1"}]}],
                                "Failover": [{"*": [{"Datacenters": ["dc2"]}]}], "DefaultSubset": "v1",
                                "LoadBalancer": [{"Policy": "least_request", "LeastRequestConfig": [{"ChoiceCount": 3}]}]})
    assert entry.body["Subsets"] == {"v1": {"Filter": "Service.Meta.v == 1"}}
    assert entry.body["Failover"] == {"*": {"Datacenters": ["dc2"]}}
    assert entry.body["LoadBalancer"] == {"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 3}}


def test_splitter_canonical_weights_and_read_back():
    entry = parse_config_entry({**SP, "Splits": [
        {"Weight": 33.333, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-v": "1"}}},
        {"Weight": 66.667, "Service": "api", "response_headers": {"remove": ["x-a"]}, "Namespace": "default"},
        {"Weight": 0, "Service": "old"}]})
    assert entry.body["Splits"] == [
        {"Weight": 33.33, "ServiceSubset": "v1", "RequestHeaders": {"Set": {"x-v": "1"}}},
        {"Weight": 66.67, "Service": "api", "ResponseHeaders": {"Remove": ["x-a"]}},
        {"Weight": 0, "Service": "old"}]
    api = entry_to_api(entry)
    assert api["Splits"] == entry.body["Splits"] and parse_config_entry(api) == entry
    whole = parse_config_entry({**SP, "Splits": [{"Weight": 100.0}]})
    assert whole.body["Splits"] == [{"Weight": 100}] and isinstance(whole.body["Splits"][0]["Weight"], int)
    # within Consul's rounding (hundredths of a percent) the sum is 100
    assert parse_config_entry({**SP, "Splits": [{"Weight": 99.996}, {"Weight": 0.004, "Service": "b"}]})


def test_upstream_config_and_rate_limits_canonical_and_read_back():
    entry = parse_config_entry({**SD, "Protocol": "http", "UpstreamConfig": {
        "Defaults": {"connect_timeout_ms": 250, "Limits": {"MaxConnections": 0, "max_pending_requests": 5},
                     "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 3, "EnforcingConsecutive5xx": 100,
                                            "MaxEjectionPercent": 0, "BaseEjectionTime": "0s"},
                     "MeshGateway": {}, "BalanceOutboundConnections": ""},
        "Overrides": [{"Name": "api", "Protocol": "HTTP", "Limits": {"MaxConcurrentRequests": 9}}]},
        "RateLimits": {"InstanceLevel": {"RequestsPerSecond": 100, "RequestsMaxBurst": 200, "Routes": [
            {"PathPrefix": "/slow", "RequestsPerSecond": 1}, {"PathRegex": "/a/[0-9]+", "RequestsPerSecond": 5,
                                                               "RequestsMaxBurst": 10}]}}})
    assert entry.body["UpstreamConfig"] == {
        "Defaults": {"ConnectTimeoutMs": 250, "Limits": {"MaxConnections": 0, "MaxPendingRequests": 5},
                     "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 3, "EnforcingConsecutive5xx": 100,
                                            "MaxEjectionPercent": 0, "BaseEjectionTime": "0s"}},
        "Overrides": [{"Name": "api", "Protocol": "http", "Limits": {"MaxConcurrentRequests": 9}}]}
    assert entry.body["RateLimits"] == {"InstanceLevel": {"RequestsPerSecond": 100, "RequestsMaxBurst": 200, "Routes": [
        {"PathPrefix": "/slow", "RequestsPerSecond": 1},
        {"PathRegex": "/a/[0-9]+", "RequestsPerSecond": 5, "RequestsMaxBurst": 10}]}}
    assert parse_config_entry(entry_to_api(entry)) == entry
    # empty blocks (as a client writes them back) store nothing
    assert parse_config_entry({**SD, "UpstreamConfig": {"Defaults": {}, "Overrides": []},
                               "RateLimits": {"InstanceLevel": {}}}).body == {}


def test_routers_may_name_a_subset():
    entry = parse_config_entry({"Kind": "service-router", "Name": "web",
                                "Routes": [{"Destination": {"Service": "api", "ServiceSubset": "v2"}}]})
    assert entry.body["Routes"][0]["Destination"] == {"Service": "api", "ServiceSubset": "v2"}


@pytest.mark.parametrize(
    "body, message",
    [
        ({**RS, "Name": ""}, "Name is required"),
        ({**RS, "ConnectTimeout": "-1s"}, "ConnectTimeout"),
        ({**RS, "ConnectTimeout": 5}, "ConnectTimeout must be a duration string"),
        ({**RS, "RequestTimeout": "soon"}, "Invalid RequestTimeout"),
        ({**RS, "Subsets": {"V1": {}}}, 'Subset "V1" is invalid'),
        ({**RS, "Subsets": {"v_1": {}}}, 'Subset "v_1" is invalid'),
        ({**RS, "Subsets": {"-v": {}}}, 'Subset "-v" is invalid'),
        ({**RS, "Subsets": {"v" * 64: {}}}, "is invalid"),
        ({**RS, "Subsets": {"": {}}}, "Subset defined with empty name"),
        ({**RS, "Subsets": "v1"}, "Subsets must be an object"),
        ({**RS, "Subsets": {"v1": {"Filter": "Service.Meta.version =="}}},
         'Filter for subset "v1" is not a valid expression'),
        ({**RS, "Subsets": {"v1": {"OnlyPassing": "yes"}}}, "Subsets['v1'].OnlyPassing must be a boolean"),
        ({**RS, "Subsets": {"v1": {"Fliter": "x"}}}, "invalid config key \"Subsets['v1'].Fliter\""),
        ({**RS, "DefaultSubset": "v3", "Subsets": SUBSETS}, 'DefaultSubset "v3" is not a valid subset'),
        ({**RS, "Redirect": {}}, "Redirect is empty"),
        ({**RS, "Redirect": {"ServiceSubset": "v1"}, "Subsets": SUBSETS},
         "Redirect.ServiceSubset defined without Redirect.Service"),
        ({**RS, "Redirect": {"Service": "web", "ServiceSubset": "v9"}, "Subsets": SUBSETS},
         'Redirect.ServiceSubset "v9" is not a valid subset of "web"'),
        ({**RS, "Redirect": {"Service": "a b"}}, "Redirect.Service: invalid service name"),
        ({**RS, "Redirect": {"Service": "api", "Peer": "other"}}, "Redirect.Peer is not supported by mesh"),
        ({**RS, "Redirect": {"Service": "api", "Namespace": "ns"}},
         '"Redirect.Namespace", namespaces are a consul enterprise feature'),
        ({**RS, "Redirect": {"Service": "api", "Partition": "p"}}, "partitions are a consul enterprise feature"),
        ({**RS, "Redirect": {"Service": "api"}, "Failover": {"*": {"Datacenters": ["dc2"]}}},
         "Redirect and Failover cannot both be set"),
        ({**RS, "Failover": {"v9": {"Datacenters": ["dc2"]}}}, 'Bad Failover["v9"]: not a valid subset'),
        ({**RS, "Failover": {"*": {}}},
         'Bad Failover["*"]: one of Service, ServiceSubset, Targets, or Datacenters is required'),
        ({**RS, "Failover": {"*": {"ServiceSubset": "v9"}}, "Subsets": SUBSETS},
         'Bad Failover["*"]: ServiceSubset "v9" is not a valid subset of "web"'),
        ({**RS, "Failover": {"*": {"Datacenters": ["dc2"], "Targets": [{"Datacenter": "dc3"}]}}},
         'Bad Failover["*"]: Targets cannot be set with Datacenters'),
        ({**RS, "Failover": {"*": {"Service": "b", "Targets": [{"Datacenter": "dc3"}]}}},
         "Targets cannot be set with Service"),
        ({**RS, "Subsets": SUBSETS, "Failover": {"*": {"ServiceSubset": "v1", "Targets": [{"Datacenter": "dc3"}]}}},
         "Targets cannot be set with ServiceSubset"),
        ({**RS, "Failover": {"*": {"Datacenters": ["dc2", ""]}}}, 'Bad Failover["*"].Datacenters: found empty'),
        ({**RS, "Failover": {"*": {"Datacenters": "dc2"}}}, "Failover['*'].Datacenters must be a list of strings"),
        ({**RS, "Failover": {"*": {"Targets": [{"ServiceSubset": "v9"}]}}, "Subsets": SUBSETS},
         'Bad Failover["*"].Targets[0]: ServiceSubset "v9" is not a valid subset of "web"'),
        ({**RS, "Failover": {"*": {"Targets": [{}]}}}, 'Bad Failover["*"].Targets[0]: one of Service'),
        ({**RS, "Failover": {"*": {"Targets": [{"Peer": "p"}]}}}, "Failover['*'].Targets[0].Peer is not supported"),
        ({**RS, "Failover": {"*": {"Datacenters": ["dc2"], "SamenessGroup": "g"}}}, "SamenessGroup is not supported"),
        ({**RS, "Failover": {"*": {"Datacenters": ["dc2"], "Policy": {"Mode": "order-by-locality"}}}},
         "Failover['*'].Policy is not supported"),
        ({**RS, "PrioritizeByLocality": {"Mode": "failover"}}, "PrioritizeByLocality is not supported"),
        (lb(Policy="fastest"), 'Bad LoadBalancer policy: "fastest" is not supported'),
        (lb(Policy="random", LeastRequestConfig={"ChoiceCount": 2}),
         'LeastRequestConfig specified for incompatible load balancing policy "random"'),
        (lb(Policy="maglev", RingHashConfig={"MinimumRingSize": 2}),
         'RingHashConfig specified for incompatible load balancing policy "maglev"'),
        (lb(Policy="ring_hash", RingHashConfig={"MinimumRingSize": 9, "MaximumRingSize": 3}),
         "MinimumRingSize must not exceed MaximumRingSize"),
        (lb(Policy="ring_hash", RingHashConfig={"MinimumRingSize": -1}), "LoadBalancer.RingHashConfig.MinimumRingSize"),
        (lb(Policy="least_request", LeastRequestConfig={"ChoiceCount": "2"}),
         "LoadBalancer.LeastRequestConfig.ChoiceCount must be an integer"),
        (lb(Policy="round_robin", HashPolicies=[{"SourceIP": True}]),
         'HashPolicies specified for non-hash-based Policy: "round_robin"'),
        (lb(Policy="ring_hash", Bogus=1), 'invalid config key "LoadBalancer.Bogus"'),
        (hash_policy(Field="body", FieldValue="x"), 'Bad LoadBalancer HashPolicy[0]: "body" is not a supported field'),
        (hash_policy(Field="header", FieldValue="x", SourceIP=True),
         'HashPolicy[0]: A single hash policy cannot hash both a source address and a "header"'),
        (hash_policy(SourceIP=True, FieldValue="x"), "A FieldValue cannot be specified when hashing SourceIP"),
        (hash_policy(Field="header"), 'HashPolicy[0]: Field "header" was specified without a FieldValue'),
        (hash_policy(FieldValue="x"), "FieldValue requires a Field to apply to"),
        (hash_policy(Terminal=True), "HashPolicy[0]: one of Field or SourceIP is required"),
        (hash_policy(Field="header", FieldValue="x", CookieConfig={"Path": "/"}),
         'HashPolicy[0]: cookie_config provided for "header"'),
        (hash_policy(Field="cookie", FieldValue="x", CookieConfig={"Session": True, "TTL": "5s"}),
         "a session cookie cannot have an associated TTL"),
        (hash_policy(Field="cookie", FieldValue="x", CookieConfig={"TTL": 5}),
         "LoadBalancer.HashPolicies[0].CookieConfig.TTL must be a duration string"),
        ({**SP, "Splits": []}, "no splits configured"),
        ({**SP}, "no splits configured"),
        ({**SP, "Splits": [{"Weight": 90}]}, "the sum of all split weights must be 100, not 90.000000"),
        ({**SP, "Splits": [{"Weight": 60}, {"Weight": 50, "Service": "b"}]}, "must be 100, not 110.000000"),
        ({**SP, "Splits": [{"Weight": 101}]}, "Splits[0].Weight must be a number from 0 to 100"),
        ({**SP, "Splits": [{"Weight": -1}]}, "Splits[0].Weight must be a number from 0 to 100"),
        ({**SP, "Splits": [{"Weight": "50"}]}, "Splits[0].Weight must be a number"),
        ({**SP, "Splits": [{"Weight": True}]}, "Splits[0].Weight must be a number"),
        ({**SP, "Splits": [{"Service": "a"}]}, "Splits[0].Weight must be a number"),
        ({**SP, "Splits": [{"Weight": 50}, {"Weight": 50, "Service": "WEB"}]},
         'split destination occurs more than once: service="web", subset=""'),
        ({**SP, "Splits": [{"Weight": 100, "Service": "a b"}]}, "Splits[0].Service: invalid service name"),
        ({**SP, "Splits": [{"Weight": 100, "Namespace": "ns"}]}, '"Splits[0].Namespace", namespaces are'),
        ({**SP, "Splits": [{"Weight": 100, "RequestHeaders": {"Add": {"": "x"}}}]},
         "Splits[0].RequestHeaders.Add: header names must not be empty"),
        ({**SP, "Splits": [{"Weight": 100, "ResponseHeaders": {"Append": {}}}]},
         'invalid config key "Splits[0].ResponseHeaders.Append"'),
        ({**SP, "Splits": [{"Weight": 100, "Filter": "x"}]}, 'invalid config key "Splits[0].Filter"'),
        (upstream(ConnectTimeoutMs=-1), "UpstreamConfig.Defaults.ConnectTimeoutMs out of range"),
        (upstream(Protocol="grpc"), "UpstreamConfig.Defaults.Protocol: protocol 'grpc' is not supported yet"),
        (upstream(Name="api"), "UpstreamConfig.Defaults.Name must be empty"),
        (upstream(Limits={"MaxConnections": -1}), "UpstreamConfig.Defaults.Limits.MaxConnections out of range"),
        (upstream(Limits={"MaxPendingRequests": 1.5}), "Limits.MaxPendingRequests must be an integer"),
        (upstream(Limits={"MaxRequests": 1}), 'invalid config key "UpstreamConfig.Defaults.Limits.MaxRequests"'),
        (upstream(PassiveHealthCheck={"Interval": "-1s"}), "UpstreamConfig.Defaults.PassiveHealthCheck.Interval"),
        (upstream(PassiveHealthCheck={"EnforcingConsecutive5xx": 101}),
         "PassiveHealthCheck.EnforcingConsecutive5xx out of range"),
        (upstream(PassiveHealthCheck={"MaxEjectionPercent": -1}), "PassiveHealthCheck.MaxEjectionPercent out of range"),
        (upstream(PassiveHealthCheck={"MaxFailures": -1}), "PassiveHealthCheck.MaxFailures out of range"),
        (upstream(PassiveHealthCheck={"BaseEjectionTime": 30}), "BaseEjectionTime must be a duration string"),
        (upstream(EnvoyListenerJSON="{}"), "UpstreamConfig.Defaults.EnvoyListenerJSON is not supported"),
        (upstream(BalanceOutboundConnections="exact_balance"), "BalanceOutboundConnections is not supported"),
        (upstream(Peer="p"), "UpstreamConfig.Defaults.Peer is not supported"),
        ({**SD, "UpstreamConfig": {"Overrides": [{"ConnectTimeoutMs": 5}]}},
         "UpstreamConfig.Overrides[0].Name is required"),
        ({**SD, "UpstreamConfig": {"Overrides": [{"Name": "api"}, {"Name": "API"}]}},
         'UpstreamConfig.Overrides[1].Name: "API" is given more than once'),
        ({**SD, "UpstreamConfig": {"Overrides": [{"Name": "api", "Namespace": "x"}]}},
         '"UpstreamConfig.Overrides[0].Namespace", namespaces are a consul enterprise feature'),
        ({**SD, "UpstreamConfig": {"Default": {}}}, 'invalid config key "UpstreamConfig.Default"'),
        (limits(RequestsPerSecond=-1), "RateLimits.InstanceLevel.RequestsPerSecond out of range"),
        (limits(RequestsMaxBurst=-1), "RateLimits.InstanceLevel.RequestsMaxBurst out of range"),
        (route(RequestsPerSecond=1), "RateLimits.InstanceLevel.Routes[0] should contain exactly one of PathExact"),
        (route(PathExact="/a", PathPrefix="/b", RequestsPerSecond=1), "Routes[0] should only contain at most one"),
        (route(PathPrefix="/a"), "RateLimits.InstanceLevel.Routes[0].RequestsPerSecond must be greater than 0"),
        (route(PathPrefix="/a", RequestsPerSecond=0), "Routes[0].RequestsPerSecond must be greater than 0"),
        (route(PathPrefix="/a", RequestsPerSecond=1, RequestsMaxBurst=-1), "Routes[0].RequestsMaxBurst out of range"),
        (route(PathPrefix="a", RequestsPerSecond=1), "Routes[0].PathPrefix doesn't start with '/'"),
        (route(PathRegex="(", RequestsPerSecond=1), "RateLimits.InstanceLevel.Routes[0].PathRegex"),
        (route(PathRegex="(?=x)", RequestsPerSecond=1), "Routes[0].PathRegex: invalid regular expression"),
        (route(PathPrefix="/a", RequestsPerSecond=1, Methods=["GET"]), '"RateLimits.InstanceLevel.Routes[0].Methods"'),
        ({**SD, "RateLimits": {"InstanceLevel": {}, "Global": {}}}, 'invalid config key "RateLimits.Global"'),
    ],
)
def test_invalid_fields_are_refused_by_name(body, message):
    with pytest.raises(InvalidRequest) as err:
        parse_config_entry(body)
    assert message in str(err.value), str(err.value)


# ---- open-ended input: an entry or InvalidRequest, never another exception ----------

_SCALARS = (st.none() | st.booleans() | st.integers(-5, 200) | st.floats(allow_nan=False) | st.text(max_size=4)
            | st.sampled_from(["web", "v1", "v2", "*", "dc2", "5s", "ring_hash", "cookie", "header", "/a", "("]))
_KEYS = st.sampled_from(["Name", "Subsets", "v1", "v2", "*", "Filter", "OnlyPassing", "DefaultSubset", "Redirect",
                         "Service", "ServiceSubset", "Datacenter", "Datacenters", "Failover", "Targets",
                         "ConnectTimeout", "LoadBalancer", "Policy", "HashPolicies", "Field", "FieldValue",
                         "SourceIP", "CookieConfig", "TTL", "Session", "Splits", "Weight", "RequestHeaders", "Set",
                         "UpstreamConfig", "Defaults", "Overrides", "Limits", "MaxConnections",
                         "PassiveHealthCheck", "Interval", "RateLimits", "InstanceLevel", "Routes",
                         "RequestsPerSecond", "PathPrefix", "PathRegex"])
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=5),
                       max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["service-resolver", "service-splitter", "service-defaults"]),
       st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_fuzzed_entries_are_entries_or_invalid_request(kind, body):
    try:
        entry = parse_config_entry({**body, "Kind": kind, "Name": "web"})
    except InvalidRequest:
        return
    assert parse_config_entry(entry_to_api(entry)) == entry
