"""The discovery chain compiler: a service's router, splitters and resolvers (config
entries) made into the graph a sidecar follows (catalog.chain_types), with Consul's
semantics and error messages. Pure: it reads entries through `config_entry(kind, name)`,
which the store has and `EntriesLookup` gives a sidecar over `/v1/config` lists, so
servers, the `/v1/discovery-chain` endpoint and the sidecars compile the same chain.

How a chain is built, from its service S:

- a router node, when S has a service-router and speaks http: each route leads to the
  destination's splitter (no subset named) or resolver, and a catch-all route to S's
  own splitter or resolver is appended, as Consul appends it;
- a splitter node, when S (or a route's destination) has a service-splitter: a split to
  another service that has its own splitter is replaced by that splitter's splits, the
  weights multiplied (and kept to two decimals), its headers merged as Consul merges
  them; weight-0 splits are dropped;
- resolver nodes, one per target: the resolver's redirect is followed (again and again,
  a loop being an error), its DefaultSubset applies when no subset is asked for, the
  subset must exist, and its Failover entry for the subset (else "*") becomes the
  ordered list of failover targets, each resolved the same way (but not failed over).

Departures: splitters take effect whatever the protocol (mesh splits tcp connections);
overriding the protocol with anything but http drops the router only. A chain whose
service has no router, splitter or resolver still compiles (the default chain).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .chain_types import (
    DEFAULT_CONNECT_TIMEOUT,
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
from .config_decode import Obj
from .config_entries import (
    SERVICE_DEFAULTS,
    SERVICE_RESOLVER,
    SERVICE_ROUTER,
    SERVICE_SPLITTER,
    ConfigLookup,
    parse_config_entry,
    resolve_protocol,
)
from .config_traffic import HASH_BASED
from .durations import MAX_DURATION, format_duration, parse_duration
from .errors import InvalidRequest
from .structs import ConfigEntry, with_index

__all__ = ["CHAIN_KINDS", "compile_chain", "chain_to_api", "chain_violations", "chain_failures", "EntriesLookup",
           "parse_overrides"]

CHAIN_KINDS = (SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER)
_SUFFIX = ".default.default"  # namespace and partition: mesh has only the default ones


def compile_chain(service: str, datacenter: str, lookup: ConfigLookup, *, override_protocol: str = "",
                  override_connect_timeout: float | None = None) -> CompiledChain:
    """The chain of `service` as seen from `datacenter`, or InvalidRequest naming what
    breaks it (a redirect or splitter loop, a subset a resolver lacks, services of
    different protocols in one chain).

    `override_protocol` replaces the chain's protocol (anything but http drops its
    router); `override_connect_timeout` (seconds, > 0) replaces every resolver's."""
    return _Compiler(service, datacenter, lookup, override_protocol.lower(),
                     override_connect_timeout or 0.0).compile()


def chain_failures(lookup: ConfigLookup, services: Iterable[str], datacenter: str) -> dict[str, str]:
    """The chains among `services` that do not compile: service (lower-cased) -> message."""
    out: dict[str, str] = {}
    for service in sorted({s.lower() for s in services}):
        try:
            compile_chain(service, datacenter, lookup)
        except InvalidRequest as exc:
            out[service] = str(exc)
    return out


def chain_violations(lookup: ConfigLookup, services: Iterable[str], datacenter: str) -> list[str]:
    """Messages of every chain among `services` that fails to compile."""
    return list(chain_failures(lookup, services, datacenter).values())


class EntriesLookup:
    """`config_entry(kind, name)` over entries as `/v1/config/<kind>` returns them (Kind,
    Name, fields, CreateIndex, ModifyIndex), so a sidecar compiles the chains it needs
    from the lists it watches, reading them back exactly as the servers stored them.
    Kinds the chain never reads (service-intentions) are skipped; an entry this version
    cannot decode is InvalidRequest naming it."""

    def __init__(self, entries: Iterable[Mapping[str, Any]]) -> None:
        self._entries: dict[tuple[str, str], ConfigEntry] = {}
        for item in entries:
            kind = item.get("Kind")
            if kind not in (*CHAIN_KINDS, SERVICE_DEFAULTS, "proxy-defaults"):
                continue
            try:
                entry = parse_config_entry(dict(item))
            except InvalidRequest as exc:
                raise InvalidRequest(f'{kind} "{item.get("Name")}": {exc}') from None
            entry = with_index(entry, int(item.get("CreateIndex") or 0), int(item.get("ModifyIndex") or 0))
            self._entries[(entry.kind, entry.name.lower())] = entry

    def config_entry(self, kind: str, name: str) -> ConfigEntry | None:
        return self._entries.get((kind, name.lower()))


def parse_overrides(data: Any) -> tuple[str, float | None]:
    """`POST /v1/discovery-chain`'s body, `{OverrideProtocol, OverrideConnectTimeout,
    OverrideMeshGateway {Mode}}`, as (protocol, connect timeout in seconds or None).
    The timeout is a Go duration string or, as Consul's Go client sends it, a number of
    nanoseconds. Mesh has no mesh gateways: a Mode other than "" is refused."""
    if data is None:
        return "", None
    body = Obj(data)
    protocol = body.str("OverrideProtocol").lower()
    raw = body.raw("OverrideConnectTimeout")
    timeout: float | None = None
    if isinstance(raw, str):
        timeout = parse_duration(raw, what="OverrideConnectTimeout") if raw else None
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        if not 0 <= raw <= MAX_DURATION * 1e9:
            raise InvalidRequest(f"OverrideConnectTimeout out of range: {raw!r}")
        timeout = raw / 1e9
    elif raw is not None:
        raise InvalidRequest("OverrideConnectTimeout must be a duration such as \"10s\" or a number of nanoseconds")
    gateway = body.obj("OverrideMeshGateway")
    if gateway is not None:
        mode = gateway.str("Mode")
        gateway.finish()
        if mode:
            raise InvalidRequest("mesh gateways are not supported")
    body.finish()
    return protocol, timeout or None


# ---- the compiler -----------------------------------------------------------------


@dataclass
class _Compiler:
    service: str
    datacenter: str
    lookup: ConfigLookup
    override_protocol: str
    override_connect_timeout: float
    protocol: str = ""  # the first service's, as Consul records it; every other must match
    nodes: dict[str, Node] = field(default_factory=dict)
    targets: dict[str, Target] = field(default_factory=dict)
    _protocols: dict[str, str] = field(default_factory=dict)
    _flattened: dict[str, list[Split]] = field(default_factory=dict)  # splitter node -> its splits
    _expanding: list[str] = field(default_factory=list)  # splitter nodes being expanded, outermost first

    def compile(self) -> CompiledChain:
        router = None
        if self.override_protocol in ("", "http"):
            router = self.lookup.config_entry(SERVICE_ROUTER, self.service)
        if router is not None:
            self._record_protocol(self.service)
            if self.protocol != "http":
                raise InvalidRequest(f'discovery chain "{self.service}" uses a protocol "{self.protocol}" that '
                                     "does not permit advanced routing or splitting behavior")
            start = self._router(router)
        else:
            start = self._splitter_or_resolver(self.service)
        self._prune(start)
        defaults = self.lookup.config_entry(SERVICE_DEFAULTS, self.service)
        first = self.nodes[start]
        default = (first.type == RESOLVER and first.resolver is not None and first.resolver.default
                   and self.targets[first.resolver.target].service.lower() == self.service.lower())
        return CompiledChain(
            service_name=self.service, datacenter=self.datacenter,
            protocol=self.override_protocol or self.protocol, default=default, start_node=start,
            nodes=self.nodes, targets=self.targets,
            service_meta=dict((defaults.body.get("Meta") or {}) if defaults else {}))

    def _prune(self, start: str) -> None:
        """Keep the nodes reachable from `start` and the targets they name: a dropped
        weight-0 split was still compiled (its errors count) but leads nowhere."""
        reachable, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name in reachable:
                continue
            reachable.add(name)
            node = self.nodes[name]
            todo += [r.next_node for r in node.routes] + [s.next_node for s in node.splits]
        self.nodes = {name: node for name, node in self.nodes.items() if name in reachable}
        used = {tid for node in self.nodes.values() if node.resolver is not None
                for tid in (node.resolver.target, *node.resolver.failover)}
        self.targets = {tid: target for tid, target in self.targets.items() if tid in used}

    def _record_protocol(self, service: str) -> None:
        """Consul's rule: every service a chain reaches speaks the protocol of the first.
        With an override the chain's protocol is the override and nothing is checked: a
        sidecar compiles with its upstream's protocol (merged by its agent) and has no
        service-defaults to check with; the servers checked the rule on every write."""
        if self.override_protocol:
            self.protocol = self.override_protocol
            return
        key = service.lower()
        if key not in self._protocols:
            self._protocols[key] = resolve_protocol(self.lookup, service)
        protocol = self._protocols[key]
        if not self.protocol:
            self.protocol = protocol
        elif protocol != self.protocol:
            raise InvalidRequest(f'discovery chain "{self.service}" uses inconsistent protocols; service '
                                 f'"{service}" has "{protocol}" which is not "{self.protocol}"')

    # ---- router ---------------------------------------------------------------
    def _router(self, router: ConfigEntry) -> str:
        routes = []
        for route in router.body.get("Routes") or ():
            dest = route.get("Destination") or {}
            target = dest.get("Service") or self.service
            subset = dest.get("ServiceSubset", "")
            next_node = self._resolver(target, subset, self.datacenter) if subset else \
                self._splitter_or_resolver(target)
            routes.append(ChainRoute(definition=route, next_node=next_node))
        catch_all = {"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": self.service}}
        routes.append(ChainRoute(definition=catch_all, next_node=self._splitter_or_resolver(self.service)))
        name = f"{ROUTER}:{self.service}{_SUFFIX}"
        self.nodes[name] = Node(type=ROUTER, name=name, routes=tuple(routes))
        return name

    # ---- splitters ------------------------------------------------------------
    def _splitter_or_resolver(self, service: str) -> str:
        splits = self._splits(service)
        if splits is None:
            return self._resolver(service, "", self.datacenter)
        name = _splitter_name(service)
        if name not in self.nodes:
            balancer = next((self.nodes[s.next_node].load_balancer for s in splits
                             if (self.nodes[s.next_node].load_balancer or {}).get("Policy") in HASH_BASED), None)
            self.nodes[name] = Node(type=SPLITTER, name=name, splits=tuple(splits), load_balancer=balancer)
        return name

    def _splits(self, service: str) -> list[Split] | None:
        """The flattened splits of `service`'s splitter (None without one). A split to
        another service that has a splitter is that splitter's splits, scaled."""
        name = _splitter_name(service)
        if name in self._flattened:
            return self._flattened[name]
        if name in self._expanding:
            cycle = [*self._expanding[self._expanding.index(name):], name]
            raise InvalidRequest(f"detected circular reference: [{' -> '.join(cycle)}]")
        entry = self.lookup.config_entry(SERVICE_SPLITTER, service)
        if entry is None:
            return None
        self._expanding.append(name)
        out: list[Split] = []
        for split in entry.body.get("Splits") or ():
            weight = float(split.get("Weight", 0))
            target = split.get("Service") or service
            subset = split.get("ServiceSubset", "")
            inner = None
            if not subset and target.lower() != service.lower():
                inner = self._splits(target)
            if inner is None:
                out.append(Split(weight, self._resolver(target, subset, self.datacenter), split))
                continue
            for child in inner:
                out.append(Split(_two_decimals(weight * child.weight / 100), child.next_node,
                                 _merge_parent(child.definition, split)))
        self._expanding.pop()
        kept = [s for s in out if s.weight > 0]
        self._flattened[name] = kept
        return kept

    # ---- resolvers ------------------------------------------------------------
    def _resolver(self, service: str, subset: str, datacenter: str) -> str:
        """The resolver node of a target, built (with its failover) on first use."""
        target, entry = self._resolve(service, subset, datacenter)
        name = f"{RESOLVER}:{target.id}"
        if name in self.nodes:
            return name
        body = entry.body if entry else {}
        failover = self._failover(target, body)
        self.nodes[name] = Node(
            type=RESOLVER, name=name, load_balancer=body.get("LoadBalancer"),
            resolver=Resolver(default=_is_default(entry), connect_timeout=target.connect_timeout, target=target.id,
                              failover=failover, request_timeout=_seconds(body.get("RequestTimeout"))))
        return name

    def _resolve(self, service: str, subset: str, datacenter: str) -> tuple[Target, ConfigEntry | None]:
        """Follow redirects and the default subset to the target actually resolved."""
        seen: list[str] = []
        while True:
            tid = target_id(service, subset, datacenter)
            self._record_protocol(service)
            entry = self.lookup.config_entry(SERVICE_RESOLVER, service)
            if tid in seen:
                raise InvalidRequest(f"detected circular resolver redirect: [{' -> '.join([*seen, tid])}]")
            seen.append(tid)
            body = entry.body if entry else {}
            redirect = body.get("Redirect")
            if redirect:
                moved = _rewrite((service, subset, datacenter), redirect.get("Service", ""),
                                 redirect.get("ServiceSubset", ""), redirect.get("Datacenter", ""))
                if target_id(*moved) != tid:
                    service, subset, datacenter = moved
                    continue
            if not subset and body.get("DefaultSubset"):
                subset = body["DefaultSubset"]
                continue
            subsets = body.get("Subsets") or {}
            if subset and subset not in subsets:
                raise InvalidRequest(f'service "{service}" does not have a subset named "{subset}"')
            definition = subsets.get(subset, {}) if subset else {}
            timeout = self.override_connect_timeout or _seconds(body.get("ConnectTimeout")) \
                or DEFAULT_CONNECT_TIMEOUT
            target = Target(id=tid, service=service, service_subset=subset, datacenter=datacenter,
                            filter=definition.get("Filter", ""), only_passing=bool(definition.get("OnlyPassing")),
                            connect_timeout=timeout)
            self.targets.setdefault(tid, target)
            return target, entry

    def _failover(self, target: Target, body: Mapping[str, Any]) -> tuple[str, ...]:
        """The failover targets of `target`, in order: its subset's Failover, else "*"."""
        failovers = body.get("Failover") or {}
        policy = failovers.get(target.service_subset) if target.service_subset else None
        policy = policy or failovers.get("*")
        if not policy:
            return ()
        here = (target.service, target.service_subset, target.datacenter)
        service, subset = policy.get("Service", ""), policy.get("ServiceSubset", "")
        if policy.get("Datacenters"):
            wanted = [_rewrite(here, service, subset, dc) for dc in policy["Datacenters"]]
        elif policy.get("Targets"):
            wanted = [_rewrite(here, t.get("Service", ""), t.get("ServiceSubset", ""), t.get("Datacenter", ""))
                      for t in policy["Targets"]]
        else:
            wanted = [_rewrite(here, service, subset, "")]
        out: list[str] = []
        for candidate in wanted:
            if target_id(*candidate) == target.id:
                continue  # never fail over to yourself
            resolved, _ = self._resolve(*candidate)
            if resolved.id != target.id and resolved.id not in out:
                out.append(resolved.id)
        return tuple(out)


def _splitter_name(service: str) -> str:
    return f"{SPLITTER}:{service}{_SUFFIX}"


def _rewrite(target: tuple[str, str, str], service: str, subset: str, datacenter: str) -> tuple[str, str, str]:
    """A target moved by a redirect or a failover: another service drops the subset
    unless one is named; an unnamed datacenter stays the target's."""
    current_service, current_subset, current_dc = target
    if service and service.lower() != current_service.lower():
        current_service, current_subset = service, ""
    return current_service, subset or current_subset, datacenter or current_dc


def _is_default(entry: ConfigEntry | None) -> bool:
    """Consul's "default resolver": none, or one that sets nothing but Meta."""
    return entry is None or not any(k != "Meta" for k in entry.body)


def _seconds(value: Any) -> float:
    return parse_duration(value) if value else 0.0


def _two_decimals(weight: float) -> float:
    """Consul keeps weights in hundredths of a percent, rounding half away from zero."""
    return math.floor(weight * 100 + 0.5) / 100


def _merge_parent(child: Mapping[str, Any], parent: Mapping[str, Any]) -> dict[str, Any]:
    """A nested split's definition with its parent's header changes folded in, as if
    the request passed the parent first (the child's request changes win) and the
    response the child first (the parent's response changes win)."""
    out = dict(child)
    for field_name, first, second in (("RequestHeaders", parent, child), ("ResponseHeaders", child, parent)):
        merged = _merge_headers(first.get(field_name) or {}, second.get(field_name) or {})
        if merged:
            out[field_name] = merged
    return out


def _merge_headers(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for op in ("Add", "Set"):
        values = {**(base.get(op) or {}), **(over.get(op) or {})}
        if values:
            out[op] = values
    remove = list(dict.fromkeys([*(base.get("Remove") or ()), *(over.get("Remove") or ())]))
    if remove:
        out["Remove"] = remove
    return out


# ---- Consul's JSON ----------------------------------------------------------------


def chain_to_api(chain: CompiledChain, trust_domain: str) -> dict[str, Any]:
    """`/v1/discovery-chain/:service`'s answer: `{"Chain": {...}}` with Consul's keys.
    Node `Name`s drop the `type:` prefix their map keys carry; targets get their SNI
    (`[subset.]service.default.<dc>.internal.<trust domain>`) once the CA has a trust
    domain."""
    return {"Chain": {
        "ServiceName": chain.service_name, "Namespace": "default", "Partition": "default",
        "Datacenter": chain.datacenter, "CustomizationHash": "", "Default": chain.default,
        "Protocol": chain.protocol, "ServiceMeta": dict(chain.service_meta), "StartNode": chain.start_node,
        "Nodes": {name: _node_api(node) for name, node in sorted(chain.nodes.items())},
        "Targets": {tid: _target_api(t, trust_domain) for tid, t in sorted(chain.targets.items())},
    }}


def _node_api(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": node.type, "Name": node.name.partition(":")[2]}
    if node.type == ROUTER:
        out["Routes"] = [{"Definition": dict(r.definition), "NextNode": r.next_node} for r in node.routes]
    elif node.type == SPLITTER:
        out["Splits"] = [{"Weight": _number(s.weight), "NextNode": s.next_node} for s in node.splits]
    elif node.resolver is not None:
        resolver = node.resolver
        out["Resolver"] = {"Default": resolver.default, "ConnectTimeout": format_duration(resolver.connect_timeout),
                           "Target": resolver.target,
                           "Failover": {"Targets": list(resolver.failover)} if resolver.failover else None}
        if resolver.request_timeout:
            out["Resolver"]["RequestTimeout"] = format_duration(resolver.request_timeout)
    if node.load_balancer:
        out["LoadBalancer"] = dict(node.load_balancer)
    return out


def _target_api(target: Target, trust_domain: str) -> dict[str, Any]:
    subset: dict[str, Any] = {}
    if target.filter:
        subset["Filter"] = target.filter
    if target.only_passing:
        subset["OnlyPassing"] = True
    out: dict[str, Any] = {"ID": target.id, "Service": target.service}
    if target.service_subset:
        out["ServiceSubset"] = target.service_subset
    out.update({"Namespace": "default", "Partition": "default", "Datacenter": target.datacenter,
                "MeshGateway": {}, "Subset": subset, "ConnectTimeout": format_duration(target.connect_timeout),
                "External": False})
    if trust_domain:
        prefix = f"{target.service_subset}." if target.service_subset else ""
        sni = f"{prefix}{target.service}.default.{target.datacenter}.internal.{trust_domain}"
        out["SNI"] = out["Name"] = sni
    return out


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value
