"""Typed answers of the agent endpoints the sidecar proxy reads. Pure: no I/O.

Each parser takes the decoded JSON of one endpoint and returns frozen values, or raises
DecodeError naming the field (`AgentService.Proxy.Upstreams[0].LocalBindPort must be an
integer, got '9191'`). Unknown fields are ignored, so a newer agent's additions pass.
Field names are read case- and underscore-insensitively through the catalog's own
reader (mesh.catalog.fields), so the CamelCase the agent answers with and the snake_case
of config files both work. Consul's JSON shapes: ../shared/reference/consul.md §1.1, §4,
§6; ours are made in agent/http/ and ca/manager.py.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, NamedTuple, ParamSpec, TypeVar

from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fields import Fields
from mesh.catalog.intentions import intention_from_api
from mesh.catalog.requests import parse_service
from mesh.catalog.structs import PASSING, Intention

from .errors import DecodeError

__all__ = [
    "Upstream", "Proxy", "AgentService", "Leaf", "CARoot", "CARoots", "ConnectEndpoint", "IntentionMatch",
    "parse_agent_service", "parse_agent_services", "parse_leaf", "parse_roots", "parse_connect_endpoints",
    "parse_intention_match", "default_allow", "parse_rfc3339",
]

T = TypeVar("T")
P = ParamSpec("P")
_PORT = {"lo": 0, "hi": 65535}
_INDEX = {"lo": 0}


def _decoding(parse: Callable[P, T]) -> Callable[P, T]:
    """The catalog's reader raises InvalidRequest (a 400 on the agent); here the same
    problem is the agent's answer being wrong, so it leaves as DecodeError."""
    @wraps(parse)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return parse(*args, **kwargs)
        except InvalidRequest as exc:
            raise DecodeError(str(exc)) from None
    return wrapper


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_rfc3339(text: str, what: str = "time") -> float:
    """Epoch seconds of an RFC 3339 time with its zone ("2024-05-01T10:00:00Z", Go's
    nanosecond fractions and offsets included): certificate lifetimes are compared
    with time.time(), never with a naive local time."""
    if not isinstance(text, str):
        raise DecodeError(f"{what} must be an RFC 3339 time string, got {type(text).__name__}")
    try:
        parsed = datetime.datetime.fromisoformat(_FRACTION.sub(r"\1", text.strip()))
    except ValueError:
        raise DecodeError(f"{what} is not an RFC 3339 time: {text[:40]!r}") from None
    if parsed.tzinfo is None:
        raise DecodeError(f"{what} has no time zone: {text[:40]!r}")
    return parsed.timestamp()


def _list(f: Fields, name: str) -> list[Any]:
    """A list field; absent or null is empty (Go marshals a nil slice as null)."""
    value = f.raw(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodeError(f"{f.what}.{name} must be a list")
    return value


# ---- agent services -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream of a proxy: a local listener that reaches `destination_name`."""

    destination_name: str
    local_bind_port: int = 0
    destination_type: str = "service"
    datacenter: str = ""
    local_bind_address: str = "127.0.0.1"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Proxy:
    """A connect-proxy's `Proxy` block. `config` is the free-form map as written (its
    keys are the user's: `local_connect_timeout_ms`, `bind_port`, ...)."""

    destination_service_name: str
    destination_service_id: str = ""
    local_service_address: str = ""
    local_service_port: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    upstreams: tuple[Upstream, ...] = ()
    access_logs: dict[str, Any] = field(default_factory=dict)  # Consul's AccessLogs block, as registered


@dataclass(frozen=True, slots=True)
class AgentService:
    """A service registered on the local agent (/v1/agent/service/:id, /v1/agent/services)."""

    id: str
    service: str
    kind: str = ""
    address: str = ""
    port: int = 0
    tags: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)
    proxy: Proxy | None = None
    connect_native: bool = False
    datacenter: str = ""
    content_hash: str = ""


def _upstream(data: Any, what: str) -> Upstream:
    f = Fields(data, what)
    name = f.str("DestinationName")
    if not name:
        raise DecodeError(f"{what}.DestinationName must be set")
    return Upstream(
        destination_name=name,
        local_bind_port=f.int("LocalBindPort", **_PORT),
        destination_type=f.str("DestinationType") or "service",
        datacenter=f.str("Datacenter"),
        local_bind_address=f.str("LocalBindAddress") or "127.0.0.1",
        config=f.obj("Config"),
    )


def _proxy(data: Any, what: str) -> Proxy:
    f = Fields(data, what)
    upstreams = _list(f, "Upstreams")
    return Proxy(
        destination_service_name=f.str("DestinationServiceName"),
        destination_service_id=f.str("DestinationServiceID"),
        local_service_address=f.str("LocalServiceAddress"),
        local_service_port=f.int("LocalServicePort", **_PORT),
        config=f.obj("Config"),
        upstreams=tuple(_upstream(u, f"{what}.Upstreams[{i}]") for i, u in enumerate(upstreams)),
        access_logs=f.obj("AccessLogs"),
    )


@_decoding
def parse_agent_service(data: Any, what: str = "AgentService") -> AgentService:
    """One AgentService, read by the catalog's own service reader (the same rules as a
    registration), its Proxy block typed. `proxy` is None when absent or empty."""
    svc = parse_service(data, what)
    f = Fields(data, what)
    return AgentService(
        id=svc.id, service=svc.service, kind=svc.kind, address=svc.address, port=svc.port, tags=svc.tags,
        meta=svc.meta, proxy=_proxy(svc.proxy, f"{what}.Proxy") if svc.proxy else None,
        connect_native=Fields(svc.connect, f"{what}.Connect").bool("Native"),
        datacenter=f.str("Datacenter"), content_hash=f.str("ContentHash"),
    )


def parse_agent_services(data: Any) -> dict[str, AgentService]:
    """/v1/agent/services: a map of service ID to AgentService."""
    if not isinstance(data, dict):
        raise DecodeError(f"agent services must be a JSON object, got {type(data).__name__}")
    return {str(k): parse_agent_service(v, f"services[{k!r}]") for k, v in data.items()}


# ---- certificates ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Leaf:
    """A service's leaf certificate and key (/v1/agent/connect/ca/leaf/:service).
    `cert_pem` holds the leaf and, after a root rotation, the cross-signed chain;
    `valid_after`/`valid_before` are epoch seconds."""

    serial_number: str
    cert_pem: str
    private_key_pem: str
    service: str
    service_uri: str
    valid_after: float
    valid_before: float
    create_index: int = 0
    modify_index: int = 0


def _pem(f: Fields, name: str, kind: str) -> str:
    """A PEM block of `kind` ("CERTIFICATE", "PRIVATE KEY"), checked only that far:
    only ca/ parses certificates, and an empty or mangled field should fail here, with
    its name, rather than later inside an SSL context."""
    value = f.str(name)
    if "-----BEGIN " not in value or kind not in value:
        raise DecodeError(f"{f.what}.{name} must hold a PEM {kind.lower()}")
    return value


@_decoding
def parse_leaf(data: Any) -> Leaf:
    f = Fields(data, "Leaf")
    return Leaf(
        serial_number=f.str("SerialNumber"),
        cert_pem=_pem(f, "CertPEM", "CERTIFICATE"),
        private_key_pem=_pem(f, "PrivateKeyPEM", "PRIVATE KEY"),
        service=f.str("Service"),
        service_uri=f.str("ServiceURI"),
        valid_after=parse_rfc3339(f.str("ValidAfter"), "Leaf.ValidAfter"),
        valid_before=parse_rfc3339(f.str("ValidBefore"), "Leaf.ValidBefore"),
        create_index=f.int("CreateIndex", **_INDEX),
        modify_index=f.int("ModifyIndex", **_INDEX),
    )


@dataclass(frozen=True, slots=True)
class CARoot:
    """One root. `intermediate_certs` is the cross-signed certificate a rotation made
    (the new root signed by the old key), present until the old root is pruned."""

    id: str
    root_cert: str
    intermediate_certs: tuple[str, ...] = ()
    name: str = ""
    active: bool = False


@dataclass(frozen=True, slots=True)
class CARoots:
    """/v1/agent/connect/ca/roots. Before the CA exists: empty trust domain, no roots."""

    trust_domain: str
    active_root_id: str
    roots: tuple[CARoot, ...] = ()

    def bundle(self) -> tuple[str, ...]:
        """Every root's certificate, then their intermediates: peers are verified
        against all roots, not only the active one (their leaves may be older)."""
        pems = [r.root_cert for r in self.roots] + [c for r in self.roots for c in r.intermediate_certs]
        return tuple(dict.fromkeys(pems))

    def active(self) -> CARoot | None:
        return next((r for r in self.roots if r.id == self.active_root_id), None)


@_decoding
def parse_roots(data: Any) -> CARoots:
    f = Fields(data, "CARoots")
    roots = []
    for i, item in enumerate(_list(f, "Roots")):
        r = Fields(item, f"CARoots.Roots[{i}]")
        roots.append(CARoot(id=r.str("ID"), root_cert=_pem(r, "RootCert", "CERTIFICATE"),
                            intermediate_certs=r.str_list("IntermediateCerts"), name=r.str("Name"),
                            active=r.bool("Active")))
    out = CARoots(trust_domain=f.str("TrustDomain"), active_root_id=f.str("ActiveRootID"), roots=tuple(roots))
    if out.active_root_id and out.active() is None:
        raise DecodeError(f"CARoots.ActiveRootID {out.active_root_id!r} is not among the roots")
    return out


# ---- catalog: mesh endpoints of a service ------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectEndpoint:
    """A sidecar proxy (or Connect-native instance) fronting `destination`, from one
    /v1/health/connect/:service entry. `checks` are (CheckID, Status) pairs."""

    node: str
    datacenter: str
    address: str
    port: int
    service_id: str
    service_name: str
    destination: str
    checks: tuple[tuple[str, str], ...] = ()
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)  # as answered

    @property
    def passing(self) -> bool:
        return all(status == PASSING for _, status in self.checks)

    @property
    def key(self) -> tuple[str, str]:
        """What identifies this instance across answers (for ejection state)."""
        return self.node, self.service_id


def _connect_endpoint(data: Any, what: str) -> ConnectEndpoint:
    f = Fields(data, what)
    node = Fields(f.obj("Node"), f"{what}.Node")
    svc = parse_service(f.obj("Service"), f"{what}.Service")
    if svc.kind == "connect-proxy":
        destination = Fields(svc.proxy, f"{what}.Service.Proxy").str("DestinationServiceName")
    elif Fields(svc.connect, f"{what}.Service.Connect").bool("Native"):
        destination = svc.service
    else:
        raise DecodeError(f"{what}.Service is neither a connect-proxy nor Connect-native")
    checks = []
    for i, item in enumerate(_list(f, "Checks")):
        c = Fields(item, f"{what}.Checks[{i}]")
        checks.append((c.str("CheckID"), c.str("Status")))
    return ConnectEndpoint(
        node=node.str("Node"), datacenter=node.str("Datacenter"), address=svc.address or node.str("Address"),
        port=svc.port, service_id=svc.id, service_name=svc.service, destination=destination, checks=tuple(checks),
        entry=data)


@_decoding
def parse_connect_endpoints(data: Any) -> tuple[ConnectEndpoint, ...]:
    """/v1/health/connect/:service: a list of {Node, Service, Checks} (null for none)."""
    if data is None:
        return ()
    if not isinstance(data, list):
        raise DecodeError(f"health entries must be a list, got {type(data).__name__}")
    return tuple(_connect_endpoint(e, f"entries[{i}]") for i, e in enumerate(data))


# ---- intentions -----------------------------------------------------------------------


class IntentionMatch(NamedTuple):
    """The intentions naming one destination, in precedence order, and the agent's
    default policy, which decides when none matches; feed both to
    mesh.catalog.authz.IntentionIndex(intentions).decide(source, destination, default_allow)."""

    intentions: tuple[Intention, ...]
    default_allow: bool


@_decoding
def parse_intention_match(data: Any, name: str) -> tuple[Intention, ...]:
    """/v1/connect/intentions/match?by=destination&name=<name>: {"<name>": [intention]}."""
    if not isinstance(data, dict):
        raise DecodeError(f"intention match must be a JSON object, got {type(data).__name__}")
    rows = data.get(name)
    if rows is None:  # Consul keys the answer by the name as asked; tolerate other case
        rows = next((v for k, v in data.items() if isinstance(k, str) and k.lower() == name.lower()), None)
    if rows is None:
        return ()
    if not isinstance(rows, list):
        raise DecodeError(f"intention match[{name!r}] must be a list")
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(intention_from_api(row))
        except InvalidRequest as exc:
            raise DecodeError(f"intention match[{name!r}][{i}]: {exc}") from None
    return tuple(out)


def default_allow(headers: Mapping[str, str]) -> bool:
    """The agent's default intention policy from X-Consul-Default-ACL-Policy (sent on
    every answer). Absent means allow, as an agent without ACLs answers."""
    value = headers.get("X-Consul-Default-ACL-Policy", "allow").strip().lower()
    if value not in ("allow", "deny"):
        raise DecodeError(f"X-Consul-Default-ACL-Policy must be allow or deny, got {value[:20]!r}")
    return value == "allow"
