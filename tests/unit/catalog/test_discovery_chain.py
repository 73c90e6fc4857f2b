"""The discovery chain compiler (catalog.discovery_chain): routers, flattened splitters,
redirects, default subsets, failover, loops and missing subsets, overrides, Consul's
JSON, and the same chains compiled from `/v1/config` lists (EntriesLookup)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.chain_types import RESOLVER, SPLITTER
from mesh.catalog.config_entries import entry_to_api, parse_config_entry
from mesh.catalog.discovery_chain import (
    EntriesLookup,
    chain_to_api,
    chain_violations,
    compile_chain,
    parse_overrides,
)
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.store import Store

HTTP = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}
V12 = {"v1": {"Filter": 'Service.Meta.version == "1"'}, "v2": {"Filter": 'Service.Meta.version == "2"',
                                                               "OnlyPassing": True}}


def store(*bodies: dict) -> Store:
    s = Store()
    for index, body in enumerate(bodies, start=1):
        s.set_config_entry(index, parse_config_entry(body))
    return s


def resolver(name: str, **fields) -> dict:
    return {"Kind": "service-resolver", "Name": name, **fields}


def splitter(name: str, *splits: dict) -> dict:
    return {"Kind": "service-splitter", "Name": name, "Splits": list(splits)}


def router(name: str, *routes: dict) -> dict:
    return {"Kind": "service-router", "Name": name, "Routes": list(routes)}


def error(lookup, service: str = "web", **kw) -> str:
    with pytest.raises(InvalidRequest) as err:
        compile_chain(service, "dc1", lookup, **kw)
    return str(err.value)


def splits_of(chain, node: str) -> list[tuple[float, str]]:
    return [(s.weight, s.next_node) for s in chain.nodes[node].splits]


def test_a_service_without_entries_compiles_to_the_default_chain():
    chain = compile_chain("web", "dc1", Store())
    assert chain.default and chain.protocol == "tcp" and chain.start_node == "resolver:web.default.default.dc1"
    node = chain.resolver_of(chain.start_node)
    assert node.resolver.default and node.resolver.connect_timeout == 5.0 and node.resolver.failover == ()
    assert node.load_balancer is None and list(chain.targets) == ["web.default.default.dc1"]
    assert chain_to_api(chain, "11111111-2222-3333-4444-555555555555.consul") == {"Chain": {
        "ServiceName": "web", "Namespace": "default", "Partition": "default", "Datacenter": "dc1",
        "CustomizationHash": "", "Default": True, "Protocol": "tcp", "ServiceMeta": {},
        "StartNode": "resolver:web.default.default.dc1",
        "Nodes": {"resolver:web.default.default.dc1": {
            "Type": "resolver", "Name": "web.default.default.dc1",
            "Resolver": {"Default": True, "ConnectTimeout": "5s", "Target": "web.default.default.dc1",
                         "Failover": None}}},
        "Targets": {"web.default.default.dc1": {
            "ID": "web.default.default.dc1", "Service": "web", "Namespace": "default", "Partition": "default",
            "Datacenter": "dc1", "MeshGateway": {}, "Subset": {}, "ConnectTimeout": "5s", "External": False,
            "SNI": "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul",
            "Name": "web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"}}}}
    # before the CA has a trust domain, targets have no SNI
    assert "SNI" not in chain_to_api(chain, "")["Chain"]["Targets"]["web.default.default.dc1"]


def test_router_then_splitter_then_resolvers_with_consuls_catch_all_route():
    s = store(HTTP, {"Kind": "service-defaults", "Name": "web", "Meta": {"owner": "team-a"}},
              resolver("web", Subsets=V12, DefaultSubset="v1"),
              splitter("web", {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2"}),
              splitter("admin", {"Weight": 100, "Service": "admin-v2"}),
              router("web", {"Match": {"HTTP": {"PathPrefix": "/admin"}}, "Destination": {"Service": "admin"}},
                     {"Match": {"HTTP": {"Header": [{"Name": "x-canary", "Present": True}]}},
                      "Destination": {"ServiceSubset": "v2", "RequestTimeout": "2s"}},
                     {"Match": {"HTTP": {"PathPrefix": "/db"}}, "Destination": {"Service": "db"}}))
    chain = compile_chain("web", "dc1", s)
    assert not chain.default and chain.protocol == "http" and chain.service_meta == {"owner": "team-a"}
    assert chain.start_node == "router:web.default.default"
    routes = chain.nodes[chain.start_node].routes
    assert [r.next_node for r in routes] == [
        "splitter:admin.default.default", "resolver:v2.web.default.default.dc1", "resolver:db.default.default.dc1",
        "splitter:web.default.default"]
    assert routes[1].definition["Destination"] == {"ServiceSubset": "v2", "RequestTimeout": "2s"}
    assert routes[-1].definition == {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "web"}}
    assert splits_of(chain, "splitter:web.default.default") == [
        (90, "resolver:v1.web.default.default.dc1"), (10, "resolver:v2.web.default.default.dc1")]
    assert splits_of(chain, "splitter:admin.default.default") == [(100, "resolver:admin-v2.default.default.dc1")]
    v2 = chain.targets["v2.web.default.default.dc1"]
    assert (v2.service, v2.service_subset, v2.filter, v2.only_passing) == ("web", "v2", V12["v2"]["Filter"], True)
    assert chain.resolver_of("resolver:db.default.default.dc1").resolver.default
    api = chain_to_api(chain, "td.consul")["Chain"]
    assert api["Nodes"]["router:web.default.default"]["Name"] == "web.default.default"
    assert api["Nodes"]["splitter:web.default.default"]["Splits"] == [
        {"Weight": 90, "NextNode": "resolver:v1.web.default.default.dc1"},
        {"Weight": 10, "NextNode": "resolver:v2.web.default.default.dc1"}]
    assert api["Targets"]["v2.web.default.default.dc1"]["Subset"] == {"Filter": V12["v2"]["Filter"],
                                                                       "OnlyPassing": True}
    assert api["Targets"]["v2.web.default.default.dc1"]["SNI"] == "v2.web.default.dc1.internal.td.consul"
    assert api["ServiceMeta"] == {"owner": "team-a"}


def test_nested_splitters_are_flattened_weights_multiplied_and_zero_weights_dropped():
    s = store(HTTP,
              splitter("web", {"Weight": 50, "Service": "web"}, {"Weight": 50, "Service": "api",
                                                                  "RequestHeaders": {"Set": {"x-from": "web"},
                                                                                     "Remove": ["a"]},
                                                                  "ResponseHeaders": {"Set": {"x-r": "outer"}}}),
              splitter("api", {"Weight": 33.33, "Service": "api-v1"},
                       {"Weight": 66.67, "Service": "api-v2", "RequestHeaders": {"Set": {"x-from": "api"},
                                                                                 "Remove": ["b"]},
                        "ResponseHeaders": {"Set": {"x-r": "inner"}, "Add": {"y": "1"}}},
                       {"Weight": 0, "Service": "api-old"}))
    chain = compile_chain("web", "dc1", s)
    assert chain.start_node == "splitter:web.default.default"
    # a split to the splitter's own service goes to its resolver; api's splitter is inlined
    assert splits_of(chain, chain.start_node) == [
        (50, "resolver:web.default.default.dc1"), (16.67, "resolver:api-v1.default.default.dc1"),
        (33.34, "resolver:api-v2.default.default.dc1")]
    assert "splitter:api.default.default" not in chain.nodes and "api-old.default.default.dc1" not in chain.targets
    inner = chain.nodes[chain.start_node].splits[2].definition
    # the request passes the outer split first (the inner one's Set wins), the response
    # the inner one first (the outer one's Set wins)
    assert inner["RequestHeaders"] == {"Set": {"x-from": "api"}, "Remove": ["a", "b"]}
    assert inner["ResponseHeaders"] == {"Add": {"y": "1"}, "Set": {"x-r": "outer"}}
    assert chain.nodes[chain.start_node].splits[1].definition["RequestHeaders"] == {
        "Set": {"x-from": "web"}, "Remove": ["a"]}
    # three levels
    deep = store(HTTP, splitter("a", {"Weight": 50, "Service": "b"}, {"Weight": 50, "Service": "x"}),
                 splitter("b", {"Weight": 50, "Service": "c"}, {"Weight": 50, "Service": "y"}),
                 splitter("c", {"Weight": 10, "Service": "z"}, {"Weight": 90, "Service": "w"}))
    assert splits_of(compile_chain("a", "dc1", deep), "splitter:a.default.default") == [
        (2.5, "resolver:z.default.default.dc1"), (22.5, "resolver:w.default.default.dc1"),
        (25, "resolver:y.default.default.dc1"), (50, "resolver:x.default.default.dc1")]


def test_splitters_work_on_tcp_services_and_routers_do_not_apply_to_them():
    """Mesh's departure: a tcp service splits per connection; Consul would refuse it."""
    s = store(splitter("db", {"Weight": 80, "Service": "db-a"}, {"Weight": 20, "Service": "db-b"}))
    chain = compile_chain("db", "dc1", s)
    assert chain.protocol == "tcp" and chain.nodes[chain.start_node].type == SPLITTER


def test_redirect_chains_default_subsets_and_datacenters():
    s = store(resolver("web", Redirect={"Service": "web-v2"}),
              resolver("web-v2", Redirect={"Service": "api", "Datacenter": "dc2"}),
              resolver("api", Subsets=V12, DefaultSubset="v2", ConnectTimeout="2s", RequestTimeout="30s",
                       LoadBalancer={"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 3}}))
    chain = compile_chain("web", "dc1", s)
    assert chain.start_node == "resolver:v2.api.default.default.dc2" and not chain.default
    node = chain.resolver_of(chain.start_node)
    assert node.resolver.connect_timeout == 2.0 and node.resolver.request_timeout == 30.0
    assert node.load_balancer == {"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 3}}
    assert list(chain.targets) == ["v2.api.default.default.dc2"]
    assert chain.targets["v2.api.default.default.dc2"].connect_timeout == 2.0
    api = chain_to_api(chain, "td")["Chain"]["Nodes"][chain.start_node]
    assert api["Resolver"]["RequestTimeout"] == "30s" and api["LoadBalancer"]["Policy"] == "least_request"
    # an explicit subset is kept over the default one; a redirect to the same service and
    # datacenter is no redirect (Consul's "unless already applied")
    s2 = store(resolver("web", Subsets=V12, DefaultSubset="v1"), resolver("self", Redirect={"Datacenter": "dc1"}),
               router("web"), HTTP)
    assert compile_chain("web", "dc1", s2).start_node == "router:web.default.default"
    assert compile_chain("self", "dc1", s2).start_node == "resolver:self.default.default.dc1"
    explicit = store(HTTP, resolver("web", Subsets=V12, DefaultSubset="v1"),
                     router("web", {"Destination": {"ServiceSubset": "v2"}}))
    routes = compile_chain("web", "dc1", explicit).nodes["router:web.default.default"].routes
    assert [r.next_node for r in routes] == ["resolver:v2.web.default.default.dc1",
                                             "resolver:v1.web.default.default.dc1"]


def test_failover_targets_in_order_from_the_subset_or_the_wildcard():
    s = store(resolver("web", Subsets=V12, DefaultSubset="v1", Failover={
        "v1": {"Datacenters": ["dc3", "dc1", "dc2"]},
        "*": {"Targets": [{"Service": "web-backup"}, {"ServiceSubset": "v1", "Datacenter": "dc9"},
                          {"Service": "legacy"}, {"Service": "web-backup"}]}}),
        resolver("legacy", Redirect={"Service": "old"}),
        resolver("web-backup", Subsets={"b": {"Filter": 'Service.Tags contains "backup"'}}, DefaultSubset="b",
                 ConnectTimeout="9s", Failover={"*": {"Datacenters": ["dc5"]}}),
        router("web", {"Destination": {"ServiceSubset": "v2"}}), HTTP)
    chain = compile_chain("web", "dc1", s)
    v1 = chain.resolver_of("resolver:v1.web.default.default.dc1").resolver
    # Datacenters in order, the target's own datacenter left out (never fail over to yourself)
    assert v1.failover == ("v1.web.default.default.dc3", "v1.web.default.default.dc2")
    v2 = chain.resolver_of("resolver:v2.web.default.default.dc1").resolver
    # Targets in order, each resolved (default subset, redirects), duplicates once;
    # a failover target's own failover is not followed
    assert v2.failover == ("b.web-backup.default.default.dc1", "v1.web.default.default.dc9",
                           "old.default.default.dc1")
    backup = chain.targets["b.web-backup.default.default.dc1"]
    assert backup.filter == 'Service.Tags contains "backup"' and backup.connect_timeout == 9.0
    assert "resolver:b.web-backup.default.default.dc1" not in chain.nodes
    assert "web-backup.default.default.dc5" not in " ".join(chain.targets)
    api = chain_to_api(chain, "")["Chain"]["Nodes"]["resolver:v1.web.default.default.dc1"]["Resolver"]
    assert api["Failover"] == {"Targets": ["v1.web.default.default.dc3", "v1.web.default.default.dc2"]}
    # the shorthand: Service and ServiceSubset; a failover keyed by the subset wins over "*"
    short = store(resolver("db", Subsets={"main": {}}, Failover={"*": {"Service": "db-replica"},
                                                                  "main": {"ServiceSubset": "main",
                                                                           "Datacenters": ["dc2"]}}))
    assert compile_chain("db", "dc1", short).resolver_of("resolver:db.default.default.dc1").resolver.failover == (
        "db-replica.default.default.dc1",)
    only_main = store(resolver("db", Subsets={"main": {}}, DefaultSubset="main",
                               Failover={"main": {"Datacenters": ["dc2"]}}))
    assert compile_chain("db", "dc1", only_main).resolver_of(
        "resolver:main.db.default.default.dc1").resolver.failover == ("main.db.default.default.dc2",)


def test_failover_from_a_redirected_target_stays_in_its_datacenter():
    """As Consul rewrites it: a failover target is the resolved target moved, so an
    unnamed datacenter is the one the redirect chose, not the compile datacenter."""
    s = store(resolver("web", Redirect={"Service": "api", "Datacenter": "dc2"}),
              resolver("api", Failover={"*": {"Service": "api-dr"}}))
    chain = compile_chain("web", "dc1", s)
    assert chain.resolver_of(chain.start_node).resolver.failover == ("api-dr.default.default.dc2",)


def test_loops_are_errors_with_the_path():
    assert error(store(resolver("a", Redirect={"Service": "b"}), resolver("b", Redirect={"Service": "a"})), "a") == (
        "detected circular resolver redirect: [a.default.default.dc1 -> b.default.default.dc1 -> "
        "a.default.default.dc1]")
    assert error(store(HTTP, splitter("a", {"Weight": 50, "Service": "b"}, {"Weight": 50, "Service": "x"}),
                       splitter("b", {"Weight": 100, "Service": "c"}),
                       splitter("c", {"Weight": 100, "Service": "a"})), "a") == (
        "detected circular reference: [splitter:a.default.default -> splitter:b.default.default -> "
        "splitter:c.default.default -> splitter:a.default.default]")
    # a loop reached through a router, and through a failover target's redirects
    assert "detected circular reference" in error(store(HTTP, router("web", {"Destination": {"Service": "a"}}),
                                                        splitter("a", {"Weight": 100, "Service": "b"}),
                                                        splitter("b", {"Weight": 100, "Service": "a"})))
    assert "detected circular resolver redirect" in error(store(
        resolver("web", Failover={"*": {"Service": "x"}}), resolver("x", Redirect={"Service": "y"}),
        resolver("y", Redirect={"Service": "x"})))
    # the same splitter twice is no loop (a diamond)
    diamond = store(HTTP, splitter("a", {"Weight": 50, "Service": "b"}, {"Weight": 50, "Service": "c"}),
                    splitter("b", {"Weight": 100, "Service": "d"}), splitter("c", {"Weight": 100, "Service": "d"}),
                    splitter("d", {"Weight": 50, "Service": "e"}, {"Weight": 50, "Service": "f"}))
    assert [w for w, _ in splits_of(compile_chain("a", "dc1", diamond), "splitter:a.default.default")] == [
        25, 25, 25, 25]


@pytest.mark.parametrize("entries", [
    [router("web", {"Destination": {"Service": "api", "ServiceSubset": "v3"}})],
    [splitter("web", {"Weight": 100, "Service": "api", "ServiceSubset": "v3"})],
    [resolver("web", Redirect={"Service": "api", "ServiceSubset": "v3"})],
    [resolver("web", Failover={"*": {"Service": "api", "ServiceSubset": "v3"}})],
    [resolver("web", Failover={"*": {"Targets": [{"Service": "api", "ServiceSubset": "v3"}]}})],
    [resolver("web", Redirect={"Service": "api"}), resolver("api", Subsets=V12, DefaultSubset="v1"),
     resolver("api-shadow")],  # compiles: a sanity row, replaced below
])
def test_a_subset_the_resolver_lacks_is_an_error(entries):
    s = store(HTTP, resolver("api", Subsets=V12), *entries)
    if entries[-1]["Name"] == "api-shadow":
        assert compile_chain("web", "dc1", s).start_node == "resolver:v1.api.default.default.dc1"
        return
    assert error(s) == 'service "api" does not have a subset named "v3"'


def test_a_subset_of_a_service_without_resolver_is_an_error():
    assert error(store(HTTP, router("web", {"Destination": {"ServiceSubset": "v1"}}))) == (
        'service "web" does not have a subset named "v1"')


def test_all_services_in_a_chain_speak_one_protocol():
    s = store(splitter("web", {"Weight": 50, "Service": "a"}, {"Weight": 50, "Service": "b"}),
              {"Kind": "service-defaults", "Name": "b", "Protocol": "http"})
    assert error(s) == 'discovery chain "web" uses inconsistent protocols; service "b" has "http" which is not "tcp"'
    # Consul takes the first service reached: a splitter-only "virtual" service takes its targets'
    virtual = store(splitter("web", {"Weight": 100, "Service": "b"}),
                    {"Kind": "service-defaults", "Name": "b", "Protocol": "http"})
    assert compile_chain("web", "dc1", virtual).protocol == "http"


def test_overrides():
    s = store(HTTP, resolver("web", ConnectTimeout="2s", Subsets=V12, Failover={"*": {"Datacenters": ["dc2"]}}),
              splitter("web", {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}),
              router("web", {"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {"Service": "api"}}))
    chain = compile_chain("web", "dc1", s, override_connect_timeout=7.5)
    assert {t.connect_timeout for t in chain.targets.values()} == {7.5}
    assert {n.resolver.connect_timeout for n in chain.nodes.values() if n.type == RESOLVER} == {7.5}
    # a non-http protocol drops the router (the splitter stays: mesh splits tcp too)
    tcp = compile_chain("web", "dc1", s, override_protocol="TCP")
    assert tcp.protocol == "tcp" and tcp.start_node == "splitter:web.default.default"
    assert "resolver:api.default.default.dc1" not in tcp.nodes
    assert compile_chain("web", "dc1", s, override_protocol="http").start_node == "router:web.default.default"
    assert compile_chain("db", "dc1", Store(), override_protocol="http").protocol == "http"


def test_load_balancers_on_resolver_and_splitter_nodes():
    ring = {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}
    s = store(HTTP, resolver("a", LoadBalancer={"Policy": "random"}), resolver("b", LoadBalancer=ring),
              splitter("web", {"Weight": 50, "Service": "a"}, {"Weight": 50, "Service": "b"}))
    chain = compile_chain("web", "dc1", s)
    assert chain.nodes["resolver:a.default.default.dc1"].load_balancer == {"Policy": "random"}
    # Consul: a splitter node carries the first hash-based balancer of its resolvers
    assert chain.nodes[chain.start_node].load_balancer == ring
    assert chain_to_api(chain, "")["Chain"]["Nodes"][chain.start_node]["LoadBalancer"] == ring


def test_chain_violations_lists_every_failing_chain():
    s = store(HTTP, resolver("a", Redirect={"Service": "b"}), resolver("b", Redirect={"Service": "a"}),
              router("web", {"Destination": {"ServiceSubset": "nope"}}), resolver("fine"))
    assert chain_violations(s, ["a", "web", "fine", "WEB"], "dc1") == [
        "detected circular resolver redirect: [a.default.default.dc1 -> b.default.default.dc1 -> "
        "a.default.default.dc1]",
        'service "web" does not have a subset named "nope"']
    assert chain_violations(s, ["fine", "unknown"], "dc1") == []


COMPLEX = [HTTP, {"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Meta": {"m": "1"}},
           resolver("web", Subsets=V12, DefaultSubset="v1", ConnectTimeout="3s",
                    Failover={"*": {"Targets": [{"Datacenter": "dc2"}, {"Service": "api"}]}}),
           resolver("api", Redirect={"Service": "api-v2"}),
           resolver("api-v2", LoadBalancer={"Policy": "maglev", "HashPolicies": [{"SourceIP": True}]}),
           splitter("web", {"Weight": 75, "ServiceSubset": "v1"}, {"Weight": 25, "Service": "api"}),
           splitter("api", {"Weight": 100, "Service": "api-v2", "RequestHeaders": {"Add": {"x": "y"}}}),
           router("web", {"Match": {"HTTP": {"PathExact": "/v2"}}, "Destination": {"ServiceSubset": "v2"}})]


def test_entries_lookup_compiles_what_the_store_compiles():
    s = store(*COMPLEX)
    listed = [entry_to_api(e) for e in s.config.values()]
    lookup = EntriesLookup(listed + [{"Kind": "service-intentions", "Name": "web", "Sources": [{"Bogus": 1}]}])
    for service in ("web", "api", "api-v2", "none"):
        assert compile_chain(service, "dc1", lookup) == compile_chain(service, "dc1", s)
    assert lookup.config_entry("service-resolver", "WEB") == s.config_entry("service-resolver", "web")
    assert lookup.config_entry("service-resolver", "web").modify_index == 3
    with pytest.raises(InvalidRequest, match='service-resolver "x": .*Bogus'):
        EntriesLookup([{"Kind": "service-resolver", "Name": "x", "Bogus": 1}])


_svc = st.sampled_from(["a", "b", "c"])
_subset = st.sampled_from(["", "v1", "v2"])
_entry = st.one_of(
    st.builds(lambda n, r, sub, dflt: resolver(n, Subsets={"v1": {}}, DefaultSubset=dflt,
                                               **({"Redirect": {"Service": r, "ServiceSubset": sub}} if r else {})),
              _svc, st.sampled_from(["", "a", "b", "c"]), st.sampled_from(["", "v1"]), st.sampled_from(["", "v1"])),
    st.builds(lambda n, t1, s1, t2: splitter(n, {"Weight": 50, "Service": t1, "ServiceSubset": s1},
                                             {"Weight": 50, "Service": t2, "ServiceSubset": "v1"}),
              _svc, _svc, _subset, st.sampled_from(["d", "e"])),
    st.builds(lambda n, t, sub: router(n, {"Destination": {"Service": t, "ServiceSubset": sub}}), _svc, _svc, _subset),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_entry, max_size=6))
def test_any_entries_compile_the_same_from_the_store_and_from_api_lists(bodies):
    """Whatever the entries (loops, missing subsets and all), both lookups agree: the
    same chain or the same error."""
    s = Store()
    for index, body in enumerate([HTTP, *bodies], start=1):
        try:
            s.set_config_entry(index, parse_config_entry(body))
        except InvalidRequest:
            continue
    lookup = EntriesLookup(entry_to_api(e) for e in s.config.values())
    for service in ("a", "b", "c", "d"):
        outcomes = []
        for source in (s, lookup):
            try:
                outcomes.append(compile_chain(service, "dc1", source))
            except InvalidRequest as exc:
                outcomes.append(str(exc))
        assert outcomes[0] == outcomes[1]


def test_parse_overrides():
    assert parse_overrides(None) == ("", None)
    assert parse_overrides({}) == ("", None)
    assert parse_overrides({"OverrideProtocol": "HTTP", "OverrideConnectTimeout": "1m5s",
                            "OverrideMeshGateway": {"Mode": ""}}) == ("http", 65.0)
    assert parse_overrides({"override_connect_timeout": 2_500_000_000}) == ("", 2.5)  # Go's client: nanoseconds
    assert parse_overrides({"OverrideConnectTimeout": "0s"}) == ("", None)
    for body, message in [({"OverrideMeshGateway": {"Mode": "local"}}, "mesh gateways are not supported"),
                          ({"OverrideConnectTimeout": "soon"}, "Invalid OverrideConnectTimeout"),
                          ({"OverrideConnectTimeout": -1}, "OverrideConnectTimeout out of range"),
                          ({"OverrideConnectTimeout": True}, "OverrideConnectTimeout must be a duration"),
                          ({"OverrideProtocol": 1}, "OverrideProtocol must be a string"),
                          ({"Override": 1}, 'invalid config key "Override"'),
                          ([1], "body must be an object")]:
        with pytest.raises(InvalidRequest, match=message.replace("(", r"\(")):
            parse_overrides(body)
