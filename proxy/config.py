"""The proxy's whole configuration as one frozen value, rebuilt from what its watches saw.

Each accepted or dialled connection takes the value current at that moment and keeps it,
so a change (a new leaf, an intention, an instance gone) applies to new connections while
open ones finish on what they started with. SSL contexts are built only when the leaf or
the roots change (a few milliseconds each); every other change reuses them.

Pure apart from building contexts through `mesh.ca.tls`: no sockets, no clocks (times are
passed in), no logging.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.ca import tls
from mesh.catalog.authz import Decision, IntentionIndex
from mesh.catalog.discovery_chain import EntriesLookup, compile_chain
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.structs import Intention

from .balancer import POLICIES
from .endpoint import Endpoint
from .mux import ALPN
from .plan import Instance, UpstreamPlan, endpoints_for, plan_upstream
from .traffic.limits import Limits
from .traffic.outlier import PassiveHealthCheck
from .traffic.ratelimit import RateLimits

__all__ = [
    "ConfigError",
    "UpstreamSpec",
    "Registration",
    "ProxyConfig",
    "ConfigBuilder",
    "registration_from_service",
    "parse_upstream_flag",
    "ALPN_PROTOCOLS",
]

DEFAULT_LOCAL_CONNECT_TIMEOUT = 1.0  # Consul: local_connect_timeout_ms 1000
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # Consul: handshake_timeout_ms 10000
DEFAULT_CONNECT_TIMEOUT = 10.0  # Consul: upstream connect_timeout_ms 10000
DEFAULT_IDLE_TIMEOUT = 0.0  # mesh: idle_timeout_ms, 0 = none (Consul's proxy has none)
DEFAULT_LOCAL_REQUEST_TIMEOUT = 15.0  # Consul: local_request_timeout_ms 15000 (http only)
PROTOCOLS = ("tcp", "http")


class ConfigError(ValueError):
    """A registration the proxy cannot run (the previous configuration stays in force)."""


ALPN_PROTOCOLS = (ALPN,)  # offered and accepted: sidecars that speak it multiplex


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream listener: `destination_name` reached on `bind_address:bind_port`."""

    destination_name: str
    bind_port: int
    bind_address: str = "127.0.0.1"
    datacenter: str = ""
    destination_type: str = "service"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    load_balancer: str = "round_robin"  # a resolver's LoadBalancer, when there is one, wins
    protocol: str = "tcp"  # "http": requests are parsed, routed and retried (Config.protocol)
    limits: Limits = field(default_factory=Limits)  # Config.limits (service-defaults UpstreamConfig)
    passive_health_check: PassiveHealthCheck = field(default_factory=PassiveHealthCheck)

    @property
    def key(self) -> str:
        """The watch key of its instances: name, and datacenter when it is not ours."""
        return f"{self.destination_name}@{self.datacenter}" if self.datacenter else self.destination_name


@dataclass(frozen=True)
class Registration:
    """What the proxy's own registration (or its flags) asks for."""

    proxy_id: str
    service: str  # the identity: the destination service's name
    public_address: str = ""
    public_port: int = 0  # 0: no public listener
    local_address: str = "127.0.0.1"
    local_port: int = 0
    local_connect_timeout: float = DEFAULT_LOCAL_CONNECT_TIMEOUT
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    upstreams: tuple[UpstreamSpec, ...] = ()
    prometheus_bind_addr: str = ""
    protocol: str = "tcp"  # of the public listener (Config.protocol, merged by the agent)
    local_request_timeout: float = DEFAULT_LOCAL_REQUEST_TIMEOUT
    max_inbound_connections: int = 0  # 0: the listener's own cap only
    access_logs: Mapping[str, Any] = field(default_factory=dict)  # Consul's AccessLogs, as registered
    tracing: Mapping[str, Any] = field(default_factory=dict)  # Config.tracing (a mesh addition)
    rate_limits: RateLimits = field(default_factory=RateLimits)  # Config.rate_limits (service-defaults RateLimits)


def _milliseconds(config: Mapping[str, Any], key: str, default: float, what: str) -> float:
    raw = config.get(key)
    if raw is None or raw == "":
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ConfigError(f"{what}.{key}: must be a number of milliseconds, got {raw!r}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{what}.{key}: must be a number of milliseconds, got {raw!r}") from None
    if not 0 <= value <= 86_400_000:
        raise ConfigError(f"{what}.{key}: must be between 0 and 86400000, got {raw!r}")
    return value / 1000.0


def _load_balancer(config: Mapping[str, Any], what: str) -> str:
    policy = config.get("load_balancer", "round_robin") or "round_robin"
    if policy not in POLICIES:
        raise ConfigError(f"{what}.load_balancer: must be one of {', '.join(POLICIES)}, got {policy!r}")
    return str(policy)


def _protocol(config: Mapping[str, Any], what: str) -> str:
    raw = config.get("protocol") or "tcp"
    protocol = str(raw).lower() if isinstance(raw, str) else raw
    if protocol in ("http2", "grpc"):
        raise ConfigError(f"{what}.protocol: {protocol!r} is not supported yet (tcp or http)")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{what}.protocol: must be tcp or http, got {raw!r}")
    return str(protocol)


def _count(config: Mapping[str, Any], key: str, what: str) -> int:
    raw = config.get(key, 0) or 0
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw <= 1_000_000:
        raise ConfigError(f"{what}.{key}: must be a whole number between 0 and 1000000, got {raw!r}")
    return raw


def _parsed(parse: Callable[[Any], Any], config: Mapping[str, Any], key: str, what: str) -> Any:
    """A structured key of Config (limits, passive_health_check, rate_limits) through
    its parser; a bad value is a ConfigError naming it."""
    try:
        return parse(config.get(key))
    except ValueError as exc:
        raise ConfigError(f"{what}.{key}: {exc}") from None


def _port(value: Any, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= 65535:
        raise ConfigError(f"{what}: must be a port number, got {value!r}")
    return value


def registration_from_service(service: Any) -> Registration:
    """From the typed `/v1/agent/service/<id>` answer (mesh.api.types.AgentService).

    As in Consul (consul.md §6.2), the service's own Address:Port is the public listener
    and overrides Proxy.Config bind_address/bind_port (which count only when the service
    has no port); an empty address means every interface."""
    if getattr(service, "kind", "") != "connect-proxy" or service.proxy is None:
        raise ConfigError(f"service {service.id!r} is not a connect-proxy (Kind {getattr(service, 'kind', '')!r})")
    proxy = service.proxy
    config: Mapping[str, Any] = proxy.config or {}
    what = f"{service.id}.Proxy.Config"
    if not proxy.destination_service_name:
        raise ConfigError(f"{service.id}.Proxy.DestinationServiceName is empty")
    address, port = service.address, service.port
    if not port:
        address = str(config.get("bind_address") or address)
        port = _port(config.get("bind_port", 0) or 0, f"{what}.bind_port", allow_zero=True)
    upstreams = []
    seen: set[tuple[str, int]] = set()
    for i, up in enumerate(proxy.upstreams):
        uwhat = f"{service.id}.Proxy.Upstreams[{i}]"
        if up.destination_type not in ("", "service"):
            raise ConfigError(f"{uwhat}.DestinationType: {up.destination_type!r} upstreams are not supported yet")
        if not up.local_bind_port:
            raise ConfigError(f"{uwhat}.LocalBindPort: must be set (socket upstreams are not supported)")
        spec = UpstreamSpec(
            destination_name=up.destination_name,
            bind_port=_port(up.local_bind_port, f"{uwhat}.LocalBindPort"),
            bind_address=up.local_bind_address or "127.0.0.1",
            datacenter=up.datacenter or "",
            connect_timeout=_milliseconds(up.config or {}, "connect_timeout_ms", DEFAULT_CONNECT_TIMEOUT, f"{uwhat}.Config"),
            load_balancer=_load_balancer(up.config or {}, f"{uwhat}.Config"),
            protocol=_protocol(up.config or {}, f"{uwhat}.Config"),
            limits=_parsed(Limits.parse, up.config or {}, "limits", f"{uwhat}.Config"),
            passive_health_check=_parsed(PassiveHealthCheck.parse, up.config or {}, "passive_health_check",
                                         f"{uwhat}.Config"),
        )
        if (spec.bind_address, spec.bind_port) in seen:
            raise ConfigError(f"{uwhat}: {spec.bind_address}:{spec.bind_port} is used by another upstream")
        seen.add((spec.bind_address, spec.bind_port))
        upstreams.append(spec)
    return Registration(
        proxy_id=service.id,
        service=proxy.destination_service_name,
        public_address=address or "0.0.0.0",
        public_port=port,
        local_address=proxy.local_service_address or "127.0.0.1",
        local_port=proxy.local_service_port or 0,
        local_connect_timeout=_milliseconds(config, "local_connect_timeout_ms", DEFAULT_LOCAL_CONNECT_TIMEOUT, what),
        handshake_timeout=_milliseconds(config, "handshake_timeout_ms", DEFAULT_HANDSHAKE_TIMEOUT, what),
        idle_timeout=_milliseconds(config, "idle_timeout_ms", DEFAULT_IDLE_TIMEOUT, what),
        upstreams=tuple(upstreams),
        prometheus_bind_addr=str(config.get("prometheus_bind_addr") or ""),
        protocol=_protocol(config, what),
        local_request_timeout=_milliseconds(config, "local_request_timeout_ms", DEFAULT_LOCAL_REQUEST_TIMEOUT, what),
        max_inbound_connections=_count(config, "max_inbound_connections", what),
        access_logs=dict(getattr(proxy, "access_logs", None) or {}),
        tracing=dict(config.get("tracing") or {}) if isinstance(config.get("tracing"), dict) else {},
        rate_limits=_parsed(RateLimits.parse, config, "rate_limits", what),
    )


def parse_upstream_flag(value: str) -> UpstreamSpec:
    """`-upstream name[.service]:[host:]port`, Consul's flag syntax."""
    name, sep, rest = value.partition(":")
    if not sep or not name or not rest:
        raise ConfigError(f"-upstream {value!r}: expected name:[host:]port")
    if name.endswith(".query"):
        raise ConfigError(f"-upstream {value!r}: prepared-query upstreams are not supported yet")
    name = name.removesuffix(".service")
    host, _, port_text = rest.rpartition(":")
    if not port_text.isdigit():
        raise ConfigError(f"-upstream {value!r}: the port must be a number")
    return UpstreamSpec(destination_name=name, bind_port=_port(int(port_text), f"-upstream {value!r}"),
                        bind_address=host or "127.0.0.1")


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one connection needs, taken whole when it starts."""

    registration: Registration
    trust_domain: str
    datacenter: str
    server_context: ssl.SSLContext
    client_context: tls.ClientContext
    leaf_serial: str
    leaf_expires: float
    root_ids: tuple[str, ...]
    endpoints: Mapping[str, tuple[Endpoint, ...]]  # target ID -> its healthy instances
    intentions: IntentionIndex
    default_allow: bool
    generation: int = 0  # bumps with every new context pair
    plans: Mapping[str, UpstreamPlan] = field(default_factory=dict)  # UpstreamSpec.key -> its traffic plan

    def authorize(self, source_service: str) -> Decision:
        """The intention decision for a caller, by the same code the agent uses."""
        return self.intentions.decide(source_service, self.registration.service, self.default_allow)


@dataclass
class ConfigBuilder:
    """Collects the latest answer of every watch and produces the next ProxyConfig.

    `build` returns None until the registration, a leaf that verifies against the roots,
    and the roots have all arrived: the proxy opens its listeners only then."""

    datacenter: str = ""
    registration: Registration | None = None
    leaf: Any = None  # mesh.api.types.Leaf
    roots: Any = None  # mesh.api.types.CARoots
    instances: dict[str, tuple[Instance, ...]] = field(default_factory=dict)  # by plan.watch_key
    chain_entries: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)  # by kind
    intentions: tuple[Intention, ...] = ()
    default_allow: bool = True
    build_contexts: Callable[..., tuple[ssl.SSLContext, tls.ClientContext]] = tls.build_contexts
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    _contexts: tuple[Any, ...] | None = None  # (leaf serial, root ids, server, client, generation)
    _index: IntentionIndex | None = None
    _generation: int = 0
    problem: str = "waiting for the proxy's registration"
    plans: dict[str, UpstreamPlan] = field(default_factory=dict)
    _plans_for: tuple[Any, ...] = ()
    chain_problems: dict[str, str] = field(default_factory=dict)  # upstream -> why its last chain was refused
    _served: bool = False  # a configuration was built once: later ones never wait for instances

    def set_chain_entries(self, kind: str, entries: Any) -> None:
        """The service-resolver, service-splitter or service-router entries (all of one
        kind, as /v1/config/<kind> lists them)."""
        self.chain_entries[kind] = tuple(e for e in entries if isinstance(e, dict))

    def plan(self, registration: Registration) -> dict[str, UpstreamPlan]:
        """Every upstream's plan, compiled again only when the entries or the upstreams
        changed. An upstream whose chain does not compile (entries seen mid-change)
        keeps its previous plan; with none, the default one."""
        key = (registration.upstreams, self.datacenter, tuple(self.chain_entries.items()))
        if key == self._plans_for:
            return self.plans
        lookup = EntriesLookup(e for entries in self.chain_entries.values() for e in entries)
        plans: dict[str, UpstreamPlan] = {}
        for spec in registration.upstreams:
            dc = spec.datacenter or self.datacenter
            fallback = {"Policy": spec.load_balancer}
            try:
                chain = compile_chain(spec.destination_name, dc, lookup, override_protocol=spec.protocol)
                plans[spec.key] = plan_upstream(spec.key, chain, self.datacenter, fallback)
                self.chain_problems.pop(spec.key, None)
            except (InvalidRequest, ValueError, KeyError) as exc:
                self.chain_problems[spec.key] = str(exc)
                previous = self.plans.get(spec.key)
                if previous is None:
                    chain = compile_chain(spec.destination_name, dc, EntriesLookup(()), override_protocol=spec.protocol)
                    previous = plan_upstream(spec.key, chain, self.datacenter, fallback)
                plans[spec.key] = previous
        self.plans, self._plans_for = plans, key
        return plans

    def watch_keys(self) -> set[str]:
        """The health watches the current plans need (one per service and datacenter)."""
        return {t.watch for plan in self.plans.values() for t in plan.targets}

    def _endpoints(self, plans: Mapping[str, UpstreamPlan]) -> dict[str, tuple[Endpoint, ...]]:
        out: dict[str, tuple[Endpoint, ...]] = {}
        for plan in plans.values():
            for target in plan.targets:
                if target.id not in out:
                    out[target.id] = endpoints_for(target, self.instances.get(target.watch, ()))
        return out

    def set_intentions(self, intentions: tuple[Intention, ...], default_allow: bool) -> None:
        self.intentions, self.default_allow, self._index = intentions, default_allow, None

    def build(self) -> ProxyConfig | None:
        if self.registration is None:
            self.problem = "waiting for the proxy's registration"
            return None
        if self.roots is None or not self.roots.roots:
            self.problem = "waiting for the CA roots"
            return None
        if not self.roots.trust_domain:
            self.problem = "cluster trust domain empty, connect not bootstrapped"
            return None
        if self.leaf is None:
            self.problem = "waiting for a leaf certificate"
            return None
        root_ids = tuple(root.id for root in self.roots.roots)
        if self._contexts is None or self._contexts[:2] != (self.leaf.serial_number, root_ids):
            identity = tls.Identity(cert_pem=self.leaf.cert_pem, key_pem=self.leaf.private_key_pem)
            bundle = tls.TrustBundle(trust_domain=self.roots.trust_domain, roots=tuple(r.root_cert for r in self.roots.roots))
            problem = tls.verify_leaf_against(identity, bundle, self.now())
            if problem is not None:
                self.problem = f"the leaf certificate does not verify against the current roots: {problem}"
                return None
            server, client = self.build_contexts(identity, bundle, ALPN_PROTOCOLS)
            self._generation += 1
            self._contexts = (self.leaf.serial_number, root_ids, server, client, self._generation)
        if self._index is None:
            self._index = IntentionIndex(self.intentions)
        plans = self.plan(self.registration)
        if not self._served:
            waiting = sorted(k for k in self.watch_keys() if "@" not in k and k not in self.instances)
            if waiting:  # a listener opened now would answer "no healthy upstream" for a moment
                self.problem = f"waiting for the instances of {', '.join(waiting)}"
                return None
        self._served = True
        self.problem = ""
        _, _, server, client, generation = self._contexts
        return ProxyConfig(
            registration=self.registration,
            trust_domain=self.roots.trust_domain,
            datacenter=self.datacenter,
            server_context=server,
            client_context=client,
            leaf_serial=self.leaf.serial_number,
            leaf_expires=self.leaf.valid_before,
            root_ids=root_ids,
            endpoints=self._endpoints(plans),
            intentions=self._index,
            default_allow=self.default_allow,
            generation=generation,
            plans=plans,
        )
