"""The compiled discovery chain of one service: the values `compile_chain` produces and
both the `/v1/discovery-chain` endpoint and the sidecars read. Pure, frozen.

A chain is a small graph walked from `start_node`: a router (http services with a
service-router) sends each route to a splitter or a resolver; a splitter (nested
splitters are flattened, weights multiplied) sends each split to a resolver; a resolver
names one target (service, subset, datacenter) and the failover targets tried in order
when that target has no healthy instance. Node names and target IDs follow Consul's
spelling (`resolver:v1.api.default.default.dc1`, target `v1.api.default.default.dc1`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ROUTER", "SPLITTER", "RESOLVER", "DEFAULT_CONNECT_TIMEOUT",
    "Target", "ChainRoute", "Split", "Resolver", "Node", "CompiledChain", "target_id",
]

ROUTER, SPLITTER, RESOLVER = "router", "splitter", "resolver"
DEFAULT_CONNECT_TIMEOUT = 5.0  # Consul: a resolver's ConnectTimeout when unset


def target_id(service: str, subset: str, datacenter: str) -> str:
    """Consul's target ID: `[subset.]service.namespace.partition.datacenter`."""
    base = f"{service}.default.default.{datacenter}"
    return f"{subset}.{base}" if subset else base


@dataclass(frozen=True)
class Target:
    """Where a resolver sends traffic: one service's instances, narrowed by a subset."""

    id: str
    service: str
    service_subset: str = ""
    datacenter: str = ""
    filter: str = ""  # the subset's bexpr Filter over health entries ("" = every instance)
    only_passing: bool = False  # subset OnlyPassing: warning instances are left out too
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT  # seconds


@dataclass(frozen=True)
class ChainRoute:
    """One service-router route, as stored (Match, Destination), and where it leads."""

    definition: Mapping[str, Any]
    next_node: str


@dataclass(frozen=True)
class Split:
    """One flattened split: its share of traffic (percent) and the resolver it goes to.
    `definition` is the split as stored (RequestHeaders/ResponseHeaders live there)."""

    weight: float
    next_node: str
    definition: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Resolver:
    default: bool  # no service-resolver entry: the implied one
    connect_timeout: float  # seconds
    target: str  # target ID
    failover: tuple[str, ...] = ()  # target IDs, in the order they are tried
    request_timeout: float = 0.0  # seconds; 0 = none (the route's own or the proxy default)


@dataclass(frozen=True)
class Node:
    type: str  # ROUTER, SPLITTER or RESOLVER
    name: str
    routes: tuple[ChainRoute, ...] = ()
    splits: tuple[Split, ...] = ()
    resolver: Resolver | None = None
    load_balancer: Mapping[str, Any] | None = None  # the resolver's LoadBalancer, as stored


@dataclass(frozen=True)
class CompiledChain:
    service_name: str
    datacenter: str
    protocol: str
    default: bool  # no resolver, splitter or router entry touched it
    start_node: str
    nodes: Mapping[str, Node]
    targets: Mapping[str, Target]
    service_meta: Mapping[str, str] = field(default_factory=dict)

    def resolver_of(self, node_name: str) -> Node:
        """The resolver node `node_name` names (KeyError for another kind)."""
        node = self.nodes[node_name]
        if node.type != RESOLVER:
            raise KeyError(node_name)
        return node
