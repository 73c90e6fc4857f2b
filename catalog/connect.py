"""A service's `Proxy` and `Connect` in Consul's CamelCase, and who belongs in whose
connect view.

Config files spell these blocks in snake_case (`destination_service_name`,
`local_bind_port`), API bodies in CamelCase, and Consul's agent translates the first
into the second (lib.TranslateKeys) while leaving opaque maps alone. The catalog
stores one spelling, so every reader (health_connect, DNS, the proxy) finds
`DestinationServiceName` however the definition was written. Keys of user maps
(`Config`, an upstream's `Config`, an Envoy extension's `Arguments`) are kept exactly
as written: `local_connect_timeout_ms` is the proxy's key, not ours to rename.

Unknown keys are dropped here, as Go's JSON decoding drops them; config files, which
Consul reads strictly, are checked with `unknown_keys` first. Pure.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import InvalidRequest
from .fields import as_int
from .structs import Service

__all__ = [
    "CONNECT_PROXY",
    "canonical_proxy",
    "canonical_connect",
    "unknown_keys",
    "validate_proxy",
    "connect_names",
    "format_host_port",
]

CONNECT_PROXY = "connect-proxy"
# a user map, kept exactly as written (keys and values)
_OPAQUE = "map"


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


_MESH_GATEWAY = {"Mode": "str"}
_UPSTREAM = {
    "DestinationType": "str", "DestinationNamespace": "str", "DestinationPartition": "str",
    "DestinationPeer": "str", "DestinationName": "str", "Datacenter": "str", "LocalBindAddress": "str",
    "LocalBindPort": "port", "LocalBindSocketPath": "str", "LocalBindSocketMode": "str", "Config": _OPAQUE,
    "MeshGateway": _MESH_GATEWAY, "CentrallyConfigured": "bool",
}
_EXPOSE_PATH = {"ListenerPort": "port", "Path": "str", "LocalPathPort": "port", "Protocol": "str",
                "ParsedFromCheck": "bool"}
_PROXY: dict[str, Any] = {
    "EnvoyExtensions": [{"Name": "str", "Required": "bool", "Arguments": _OPAQUE, "ConsulVersion": "str",
                         "EnvoyVersion": "str"}],
    "DestinationServiceName": "str", "DestinationServiceID": "str", "LocalServiceAddress": "str",
    "LocalServicePort": "port", "LocalServiceSocketPath": "str", "Mode": "str",
    "TransparentProxy": {"OutboundListenerPort": "port", "DialedDirectly": "bool"},
    "Config": _OPAQUE,
    "Upstreams": [_UPSTREAM],
    "MeshGateway": _MESH_GATEWAY,
    "Expose": {"Checks": "bool", "Paths": [_EXPOSE_PATH]},
    "AccessLogs": {"Enabled": "bool", "DisableListenerLogs": "bool", "Type": "str", "Path": "str",
                   "JSONFormat": "str", "TextFormat": "str"},
}
# SidecarService is a whole service definition: the agent expands it (agent/local/sidecar.py)
_CONNECT = {"Native": "bool", "SidecarService": _OPAQUE}
_FOLDED: dict[int, dict[str, str]] = {}


def _names(schema: dict[str, Any]) -> dict[str, str]:
    """folded key -> canonical key of one schema (cached by identity)."""
    names = _FOLDED.get(id(schema))
    if names is None:
        names = _FOLDED[id(schema)] = {_fold(k): k for k in schema}
    return names


def _value(kind: Any, value: Any, what: str) -> Any:
    if isinstance(kind, dict):
        return _canonical(value, kind, what)
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise InvalidRequest(f"{what} must be a list of objects")
        return [_canonical(item, kind[0], f"{what}[{i}]") for i, item in enumerate(value)]
    if kind == _OPAQUE:
        if not isinstance(value, dict):
            raise InvalidRequest(f"{what} must be an object")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidRequest(f"{what} must be a string, got {type(value).__name__}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidRequest(f"{what} must be a boolean, got {value!r}")
        return value
    return as_int(value, what, lo=0, hi=65535)  # port


def _canonical(raw: Any, schema: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{what} must be an object")
    names = _names(schema)
    out: dict[str, Any] = {}
    # the exact spelling wins over another one (Consul: CamelCase first, snake_case
    # only where CamelCase left the field empty)
    for key in sorted((k for k in raw if isinstance(k, str)), key=lambda k: k in schema):
        name = names.get(_fold(key))
        if name is None or raw[key] is None:
            continue
        out[name] = _value(schema[name], raw[key], f"{what}.{name}")
    return _ordered(out, schema)


def _ordered(values: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """In the order of Consul's struct fields, as its JSON has them."""
    return {k: values[k] for k in schema if k in values}


def canonical_proxy(raw: Any, what: str = "Proxy") -> dict[str, Any]:
    """A service's Proxy in Consul's shape: CamelCase keys, upstream DestinationType
    defaulted to "service" (as the agent stores it), MeshGateway and Expose present as
    Consul's JSON always has them. {} stays {} (a service that is no proxy)."""
    proxy = _canonical(raw, _PROXY, what)
    if not proxy:
        return proxy
    if "Upstreams" in proxy:
        proxy["Upstreams"] = [_ordered({"DestinationType": "service", "MeshGateway": {}, **u}, _UPSTREAM)
                              for u in proxy["Upstreams"]]
    return _ordered({"MeshGateway": {}, "Expose": {}, **proxy}, _PROXY)


def canonical_connect(raw: Any, what: str = "Connect") -> dict[str, Any]:
    """A service's Connect: `Native` and `SidecarService` (still raw). Native false is
    dropped, as Consul's omitempty does."""
    connect = _canonical(raw, _CONNECT, what)
    if connect.get("Native") is False:
        del connect["Native"]
    return connect


def unknown_keys(raw: Any, block: str, what: str) -> list[str]:
    """Keys a config file's `proxy` or `connect` block (`block`) has that Consul's
    config builder would refuse, as "what.key" paths. Opaque maps are not looked into;
    neither is `sidecar_service` (it is a service definition of its own)."""
    schema = {"proxy": _PROXY, "connect": _CONNECT}[block]
    out: list[str] = []
    stack: list[tuple[Any, Any, str]] = [(raw, schema, what)]
    while stack:
        value, kind, path = stack.pop()
        if isinstance(kind, list):
            if isinstance(value, list):
                stack.extend((item, kind[0], f"{path}[{i}]") for i, item in enumerate(value))
            continue
        if not isinstance(kind, dict) or not isinstance(value, dict):
            continue
        names = _names(kind)
        for key, item in value.items():
            name = names.get(_fold(key)) if isinstance(key, str) else None
            if name is None:
                out.append(f"{path}.{key}")
            else:
                stack.append((item, kind[name], f"{path}.{key}"))
    return sorted(out)


def _upstream_problem(u: dict[str, Any]) -> str:
    """Consul's Upstream.Validate, message for message."""
    central = bool(u.get("CentrallyConfigured"))
    if u.get("DestinationType", "service") not in ("service", "prepared_query"):
        return f"unknown upstream destination type: {u['DestinationType']!r}"
    if not u.get("DestinationName"):
        return "upstream destination name cannot be empty"
    if u["DestinationName"] == "*" and not central:
        return "upstream destination name cannot be a wildcard"
    if u.get("DestinationPeer") and u.get("Datacenter"):
        return "upstream cannot specify both destination peer and datacenter"
    port, socket = u.get("LocalBindPort", 0), u.get("LocalBindSocketPath", "")
    if not port and not socket and not central:
        return "upstream local bind port or local socket path must be defined and nonzero"
    if port and socket and not central:
        return "only one of upstream local bind port or local socket path can be defined and nonzero"
    return ""


def validate_proxy(kind: str, proxy: dict[str, Any], connect: dict[str, Any], what: str) -> None:
    """Consul's NodeService.ValidateForAgent for a connect-proxy (its Proxy already
    canonical): a destination, not Connect-native, upstreams that are valid and do not
    repeat a destination or a local listener."""
    if kind != CONNECT_PROXY:
        return
    destination = str(proxy.get("DestinationServiceName", ""))
    if not destination.strip():
        raise InvalidRequest(f"{what}.Proxy.DestinationServiceName: must be set for a connect-proxy")
    if destination == "*":
        raise InvalidRequest(f"{what}.Proxy.DestinationServiceName must not be a wildcard for Connect proxy services")
    if connect.get("Native"):
        raise InvalidRequest(f"{what}.Connect.Native: A Proxy cannot also be Connect Native, only typical services")
    destinations: set[tuple[str, str, str, str]] = set()
    listeners: set[str] = set()
    for i, u in enumerate(proxy.get("Upstreams", [])):
        where = f"{what}.Proxy.Upstreams[{i}]"
        problem = _upstream_problem(u)
        if problem:
            raise InvalidRequest(f"{where}: {problem}")
        key = (u.get("DestinationType", "service"), u.get("DestinationPeer", ""), u.get("Datacenter", ""),
               u["DestinationName"])
        if key in destinations:
            raise InvalidRequest(f"{where}: upstreams cannot contain duplicates of {key[0]} {key[3]!r}"
                                 + (f" in datacenter {key[2]!r}" if key[2] else ""))
        destinations.add(key)
        if u.get("CentrallyConfigured"):
            continue
        listener = u.get("LocalBindSocketPath") or format_host_port(u.get("LocalBindAddress") or "127.0.0.1",
                                                                    u["LocalBindPort"])
        if listener in listeners:
            raise InvalidRequest(f"{where}: upstreams cannot contain duplicates by local bind address and port or "
                                 f"unix path; {listener!r} is specified twice")
        listeners.add(listener)


def format_host_port(host: str, port: int) -> str:
    """host:port, with brackets for an IPv6 address (Go's net.JoinHostPort)."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def connect_names(service: Service) -> tuple[str, ...]:
    """The services (lower-cased) whose connect view (`/v1/health/connect/:name`,
    `name.connect` in DNS) lists this row: a connect-proxy's destination, or the
    service itself when it is Connect-native."""
    names: tuple[str, ...] = ()
    if service.kind == CONNECT_PROXY:
        destination = service.proxy.get("DestinationServiceName")
        if isinstance(destination, str) and destination:
            names = (destination.lower(),)
    if service.connect.get("Native") and service.service.lower() not in names:
        names += (service.service.lower(),)
    return names


def may_hold_identity(service: Service, name: str) -> bool:
    """Whether a node running `service` may get a leaf for the identity `name`: its own
    name, or the service a connect-proxy fronts (a proxy presents its destination's
    identity). Without ACLs this is what keeps an agent from asking for any identity."""
    wanted = name.lower()
    return service.service.lower() == wanted or wanted in connect_names(service)
