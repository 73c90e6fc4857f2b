"""Agent-side service and check definitions, parsed into frozen, validated values.

Pure (no I/O, no clocks) so that /v1/agent/service/register, /v1/agent/check/register,
config files and the data-dir copy of API registrations share one set of rules and one
set of messages. Keys are matched case-insensitively and in snake_case, as Consul's agent
endpoints and config files accept both; every problem raises InvalidRequest naming the
field ("service.checks[1].Interval: ..."), which the HTTP layer answers with a 400.

API bodies ignore keys they do not know (Consul's JSON decoding does); config files are
strict about the keys of services and checks (Consul's config builder is), so a typo such
as `intervall` is an error at load time instead of a check that never runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from mesh.catalog.connect import CONNECT_PROXY, unknown_keys, validate_proxy
from mesh.catalog.durations import format_duration, parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.requests import Fields, parse_service
from mesh.catalog.structs import CRITICAL, HEALTH_STATES, Service, evolve

__all__ = [
    "CheckDefinition",
    "ServiceDefinition",
    "parse_check",
    "parse_service_definition",
    "services_from_config",
    "checks_from_config",
    "unblock",
    "split_host_port",
    "output_limit",
    "CHECK_KINDS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_OUTPUT_MAX_SIZE",
]

CHECK_KINDS = ("http", "tcp", "ttl", "script", "alias", "grpc")
DEFAULT_TIMEOUT = 10.0
DEFAULT_OUTPUT_MAX_SIZE = 4096

# key -> label, for check types Consul has and mesh does not run (yet)
_UNSUPPORTED = {
    "DockerContainerID": "Docker",
    "UDP": "UDP",
    "H2PING": "H2PING",
    "OSService": "OSService",
    "GRPC": "GRPC",
}
_METHOD = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


_CHECK_KEYS = {
    _fold(k)
    for k in (
        "ID", "CheckID", "Name", "Notes", "ServiceID", "Status", "Args", "ScriptArgs", "Script",
        "HTTP", "Header", "Method", "Body", "DisableRedirects", "TCP", "TCPUseTLS", "UDP", "GRPC",
        "GRPCUseTLS", "H2PING", "H2PingUseTLS", "OSService", "DockerContainerID", "Shell", "TTL",
        "Interval", "Timeout", "AliasNode", "AliasService", "TLSServerName", "TLSSkipVerify",
        "OutputMaxSize", "SuccessBeforePassing", "FailuresBeforeWarning", "FailuresBeforeCritical",
        "DeregisterCriticalServiceAfter", "Token", "Namespace", "Partition",
    )
}
_SERVICE_KEYS = {
    _fold(k)
    for k in (
        "Kind", "ID", "Name", "Tags", "Address", "TaggedAddresses", "Meta", "Port", "SocketPath",
        "EnableTagOverride", "Weights", "Check", "Checks", "Token", "Proxy", "Connect", "Namespace",
        "Partition", "Locality",
    )
}
# HCL blocks that stand for one object: python-hcl2 hands each block over as a list
_ONE_OBJECT_BLOCKS = {
    _fold(k)
    for k in (
        "weights", "connect", "proxy", "sidecar_service", "expose", "mesh_gateway",
        "transparent_proxy", "access_logs", "tagged_addresses", "meta", "header", "config", "locality",
    )
}


@dataclass(frozen=True)
class CheckDefinition:
    """One check as the agent runs it. Durations are seconds; `kind` is "" for a check
    that has nothing to run (its status only changes through the API)."""

    check_id: str
    name: str
    service_id: str = ""
    service_name: str = ""
    kind: str = ""
    interval: float = 0
    timeout: float = DEFAULT_TIMEOUT
    ttl: float = 0
    http: str = ""
    method: str = "GET"
    header: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    tls_skip_verify: bool = False
    tls_server_name: str = ""
    disable_redirects: bool = False
    tcp: str = ""
    args: tuple[str, ...] = ()
    shell: str = ""
    alias_node: str = ""
    alias_service: str = ""
    grpc: str = ""
    grpc_use_tls: bool = False
    status: str = CRITICAL
    notes: str = ""
    output_max_size: int = 0  # 0: the agent's check_output_max_size; a check may only lower it
    success_before_passing: int = 0
    failures_before_warning: int = 0
    failures_before_critical: int = 0
    deregister_critical_service_after: float = 0

    def type_name(self) -> str:
        """Consul's `Type` of a HealthCheck."""
        return self.kind

    def definition_api(self) -> dict[str, Any]:
        """Consul's `Definition` object of a HealthCheck/AgentCheck (durations as Go strings)."""
        return {
            "Interval": format_duration(self.interval),
            "Timeout": format_duration(self.timeout if self.kind in ("http", "tcp", "script", "grpc") else 0),
            "DeregisterCriticalServiceAfter": format_duration(self.deregister_critical_service_after),
            "HTTP": self.http,
            "Header": {k: list(v) for k, v in self.header.items()} or None,
            "Method": self.method if self.http else "",
            "Body": self.body,
            "TLSServerName": self.tls_server_name,
            "TLSSkipVerify": self.tls_skip_verify,
            "TCP": self.tcp,
            "TCPUseTLS": False,
            "UDP": "",
            "GRPC": self.grpc,
            "GRPCUseTLS": self.grpc_use_tls,
            "OSService": "",
        }


@dataclass(frozen=True)
class ServiceDefinition:
    """A service registered with the agent, with the checks embedded in its registration.
    `sidecar` is its `Connect.SidecarService` block as written (None without one): it
    is taken off the service, as Consul does, and expanded by agent.local.sidecar."""

    service: Service
    checks: tuple[CheckDefinition, ...] = ()
    sidecar: dict[str, Any] | None = None
    token: str = ""


def output_limit(check_value: int, agent_limit: int) -> int:
    """Bytes of output a check keeps: the agent's check_output_max_size, or the
    check's OutputMaxSize when that is lower. As in Consul, a check can only lower
    the agent's limit: an API client must not make the agent store more."""
    return min(check_value, agent_limit) if check_value > 0 else agent_limit


def split_host_port(addr: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" as Go's net.SplitHostPort reads it; ValueError otherwise."""
    host, sep, port_text = addr.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(addr)
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(addr)
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(addr)  # a bare IPv6 address needs brackets
    port = int(port_text)
    if not host or not 0 < port <= 65535:
        raise ValueError(addr)
    return host, port


def _duration(f: Fields, name: str) -> float:
    raw = f.raw(name)
    if raw is None or raw == "":
        return 0.0
    return parse_duration(raw, what=f"{f.what}.{name}")


def _header(f: Fields) -> dict[str, list[str]]:
    raw = f.raw("Header")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{f.what}.Header must be an object of string lists")
    out: dict[str, list[str]] = {}
    for key, value in raw.items():
        if isinstance(value, str):
            value = [value]
        if not isinstance(key, str) or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{f.what}.Header must be an object of string lists, got {key!r}: {value!r}")
        out[key] = list(value)
    return out


def _kinds(f: Fields, args: tuple[str, ...], ttl: float) -> list[str]:
    """Every check type the body asks for, by the keys it sets."""
    found: list[str] = []
    if f.str("HTTP"):
        found.append("HTTP")
    if f.str("TCP"):
        found.append("TCP")
    if ttl > 0:
        found.append("TTL")
    if f.str("DockerContainerID"):
        found.append("DockerContainerID")  # a Docker check runs Args inside the container
    elif args:
        found.append("Args")
    if f.str("AliasService") or f.str("AliasNode"):
        found.append("AliasService")
    for key in ("GRPC", "UDP", "H2PING", "OSService"):
        if f.str(key):
            found.append(key)
    return found


_KIND_OF = {"HTTP": "http", "TCP": "tcp", "TTL": "ttl", "Args": "script", "AliasService": "alias"}


def parse_check(
    data: Any,
    *,
    what: str,
    service_id: str = "",
    service_name: str = "",
    position: int | None = None,
    total: int = 1,
) -> CheckDefinition:
    """An AgentServiceCheck (embedded in a service when `service_id` is given: then
    `position` of `total` picks the automatic ID) or an AgentCheckRegistration."""
    f = Fields(data, what)
    if f.has("Script"):
        raise InvalidRequest(f"{what}.Script: no longer supported; give the command as Args (ScriptArgs), a list")
    if f.bool("TCPUseTLS"):
        raise InvalidRequest(f"{what}.TCPUseTLS: TCP checks over TLS are not supported yet")
    args = f.str_list("ScriptArgs", "Args")
    ttl = _duration(f, "TTL")
    found = _kinds(f, args, ttl)
    if len(found) > 1:
        raise InvalidRequest(
            f"{what}: a check has exactly one of HTTP, TCP, TTL, Args, AliasService/AliasNode or GRPC; "
            f"got {', '.join(found)}"
        )
    kind = ""
    if found:
        key = found[0]
        if key in _UNSUPPORTED:
            raise InvalidRequest(f"{what}.{key}: {_UNSUPPORTED[key]} checks are not supported yet")
        kind = _KIND_OF[key]
    interval = _duration(f, "Interval")
    timeout = _duration(f, "Timeout") or DEFAULT_TIMEOUT
    if kind in ("http", "tcp", "script") and interval <= 0:
        raise InvalidRequest(f"{what}.Interval: must be > 0 for script, HTTP, or TCP checks")
    if kind == "ttl" and interval > 0:
        raise InvalidRequest(f"{what}.Interval: Interval and TTL cannot both be specified")
    if not kind and f.has("TTL"):
        raise InvalidRequest(f"{what}.TTL: must be > 0 for TTL checks")
    if not kind and interval > 0:
        raise InvalidRequest(f"{what}.Interval: set, but the check has nothing to run (give HTTP, TCP, Args or TTL)")

    http = f.str("HTTP")
    if http:
        try:
            parts = urlsplit(http)
        except ValueError:  # "http://[::1": an unclosed IPv6 bracket
            raise InvalidRequest(f"{what}.HTTP: must be an http:// or https:// URL, got {http!r}") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(f"{what}.HTTP: must be an http:// or https:// URL, got {http!r}")
    method = f.str("Method") or "GET"
    if not _METHOD.match(method):
        raise InvalidRequest(f"{what}.Method: invalid HTTP method {method!r}")
    tcp = f.str("TCP")
    if tcp:
        try:
            split_host_port(tcp)
        except ValueError:
            raise InvalidRequest(f"{what}.TCP: must be host:port, got {tcp!r}") from None
    status = f.str("Status") or CRITICAL
    if status not in HEALTH_STATES:
        raise InvalidRequest(f"{what}.Status: must be one of passing, warning, critical; got {status!r}")

    check_id = f.str("CheckID", "ID")
    name = f.str("Name")
    if service_id:
        if not check_id:
            check_id = f"service:{service_id}"
            if total > 1:
                check_id += f":{(position or 0) + 1}"
        name = name or f"Service '{service_name}' check"
    else:
        if not check_id and not name:
            raise InvalidRequest(f"{what}.Name: missing check name")
        check_id, name = check_id or name, name or check_id
        service_id = f.str("ServiceID")

    return CheckDefinition(
        check_id=check_id,
        name=name,
        service_id=service_id,
        service_name=service_name,
        kind=kind,
        interval=interval,
        timeout=timeout,
        ttl=ttl,
        http=http,
        method=method,
        header=_header(f),
        body=f.str("Body"),
        tls_skip_verify=f.bool("TLSSkipVerify"),
        tls_server_name=f.str("TLSServerName"),
        disable_redirects=f.bool("DisableRedirects"),
        tcp=tcp,
        args=args,
        shell=f.str("Shell"),
        alias_node=f.str("AliasNode"),
        alias_service=f.str("AliasService"),
        grpc=f.str("GRPC"),
        grpc_use_tls=f.bool("GRPCUseTLS"),
        status=status,
        notes=f.str("Notes"),
        output_max_size=f.int("OutputMaxSize", lo=0),
        success_before_passing=f.int("SuccessBeforePassing", lo=0),
        failures_before_warning=f.int("FailuresBeforeWarning", lo=0),
        failures_before_critical=f.int("FailuresBeforeCritical", lo=0),
        deregister_critical_service_after=_duration(f, "DeregisterCriticalServiceAfter"),
    )


def _is_empty(raw: Any) -> bool:
    """Consul skips a check block that sets nothing (`"check": {}`)."""
    return isinstance(raw, dict) and all(v in (None, "", [], {}) for v in raw.values())


def _embedded_checks(f: Fields) -> list[tuple[str, Any]]:
    """(what, body) of each check in a registration, `Check` first as in Consul."""
    out: list[tuple[str, Any]] = []
    single = f.raw("Check")
    if isinstance(single, list):  # several `check {}` blocks in HCL
        out.extend((f"{f.what}.check[{i}]", c) for i, c in enumerate(single))
    elif single is not None:
        out.append((f"{f.what}.check", single))
    many = f.raw("Checks")
    if many is not None:
        if not isinstance(many, list):
            raise InvalidRequest(f"{f.what}.Checks must be a list of checks")
        out.extend((f"{f.what}.checks[{i}]", c) for i, c in enumerate(many))
    return [(w, c) for w, c in out if not _is_empty(c)]


_GATEWAYS = ("mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway")


def _take_sidecar(service: Service, what: str) -> tuple[Service, dict[str, Any] | None]:
    """The service without its SidecarService block, and the block."""
    if "SidecarService" not in service.connect:
        return service, None
    connect = dict(service.connect)
    sidecar = connect.pop("SidecarService")
    if service.kind == CONNECT_PROXY:
        raise InvalidRequest(f"{what}.Connect.SidecarService: a connect-proxy cannot have a sidecar service "
                             f"(register the proxy itself, or give the sidecar_service to the service it fronts)")
    if service.kind in _GATEWAYS:
        raise InvalidRequest(f"{what}.Connect.SidecarService: A {service.kind} cannot have a sidecar service defined")
    return evolve(service, connect=connect), sidecar


def parse_service_definition(data: Any, what: str = "service", *, port_later: bool = False) -> ServiceDefinition:
    """An AgentServiceRegistration body (or a config file's `service` block).
    `port_later`: a sidecar's definition before the agent assigns its port."""
    f = Fields(data, what)
    if not f.str("Name", "Service"):
        raise InvalidRequest(f"{what}.Name: missing service name")
    service, sidecar = _take_sidecar(parse_service(data, what), what)
    if service.kind == CONNECT_PROXY and not service.port and not f.str("SocketPath") and not port_later:
        raise InvalidRequest(f"{what}.Port: must be set for a connect-proxy")
    validate_proxy(service.kind, service.proxy, service.connect, what)
    if service.connect.get("Native") and not service.port and not f.str("SocketPath"):
        raise InvalidRequest(f"{what}.Port: Port or SocketPath must be set for a Connect native service.")
    embedded = _embedded_checks(f)
    checks = tuple(
        parse_check(
            body,
            what=check_what,
            service_id=service.id,
            service_name=service.service,
            position=i,
            total=len(embedded),
        )
        for i, (check_what, body) in enumerate(embedded)
    )
    return ServiceDefinition(service=service, checks=checks, sidecar=sidecar, token=f.str("Token"))


def unblock(value: Any, key: str = "") -> Any:
    """Undo python-hcl2's list-per-block for blocks that stand for one object (also what
    `mesh services register` sends, so an HCL file means what it means in the agent's
    config)."""
    if isinstance(value, dict):
        folded = _fold(key)
        out = {k: unblock(v, k) for k, v in value.items()}
        if folded == "taggedaddresses":  # lan { address = ... } blocks keyed by user names
            out = {k: v[0] if _one_dict(v) else v for k, v in out.items()}
        return out
    if isinstance(value, list):
        items = [unblock(v, key) for v in value]
        if _fold(key) in _ONE_OBJECT_BLOCKS and _one_dict(items):
            return items[0]
        return items
    return value


def _one_dict(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)


def _strict(raw: Any, allowed: set[str], what: str) -> None:
    if not isinstance(raw, dict):
        return  # Fields reports the type with the right name
    for key in raw:
        if not isinstance(key, str) or _fold(key) not in allowed:
            raise InvalidRequest(f"{what}: unknown key {key!r}")


def _blocks(data: dict[str, Any], key: str, path: str) -> list[tuple[str, Any]]:
    """(what, body) for a top-level `service`/`check` (one object, or HCL blocks) or
    `services`/`checks` (a list)."""
    raw = data.get(key)
    if raw is None:
        return []
    plural = key.endswith("s")
    if isinstance(raw, dict) and not plural:
        return [(f"{path}: {key}", raw)]
    if not isinstance(raw, list):
        kind = "a list of objects" if plural else "an object"
        raise InvalidRequest(f"{path}: {key} must be {kind}")
    if len(raw) == 1 and not plural:
        return [(f"{path}: {key}", raw[0])]
    return [(f"{path}: {key}[{i}]", item) for i, item in enumerate(raw)]


def _strict_service(raw: Any, what: str) -> None:
    """Unknown keys of a config file's service, its checks, proxy and connect blocks,
    and its sidecar_service (a service of its own) are errors, as in Consul."""
    _strict(raw, _SERVICE_KEYS, what)
    if not isinstance(raw, dict):
        return
    f = Fields(raw, what)
    for check_what, body in _embedded_checks(f):
        _strict(body, _CHECK_KEYS, check_what)
    for block in ("proxy", "connect"):
        value = f.raw(block)
        unknown = unknown_keys(value, block, block) if isinstance(value, dict) else []
        if unknown:
            raise InvalidRequest(f"{what}: unknown key {unknown[0]!r}")
    connect = f.raw("connect")
    sidecar = Fields(connect, f"{what}.connect").raw("sidecar_service") if isinstance(connect, dict) else None
    if sidecar is not None:
        _strict_service(sidecar, f"{what}.connect.sidecar_service")


def services_from_config(data: dict[str, Any], path: str) -> list[ServiceDefinition]:
    """The services a config file defines (`service` and `services`), in file order."""
    out: list[ServiceDefinition] = []
    for key in ("service", "services"):
        for what, raw in _blocks(data, key, path):
            raw = unblock(raw)
            _strict_service(raw, what)
            out.append(parse_service_definition(raw, what))
    return out


def checks_from_config(data: dict[str, Any], path: str) -> list[CheckDefinition]:
    """The node-level (or `service_id`-attached) checks a config file defines."""
    out: list[CheckDefinition] = []
    for key in ("check", "checks"):
        for what, raw in _blocks(data, key, path):
            raw = unblock(raw)
            _strict(raw, _CHECK_KEYS, what)
            out.append(parse_check(raw, what=what))
    return out
