"""Central config entries (`/v1/config`): Consul's kinds, decoded, validated and rendered.

Kinds mesh implements, with Consul's field names:

- `proxy-defaults` (Name `global`): `Config` (a free map; `Config.protocol` is checked
  like `Protocol`; mesh's own settings such as `Config.tracing` live there too),
  `AccessLogs`, `Meta`;
- `service-defaults`: `Protocol` (`tcp` or `http`), `LocalConnectTimeoutMs`,
  `LocalRequestTimeoutMs`, `MaxInboundConnections`, `UpstreamConfig`, `RateLimits`,
  `Meta`;
- `service-router`: `Routes[]` of `Match.HTTP` and `Destination`, `Meta`;
- `service-splitter` and `service-resolver`, and service-defaults' `UpstreamConfig`
  and `RateLimits`: catalog.config_traffic;
- `service-intentions`: `Sources[]`, `Meta`. Its sources are not stored here: they are
  rows of the intention table (catalog/store.py), one per source, so the intentions API
  and this entry read and write the same rows (catalog.config_intentions).

The other fields of these kinds in Consul (Mode, TransparentProxy, MeshGateway, Expose,
...) are taken when empty, as Consul writes them back (`"MeshGateway": {}`), so an
entry read back can be written again, and refused by name otherwise. Other kinds Consul
knows (ingress-gateway, mesh, ...) read as absent and are refused on write; a kind
Consul does not know is `invalid config entry kind`.

Cross-entry rules (a router needs an http service, L7 intentions need an http
destination) are in `graph_violations`, and the discovery chains' own (no loops, no
subset a resolver lacks) in catalog.discovery_chain; the state machine runs both on
the state a write would produce. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .config_decode import (
    DECODE_FAILED,
    Obj,
    check_protocol,
    header_matches,
    header_modifiers,
    http_methods,
    path_match,
    service_ref,
    unblock,
)
from .config_traffic import parse_rate_limits, parse_resolver, parse_splitter, parse_upstream_config
from .durations import format_duration
from .errors import InvalidRequest
from .fields import as_int
from .intentions import service_name
from .structs import ConfigEntry

__all__ = [
    "RETRY_ON",
    "check_protocol",
    "PROXY_DEFAULTS",
    "SERVICE_DEFAULTS",
    "SERVICE_ROUTER",
    "SERVICE_INTENTIONS",
    "SERVICE_RESOLVER",
    "SERVICE_SPLITTER",
    "KINDS",
    "CONSUL_KINDS",
    "GLOBAL",
    "ConfigLookup",
    "check_kind",
    "parse_config_entry",
    "entry_to_api",
    "resolve_protocol",
    "graph_violations",
    "watch_key",
]

PROXY_DEFAULTS = "proxy-defaults"
SERVICE_DEFAULTS = "service-defaults"
SERVICE_ROUTER = "service-router"
SERVICE_INTENTIONS = "service-intentions"
SERVICE_RESOLVER = "service-resolver"
SERVICE_SPLITTER = "service-splitter"
KINDS = (PROXY_DEFAULTS, SERVICE_DEFAULTS, SERVICE_ROUTER, SERVICE_SPLITTER, SERVICE_RESOLVER, SERVICE_INTENTIONS)
# every kind Consul knows: reads of the ones mesh lacks find nothing instead of a 400
CONSUL_KINDS = KINDS + (
    "ingress-gateway", "terminating-gateway", "mesh",
    "exported-services", "api-gateway", "bound-api-gateway", "http-route", "tcp-route",
    "inline-certificate", "file-system-certificate", "sameness-group", "jwt-provider",
)
GLOBAL = "global"
DEFAULT_PROTOCOL = "tcp"
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "envoy-ratelimited", "retriable-4xx",
            "refused-stream", "cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
_UINT32 = (1 << 32) - 1
_DESCRIPTION_MAX = 512
_HEADER_OPS = ("Present", "Exact", "Prefix", "Suffix", "Regex")


def watch_key(kind: str, name: str | None = None) -> str:
    """The store's watch key of one entry (`config.<kind>.<name>`, name lower-cased) or of
    a kind's list (`config.<kind>`): a blocking read of one entry wakes for that entry only."""
    return f"config.{kind}" if name is None else f"config.{kind}.{name.lower()}"


def check_kind(kind: str, *, writing: bool = False) -> None:
    """InvalidRequest for a kind Consul does not know; when `writing`, also for one mesh
    does not implement."""
    if kind not in CONSUL_KINDS:
        raise InvalidRequest(f"invalid config entry kind: {kind}")
    if writing and kind not in KINDS:
        raise InvalidRequest(f'config entry kind "{kind}" is not supported by mesh yet '
                             f"(supported: {', '.join(KINDS)})")


# ---- decoding ----------------------------------------------------------------------


def parse_config_entry(data: Any) -> ConfigEntry:
    """A `PUT /v1/config` body as a ConfigEntry (indexes 0), or InvalidRequest naming
    the field. A service-intentions body keeps its `Sources` (canonical) for
    catalog.config_intentions to turn into intention rows."""
    if not isinstance(data, dict):
        raise InvalidRequest(f"{DECODE_FAILED}: the body must be a JSON object")
    top = Obj(data)
    kind = top.raw("Kind")
    if kind is None:
        raise InvalidRequest(f"{DECODE_FAILED}: Payload does not contain a kind/Kind key at the top level")
    if not isinstance(kind, str):
        raise InvalidRequest(f"{DECODE_FAILED}: Kind value in payload is not a string")
    try:
        check_kind(kind, writing=True)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{DECODE_FAILED}: {exc}") from None
    name = top.str("Name")
    top.skip("CreateIndex", "ModifyIndex", "Hash")
    top.enterprise()
    body = _PARSERS[kind](top, name)
    top.finish()
    if kind == PROXY_DEFAULTS:
        name = GLOBAL
    return ConfigEntry(kind=kind, name=name, body=body)


def _proxy_defaults(top: Obj, name: str) -> dict[str, Any]:
    if name and name != GLOBAL:
        raise InvalidRequest(f'invalid name ("{name}"), only "{GLOBAL}" is supported')
    body: dict[str, Any] = {}
    config = unblock(top.raw("Config"))
    if config is not None:
        if not isinstance(config, dict):
            raise InvalidRequest("Config must be an object")
        config = {k: unblock(v) if isinstance(v, list) else v for k, v in config.items()}
        if "protocol" in config:
            if not isinstance(config["protocol"], str):
                raise InvalidRequest("Config.protocol must be a string")
            config["protocol"] = check_protocol(config["protocol"], "Config.protocol")
        if config:
            body["Config"] = config
    logs = top.obj("AccessLogs")
    if logs is not None:
        access = _access_logs(logs)
        if access:
            body["AccessLogs"] = access
    top.unsupported("Mode", "TransparentProxy", "MutualTLSMode", "MeshGateway", "Expose", "EnvoyExtensions",
                    "FailoverPolicy", "PrioritizeByLocality")
    _meta(top, body)
    return body


def _access_logs(logs: Obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("Enabled", "DisableListenerLogs"):
        if logs.bool(field):
            out[field] = True
    kind = logs.str("Type")
    if kind not in ("", "stdout", "stderr", "file"):
        raise InvalidRequest(f'{logs.name("Type")} must be one of stdout, stderr or file, got "{kind}"')
    path, json_format, text_format = logs.str("Path"), logs.str("JSONFormat"), logs.str("TextFormat")
    if kind == "file" and not path:
        raise InvalidRequest(f'{logs.name("Path")} must be set when {logs.name("Type")} is "file"')
    if path and kind != "file":
        raise InvalidRequest(f'{logs.name("Path")} is only valid when {logs.name("Type")} is "file"')
    if json_format and text_format:
        raise InvalidRequest(f"{logs.name('JSONFormat')} and {logs.name('TextFormat')} cannot both be set")
    for field, value in (("Type", kind), ("Path", path), ("JSONFormat", json_format), ("TextFormat", text_format)):
        if value:
            out[field] = value
    logs.finish()
    return out


def _service_defaults(top: Obj, name: str) -> dict[str, Any]:
    if name == "*":
        raise InvalidRequest("service-defaults name must be the name of a service, and not a wildcard")
    service_ref(name, "Name")
    body: dict[str, Any] = {}
    protocol = top.str("Protocol")
    if protocol:
        body["Protocol"] = check_protocol(protocol, "Protocol")
    for field in ("MaxInboundConnections", "LocalConnectTimeoutMs", "LocalRequestTimeoutMs"):
        value = top.int(field)
        if value:
            body[field] = value
    for field, parse in (("UpstreamConfig", parse_upstream_config), ("RateLimits", parse_rate_limits)):
        block = top.obj(field)
        parsed = parse(block) if block is not None else {}
        if parsed:
            body[field] = parsed
    top.unsupported("Mode", "TransparentProxy", "MutualTLSMode", "MeshGateway", "Expose", "ExternalSNI",
                    "Destination", "BalanceInboundConnections", "EnvoyExtensions")
    _meta(top, body)
    return body


def _meta(top: Obj, body: dict[str, Any]) -> None:
    meta = top.meta()
    if meta:
        body["Meta"] = meta


def _service_router(top: Obj, name: str) -> dict[str, Any]:
    service_ref(name, "Name")
    routes = [_route(route) for route in top.objs("Routes")]
    body: dict[str, Any] = {"Routes": routes} if routes else {}
    _meta(top, body)
    return body


def _route(route: Obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rewritable = False
    match = route.obj("Match")
    if match is not None:
        http = match.obj("HTTP")
        if http is not None:
            parsed = _http_match(http)
            rewritable = "PathExact" in parsed or "PathPrefix" in parsed
            if parsed:
                out["Match"] = {"HTTP": parsed}
        match.finish()
    dest = route.obj("Destination")
    if dest is not None:
        parsed = _destination(dest)
        if "PrefixRewrite" in parsed and not rewritable:
            raise InvalidRequest(f"{dest.name('PrefixRewrite')}: cannot be used without "
                                 f"{route.name('Match.HTTP.PathExact')} or PathPrefix")
        if parsed:
            out["Destination"] = parsed
    route.finish()
    return out


def _http_match(http: Obj) -> dict[str, Any]:
    out = path_match(http)
    headers = header_matches(http, "Header", _HEADER_OPS)
    params = header_matches(http, "QueryParam", ("Present", "Exact", "Regex"))
    methods = http_methods(http)
    http.unsupported("CaseInsensitive")
    http.finish()
    if headers:
        out["Header"] = headers
    if params:
        out["QueryParam"] = params
    if methods:
        out["Methods"] = methods
    return out


def _destination(dest: Obj) -> dict[str, Any]:
    out: dict[str, Any] = {}
    service = dest.str("Service")
    if service:
        out["Service"] = service_ref(service, dest.name("Service"))
    subset = dest.str("ServiceSubset")
    if subset:
        out["ServiceSubset"] = subset  # that the subset exists is the chain's rule (catalog.discovery_chain)
    dest.enterprise()
    rewrite = dest.str("PrefixRewrite")
    if rewrite:
        out["PrefixRewrite"] = rewrite
    for field in ("RequestTimeout", "IdleTimeout"):
        seconds = dest.duration(field)
        if seconds:
            out[field] = format_duration(seconds)
    retries = dest.int("NumRetries", hi=_UINT32)
    if retries:
        out["NumRetries"] = retries
    if dest.bool("RetryOnConnectFailure"):
        out["RetryOnConnectFailure"] = True
    retry_on = dest.str_list("RetryOn")
    for cond in retry_on:
        if cond not in RETRY_ON:
            raise InvalidRequest(f'{dest.name("RetryOn")} contains an invalid retry condition: "{cond}"')
    if retry_on:
        out["RetryOn"] = retry_on
    codes = dest.raw("RetryOnStatusCodes")
    if codes is not None:
        if not isinstance(codes, list):
            raise InvalidRequest(f"{dest.name('RetryOnStatusCodes')} must be a list of status codes")
        parsed = [as_int(code, f"{dest.name('RetryOnStatusCodes')}[{i}]", lo=100, hi=599) for i, code in enumerate(codes)]
        if parsed:
            out["RetryOnStatusCodes"] = parsed
    for field in ("RequestHeaders", "ResponseHeaders"):
        mods = dest.obj(field)
        if mods is not None:
            parsed_mods = header_modifiers(mods)
            if parsed_mods:
                out[field] = parsed_mods
    dest.finish()
    return out


def _service_intentions(top: Obj, name: str) -> dict[str, Any]:
    service_name(name, "Name")
    top.unsupported("JWT")
    sources = _sources(top, name)
    body: dict[str, Any] = {"Sources": sources}
    _meta(top, body)
    return body


def _sources(top: Obj, destination: str) -> list[dict[str, Any]]:
    """The entry's `Sources`, validated with Consul's rules and messages, canonical
    (empty fields left out, Type `consul`, methods upper-case)."""
    sources = list(top.objs("Sources"))
    if not sources:
        raise InvalidRequest("At least one source is required")
    out = []
    seen: set[str] = set()
    for i, src in enumerate(sources):
        name = src.str("Name")
        if not name:
            raise InvalidRequest(f"Sources[{i}].Name is required")
        service_name(name, f"Sources[{i}].Name")
        src.enterprise()
        src.unsupported("Peer", "SamenessGroup")
        description = src.str("Description")
        if len(description) > _DESCRIPTION_MAX:
            raise InvalidRequest(f"Sources[{i}].Description exceeds maximum length {_DESCRIPTION_MAX}")
        if src.str_map("LegacyMeta"):
            raise InvalidRequest(f"Sources[{i}].LegacyMeta must be omitted")
        # read-only or bridging fields Consul accepts and clears on an entry write
        src.skip("Precedence", "LegacyID", "LegacyCreateTime", "LegacyUpdateTime")
        permissions = _permissions(src)
        action = src.str("Action").lower()
        if permissions and action:
            raise InvalidRequest(f"Sources[{i}].Action must be omitted if Permissions are specified")
        if not permissions and action not in ("allow", "deny"):
            raise InvalidRequest(f"Sources[{i}].Action must be set to 'allow' or 'deny'")
        if permissions and destination == "*":
            raise InvalidRequest(f"Sources[{i}].Permissions cannot be specified on intentions with wildcarded "
                                 "destinations")
        source_type = src.str("Type") or "consul"
        if source_type != "consul":
            raise InvalidRequest(f"Sources[{i}].Type must be set to 'consul'")
        if name.lower() in seen:
            raise InvalidRequest(f'Sources[{i}] defines "{name}" more than once')
        seen.add(name.lower())
        src.finish()
        canonical: dict[str, Any] = {"Name": name}
        if action:
            canonical["Action"] = action
        if permissions:
            canonical["Permissions"] = permissions
        canonical["Type"] = source_type
        if description:
            canonical["Description"] = description
        out.append(canonical)
    return out


def _permissions(src: Obj) -> list[dict[str, Any]]:
    out = []
    for perm in src.objs("Permissions"):
        action = perm.str("Action").lower()
        if action not in ("allow", "deny"):
            raise InvalidRequest(f"{perm.name('Action')} must be set to 'allow' or 'deny'")
        http = perm.obj("HTTP")
        if http is None:
            raise InvalidRequest(f"{perm.name('HTTP')} is required")
        rule = path_match(http)
        headers = header_matches(http, "Header", _HEADER_OPS)
        methods = http_methods(http)
        http.finish()
        if headers:
            rule["Header"] = headers
        if methods:
            rule["Methods"] = methods
        if not rule:
            raise InvalidRequest(f"{http.path} should not be empty")
        perm.unsupported("JWT")
        perm.finish()
        out.append({"Action": action, "HTTP": rule})
    return out


_PARSERS = {
    PROXY_DEFAULTS: _proxy_defaults,
    SERVICE_DEFAULTS: _service_defaults,
    SERVICE_ROUTER: _service_router,
    SERVICE_SPLITTER: parse_splitter,
    SERVICE_RESOLVER: parse_resolver,
    SERVICE_INTENTIONS: _service_intentions,
}


# ---- rendering -------------------------------------------------------------------

# fields Consul always writes, even unset (Go structs without omitempty, or structs)
_ALWAYS: dict[str, tuple[tuple[str, Any], ...]] = {
    PROXY_DEFAULTS: (("Config", None), ("TransparentProxy", {}), ("MeshGateway", {}), ("Expose", {}),
                     ("AccessLogs", {})),
    SERVICE_DEFAULTS: (("Protocol", ""), ("TransparentProxy", {}), ("MeshGateway", {}), ("Expose", {})),
    SERVICE_ROUTER: (("Routes", None),),
    SERVICE_SPLITTER: (("Splits", None),),
    SERVICE_INTENTIONS: (("Sources", None),),
}


def entry_to_api(entry: ConfigEntry) -> dict[str, Any]:
    """Consul's JSON of an entry: Kind, Name, its fields (the ones Go always writes
    included, empty ones left out), Meta, CreateIndex, ModifyIndex."""
    out: dict[str, Any] = {"Kind": entry.kind, "Name": entry.name}
    for field, empty in _ALWAYS.get(entry.kind, ()):
        out[field] = entry.body.get(field, empty)
    for field, value in entry.body.items():
        if field != "Meta":
            out.setdefault(field, value)
    if entry.body.get("Meta"):
        out["Meta"] = entry.body["Meta"]
    out["CreateIndex"] = entry.create_index
    out["ModifyIndex"] = entry.modify_index
    return out


# ---- cross-entry rules ------------------------------------------------------------


class ConfigLookup(Protocol):
    """What resolve_protocol reads: the store (catalog.store.Store) implements it."""

    def config_entry(self, kind: str, name: str) -> ConfigEntry | None: ...


def resolve_protocol(entries: ConfigLookup | Iterable[Mapping[str, Any]], service_name: str) -> str:
    """The protocol a service speaks, as Consul resolves it: its service-defaults
    `Protocol`, else proxy-defaults `Config.protocol`, else "tcp".

    `entries` is the store (anything with `config_entry(kind, name)`), or entries as
    `/v1/config` returns them (dicts with Kind, Name, Protocol, Config), such as the
    results of the `config.get`/`config.list` reads an agent or a proxy holds."""
    if hasattr(entries, "config_entry"):
        lookup: Any = entries
        defaults, proxy = lookup.config_entry(SERVICE_DEFAULTS, service_name), lookup.config_entry(PROXY_DEFAULTS, GLOBAL)
        protocol = defaults.body.get("Protocol", "") if defaults else ""
        fallback = (proxy.body.get("Config") or {}).get("protocol", "") if proxy else ""
    else:
        protocol = fallback = ""
        for item in entries:  # type: ignore[union-attr]
            kind, name = item.get("Kind"), str(item.get("Name", ""))
            if kind == SERVICE_DEFAULTS and name.lower() == service_name.lower():
                protocol = item.get("Protocol") or ""
            elif kind == PROXY_DEFAULTS and name == GLOBAL:
                fallback = (item.get("Config") or {}).get("protocol") or ""
    return str(protocol or fallback or DEFAULT_PROTOCOL).lower()


def graph_violations(lookup: ConfigLookup, routers: Iterable[ConfigEntry], l7_destinations: Iterable[str]) -> list[str]:
    """Consul's discovery-chain rules that tie entries together, as messages: a
    service-router needs its service to speak http, every service it routes to to speak
    the same, and L7 intentions (with Permissions) need an http destination. The state
    machine compares the violations before and after a write and refuses the write
    that adds one, whichever entry it changes (a router, or the protocol under it)."""
    out = []
    for router in routers:
        protocol = resolve_protocol(lookup, router.name)
        if protocol != "http":
            out.append(f'discovery chain "{router.name}" uses a protocol "{protocol}" that does not permit '
                       "advanced routing or splitting behavior")
            continue
        for route in router.body.get("Routes", ()):
            target = route.get("Destination", {}).get("Service")
            if target and target.lower() != router.name.lower():
                other = resolve_protocol(lookup, target)
                if other != protocol:
                    out.append(f'discovery chain "{router.name}" uses inconsistent protocols; service "{target}" '
                               f'has "{other}" which is not "{protocol}"')
    for destination in sorted(set(l7_destinations)):
        if destination == "*":
            continue
        protocol = resolve_protocol(lookup, destination)
        if protocol != "http":
            out.append(f'service "{destination}" has protocol "{protocol}", which is incompatible with '
                       "L7 intentions permissions")
    return out
