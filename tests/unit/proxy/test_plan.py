"""An upstream's traffic plan from a compiled chain (proxy/plan.py): the walk a request
takes, splits by draw, targets narrowed by subset filter and health."""

from __future__ import annotations

from mesh.catalog.chain_types import (
    RESOLVER,
    ROUTER,
    SPLITTER,
    ChainRoute,
    CompiledChain,
    Node,
    Resolver,
    Split,
    Target,
    target_id,
)
from mesh.proxy.endpoint import Endpoint
from mesh.proxy.http.request_view import RequestView
from mesh.proxy.plan import (
    Instance,
    ResolverPlan,
    SplitterPlan,
    endpoints_for,
    plan_upstream,
    watch_key,
)

V1, V2 = target_id("api", "v1", "dc1"), target_id("api", "v2", "dc1")


def _resolver(tid: str, failover: tuple[str, ...] = (), lb: dict | None = None) -> Node:
    return Node(type=RESOLVER, name=f"resolver:{tid}", resolver=Resolver(default=False, connect_timeout=5.0,
                                                                          target=tid, failover=failover),
                load_balancer=lb)


def _chain(start: str, nodes: list[Node]) -> CompiledChain:
    targets = {
        V1: Target(id=V1, service="api", service_subset="v1", datacenter="dc1", filter="Service.Meta.version == v1"),
        V2: Target(id=V2, service="api", service_subset="v2", datacenter="dc1", filter="Service.Meta.version == v2",
                   only_passing=True),
    }
    return CompiledChain(service_name="api", datacenter="dc1", protocol="http", default=False, start_node=start,
                         nodes={n.name: n for n in nodes}, targets=targets)


def test_a_splitter_takes_the_split_whose_cumulative_weight_passes_the_draw():
    chain = _chain("splitter:api", [
        Node(type=SPLITTER, name="splitter:api", splits=(Split(90, f"resolver:{V1}"), Split(10, f"resolver:{V2}"),
                                                          Split(0, f"resolver:{V2}"))),
        _resolver(V1), _resolver(V2)])
    plan = plan_upstream("api", chain, "dc1")
    assert isinstance(plan.start, SplitterPlan)
    assert len(plan.start.splits) == 2  # a weight of 0 never takes traffic
    picks = [plan.start.choose(d).resolver.primary.id for d in (0.0, 0.5, 0.8999, 0.9, 0.95, 0.99999)]
    assert picks == [V1, V1, V1, V2, V2, V2]
    counts = {V1: 0, V2: 0}
    for i in range(10_000):
        counts[plan.start.choose(i / 10_000).resolver.primary.id] += 1
    assert counts == {V1: 9000, V2: 1000}


def test_a_resolver_lists_its_primary_then_failover_targets_in_order():
    chain = _chain(f"resolver:{V1}", [_resolver(V1, failover=(V2,)), _resolver(V2)])
    plan = plan_upstream("api", chain, "dc1", {"Policy": "least_request"})
    assert isinstance(plan.start, ResolverPlan)
    assert [t.id for t in plan.start.targets] == [V1, V2]
    assert plan.start.lb.policy == "least_request"  # the upstream's own policy when the resolver has none
    assert {t.id for t in plan.targets} == {V1, V2}


def test_a_router_leads_each_route_to_its_node_and_the_default_to_the_catch_all():
    chain = _chain("router:api", [
        Node(type=ROUTER, name="router:api", routes=(
            ChainRoute({"Match": {"HTTP": {"PathPrefix": "/beta"}}, "Destination": {"ServiceSubset": "v2"}},
                       f"resolver:{V2}"),
            ChainRoute({"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "api"}},
                       f"resolver:{V1}"))),
        _resolver(V1), _resolver(V2)])
    plan = plan_upstream("api", chain, "dc1")
    assert plan.router is not None
    beta = plan.router.match(RequestView("GET", "/beta/x", "", lambda: {}))
    other = plan.router.match(RequestView("GET", "/x", "", lambda: {}))
    assert (beta.name, plan.step(beta.next_node).primary.id) == ("route-0", V2)
    assert (other.name, plan.step(other.next_node).primary.id) == ("default", V1)


def test_a_ring_hash_resolver_keeps_its_load_balancer():
    lb = {"Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}
    plan = plan_upstream("api", _chain(f"resolver:{V1}", [_resolver(V1, lb=lb)]), "dc1")
    assert plan.start.lb.policy == "ring_hash"
    assert plan.start.lb.hash_policies


def _instance(port: int, version: str, *statuses: str) -> Instance:
    entry = {"Node": {"Node": "n1"}, "Service": {"Service": "api-sidecar-proxy", "Meta": {"version": version}},
             "Checks": [{"Status": s} for s in statuses]}
    return Instance(Endpoint("127.0.0.1", port, "api"), entry, statuses)


def test_a_target_serves_healthy_instances_that_its_subset_filter_selects():
    plan = plan_upstream("api", _chain(f"resolver:{V1}", [_resolver(V1, failover=(V2,)), _resolver(V2)]), "dc1")
    v1, v2 = plan.start.targets
    instances = [_instance(1, "v1", "passing"), _instance(2, "v1", "warning"), _instance(3, "v1", "critical"),
                 _instance(4, "v2", "passing"), _instance(5, "v2", "warning", "passing")]
    assert [e.port for e in endpoints_for(v1, instances)] == [1, 2]  # warning serves unless OnlyPassing
    assert [e.port for e in endpoints_for(v2, instances)] == [4]  # OnlyPassing: warning does not


def test_watch_keys_name_the_datacenter_only_when_it_is_another():
    assert watch_key("api", "dc1", "dc1") == "api"
    assert watch_key("api", "", "dc1") == "api"
    assert watch_key("api", "dc2", "dc1") == "api@dc2"
