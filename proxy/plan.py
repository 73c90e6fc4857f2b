"""An upstream's traffic plan: its compiled discovery chain, made into what each request
(http) or connection (tcp) walks. Pure: built once per configuration change.

The walk is router → splitter → resolver, each step optional:

- the router (http upstreams with a service-router) picks a route by the request's
  match; the route names the next node, or the chain's start when it names none;
- a splitter draws a number in [0, 100) and takes the split whose cumulative weight
  passes it (nested splitters are already flattened by the compiler);
- a resolver lists its targets, the primary first and then its failover targets in
  order: the first with a healthy instance serves.

A target's instances come from one health watch (its service in its datacenter); the
subset `Filter` and `OnlyPassing` narrow them here, once per change, not per request.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.chain_types import RESOLVER, ROUTER, SPLITTER, CompiledChain, Node
from mesh.catalog.filter import Predicate, compile_filter

from .endpoint import Endpoint
from .http.routes import NO_HEADER_OPS, HeaderOps, Router, compile_chain_router, header_ops
from .traffic.lb import LoadBalancerConfig

__all__ = ["TargetPlan", "ResolverPlan", "SplitPlan", "SplitterPlan", "UpstreamPlan", "plan_upstream",
           "watch_key", "endpoints_for", "Instance"]


def watch_key(service: str, datacenter: str, local_dc: str) -> str:
    """The key of the health watch that feeds a service's instances: its name, with
    `@dc` when the datacenter is not ours."""
    return f"{service}@{datacenter}" if datacenter and datacenter != local_dc else service


@dataclass(frozen=True, slots=True)
class TargetPlan:
    id: str  # Consul's target ID, the metrics label of the target
    service: str
    datacenter: str
    watch: str  # watch_key of its service
    subset: str = ""
    filter: Predicate | None = field(default=None, compare=False, hash=False)
    filter_text: str = ""
    only_passing: bool = False
    connect_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class ResolverPlan:
    name: str
    targets: tuple[TargetPlan, ...]  # primary first, then failover in order
    lb: LoadBalancerConfig
    request_timeout: float | None = None

    @property
    def primary(self) -> TargetPlan:
        return self.targets[0]


@dataclass(frozen=True, slots=True)
class SplitPlan:
    weight: float
    resolver: ResolverPlan
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS


@dataclass(frozen=True, slots=True)
class SplitterPlan:
    name: str
    splits: tuple[SplitPlan, ...]
    bounds: tuple[float, ...]  # cumulative weights
    total: float

    def choose(self, draw: float) -> SplitPlan:
        """The split for `draw` in [0, 1)."""
        return self.splits[min(bisect.bisect_right(self.bounds, draw * self.total), len(self.splits) - 1)]


Step = SplitterPlan | ResolverPlan


@dataclass(frozen=True)
class UpstreamPlan:
    upstream: str  # UpstreamSpec.key
    start: Step
    nodes: Mapping[str, Step]
    router: Router | None = None
    targets: tuple[TargetPlan, ...] = ()  # every target any step may use
    default: bool = True  # no resolver, splitter or router entry shaped it

    def step(self, node_name: str) -> Step:
        """The step a route leads to (its start when it names none)."""
        return self.nodes.get(node_name) or self.start if node_name else self.start


def _target(chain: CompiledChain, target_id: str, local_dc: str) -> TargetPlan:
    t = chain.targets[target_id]
    dc = t.datacenter or local_dc
    return TargetPlan(id=t.id, service=t.service, datacenter=dc, watch=watch_key(t.service, dc, local_dc),
                      subset=t.service_subset, filter=compile_filter(t.filter) if t.filter else None,
                      filter_text=t.filter, only_passing=t.only_passing, connect_timeout=t.connect_timeout)


def _resolver(chain: CompiledChain, node: Node, local_dc: str, fallback_lb: Mapping[str, Any] | None) -> ResolverPlan:
    resolver = node.resolver
    assert resolver is not None
    targets = tuple(_target(chain, tid, local_dc) for tid in (resolver.target, *resolver.failover))
    lb = LoadBalancerConfig.parse(node.load_balancer if node.load_balancer else fallback_lb)
    return ResolverPlan(name=node.name, targets=targets, lb=lb, request_timeout=resolver.request_timeout or None)


def plan_upstream(upstream: str, chain: CompiledChain, local_dc: str,
                  fallback_lb: Mapping[str, Any] | None = None) -> UpstreamPlan:
    """The plan of one upstream from its compiled chain. `fallback_lb`: the load
    balancer a resolver without one uses (the upstream's `load_balancer` config)."""
    resolvers = {name: _resolver(chain, node, local_dc, fallback_lb)
                 for name, node in chain.nodes.items() if node.type == RESOLVER}
    nodes: dict[str, Step] = dict(resolvers)
    for name, node in chain.nodes.items():
        if node.type != SPLITTER:
            continue
        splits = tuple(SplitPlan(weight=s.weight, resolver=resolvers[s.next_node],
                                 request_headers=header_ops(s.definition.get("RequestHeaders")),
                                 response_headers=header_ops(s.definition.get("ResponseHeaders")))
                       for s in node.splits if s.weight > 0)
        bounds, total = [], 0.0
        for split in splits:
            total += split.weight
            bounds.append(total)
        nodes[name] = SplitterPlan(name=name, splits=splits, bounds=tuple(bounds), total=total)
    router = None
    start_node = chain.nodes[chain.start_node]
    if start_node.type == ROUTER:
        router = compile_chain_router(upstream, [(r.definition, r.next_node) for r in start_node.routes])
        start: Step = nodes[start_node.routes[-1].next_node]  # the catch-all route the compiler appends
    else:
        start = nodes[chain.start_node]
    targets: dict[str, TargetPlan] = {}
    for step in resolvers.values():
        for target in step.targets:
            targets.setdefault(target.id, target)
    return UpstreamPlan(upstream=upstream, start=start, nodes=nodes, router=router, targets=tuple(targets.values()),
                        default=chain.default)


@dataclass(frozen=True, slots=True)
class Instance:
    """One instance of a watched service with what subsets and health read of it."""

    endpoint: Endpoint
    entry: Mapping[str, Any]  # the health entry: Node, Service, Checks (what a subset Filter reads)
    statuses: tuple[str, ...]  # its checks' statuses


def endpoints_for(target: TargetPlan, instances: Iterable[Instance]) -> tuple[Endpoint, ...]:
    """The instances that serve `target`: healthy (no critical check; no warning either
    when the subset is OnlyPassing, as Consul marks them for Envoy) and matching the
    subset's Filter."""
    out = []
    for instance in instances:
        statuses = instance.statuses
        if "critical" in statuses or (target.only_passing and "warning" in statuses):
            continue
        if target.filter is not None and not target.filter(instance.entry):
            continue
        out.append(instance.endpoint)
    return tuple(out)

