"""Central configuration merged into a local proxy registration, as Consul's agent does it.

A sidecar registered on this agent gets, from the config entries the servers hold:

- `proxy-defaults` (`global`): its `Config` keys, and `AccessLogs` when the registration
  has none enabled;
- `service-defaults` of the proxied service: `Protocol` as `Config.protocol`, and
  `LocalConnectTimeoutMs`, `LocalRequestTimeoutMs`, `MaxInboundConnections` as
  `local_connect_timeout_ms`, `local_request_timeout_ms`, `max_inbound_connections`;
- each upstream: the destination's protocol as its `Config.protocol`;
- the proxied service's `UpstreamConfig` (service-defaults), as Consul merges it into
  each service upstream's `Config`: `Defaults` first, then the `Overrides` entry named
  like the upstream's destination, as snake_case keys (`connect_timeout_ms`, `limits
  {max_connections, max_pending_requests, max_concurrent_requests}`,
  `passive_health_check {interval, max_failures, enforcing_consecutive_5xx,
  max_ejection_percent, base_ejection_time}`, durations as strings such as "10s"). Its
  `Protocol` only fills an upstream whose destination has no protocol of its own;
- the proxied service's `RateLimits` as the proxy's `Config.rate_limits` (mesh's key;
  the value as the entry holds it, CamelCase), for the sidecar's inbound listener.

What the registration says itself always wins, key by key (Consul: central values fill
only what the registration left empty), so an operator can pin one sidecar. The protocol of a service
is its service-defaults `Protocol`, else proxy-defaults `Config.protocol`, else unset
(tcp). Pure: the agent calls it for each read of a connect-proxy's row, so a new entry
changes the row, its content hash, and wakes the proxy's blocking read of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.structs import Service, evolve

__all__ = ["CentralConfig", "merge_central", "upstream_defaults"]

_SERVICE_DEFAULTS_KEYS = (
    ("LocalConnectTimeoutMs", "local_connect_timeout_ms"),
    ("LocalRequestTimeoutMs", "local_request_timeout_ms"),
    ("MaxInboundConnections", "max_inbound_connections"),
)
# UpstreamConfig's fields as keys of an upstream's Config (Consul's spelling)
_UPSTREAM_KEYS = (("ConnectTimeoutMs", "connect_timeout_ms"), ("Limits", "limits"),
                  ("PassiveHealthCheck", "passive_health_check"))
_NESTED_KEYS = {
    "MaxConnections": "max_connections", "MaxPendingRequests": "max_pending_requests",
    "MaxConcurrentRequests": "max_concurrent_requests", "Interval": "interval", "MaxFailures": "max_failures",
    "EnforcingConsecutive5xx": "enforcing_consecutive_5xx", "MaxEjectionPercent": "max_ejection_percent",
    "BaseEjectionTime": "base_ejection_time",
}


@dataclass(frozen=True)
class CentralConfig:
    """The entries a merge needs: proxy-defaults `global` and service-defaults by name."""

    proxy_defaults: Mapping[str, Any] | None = None
    service_defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by lower-cased name

    def defaults_of(self, service: str) -> Mapping[str, Any]:
        """The service-defaults of `service` (names compare case-insensitively, as the
        servers' protocol rules do)."""
        return self.service_defaults.get(service.lower()) or {}

    def protocol(self, service: str) -> str:
        entry = self.defaults_of(service)
        if entry and entry.get("Protocol"):
            return str(entry["Protocol"])
        config = (self.proxy_defaults or {}).get("Config") or {}
        value = config.get("protocol")
        return str(value) if isinstance(value, str) and value else ""

    @property
    def empty(self) -> bool:
        return not self.proxy_defaults and not self.service_defaults


def _fill(base: Mapping[str, Any], local: Mapping[str, Any]) -> dict[str, Any]:
    """`local` over `base`: central values only where the registration has none."""
    merged = dict(base)
    merged.update(local)
    return merged


def upstream_defaults(upstream_config: Mapping[str, Any], destination: str) -> tuple[dict[str, Any], str]:
    """What a service's `UpstreamConfig` gives the upstream to `destination`: its Config
    keys (Defaults, then the Override of that name over them, key by key) and the
    protocol it names ("" for none)."""
    layers = [upstream_config.get("Defaults") or {}]
    layers += [o for o in upstream_config.get("Overrides") or () if str(o.get("Name", "")).lower() == destination.lower()]
    config: dict[str, Any] = {}
    protocol = ""
    for layer in layers:
        for entry_key, config_key in _UPSTREAM_KEYS:
            if entry_key in layer:
                value = layer[entry_key]
                config[config_key] = {_NESTED_KEYS.get(k, k): v for k, v in value.items()} if isinstance(value, dict) \
                    else value
        protocol = str(layer.get("Protocol") or protocol)
    return config, protocol


def merge_central(service: Service, central: CentralConfig) -> Service:
    """The row a connect-proxy is served and synced as; other rows are returned as they are."""
    if service.kind != "connect-proxy" or central.empty or not service.proxy:
        return service
    proxy = dict(service.proxy)
    destination = str(proxy.get("DestinationServiceName") or "")
    defaults: dict[str, Any] = dict((central.proxy_defaults or {}).get("Config") or {})
    protocol = central.protocol(destination)
    if protocol:
        defaults["protocol"] = protocol
    entry = central.defaults_of(destination)
    for entry_key, config_key in _SERVICE_DEFAULTS_KEYS:
        if entry.get(entry_key):
            defaults[config_key] = entry[entry_key]
    if entry.get("RateLimits"):
        defaults["rate_limits"] = entry["RateLimits"]
    proxy["Config"] = _fill(defaults, proxy.get("Config") or {})
    access = (central.proxy_defaults or {}).get("AccessLogs")
    if access and not (proxy.get("AccessLogs") or {}).get("Enabled"):
        proxy["AccessLogs"] = dict(access)
    upstreams = []
    upstream_config = entry.get("UpstreamConfig") or {}
    for upstream in proxy.get("Upstreams") or []:
        if (upstream.get("DestinationType") or "service") != "service":
            upstreams.append(upstream)
            continue
        name = str(upstream.get("DestinationName") or "")
        merged, configured_protocol = upstream_defaults(upstream_config, name)
        upstream_protocol = central.protocol(name) or configured_protocol
        if upstream_protocol:
            merged["protocol"] = upstream_protocol
        if merged:
            upstream = {**upstream, "Config": _fill(merged, upstream.get("Config") or {})}
        upstreams.append(upstream)
    if upstreams:
        proxy["Upstreams"] = upstreams
    return evolve(service, proxy=proxy)
