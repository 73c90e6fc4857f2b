"""Consul's `connect { sidecar_service {} }`: a service definition that brings its
sidecar proxy's registration along, expanded by the agent (consul.md §6.6,
Consul's agent/sidecar_service.go).

Two steps, because the port depends on the agent's other services: `draft` checks
the block and fills in everything but an unset port, at parse time, so a bad block is
a 400 (or a config error naming the file) before anything is registered; `expand`
assigns the port (`assign_port`: the lowest free one of the sidecar range, or the one
the sidecar had) and adds the default checks when the block gives none. Pure: the
agent passes in its local state and the range.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.catalog.connect import CONNECT_PROXY, canonical_proxy, format_host_port
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.requests import Fields
from mesh.catalog.structs import Service, evolve

from .definitions import CheckDefinition, ServiceDefinition, parse_check, parse_service_definition
from .state import LocalService, LocalState, Registration

__all__ = [
    "SIDECAR_SUFFIX",
    "DEFAULT_PORT_RANGE",
    "SidecarDraft",
    "sidecar_id",
    "draft",
    "default_checks",
    "assign_port",
    "expand",
    "for_registration",
    "for_config",
]

SIDECAR_SUFFIX = "-sidecar-proxy"
DEFAULT_PORT_RANGE = (21000, 21255)  # ports.sidecar_min_port, sidecar_max_port (inclusive)
_LISTENING = "Connect Sidecar Listening"
_ALIASING = "Connect Sidecar Aliasing "


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


# what the expansion decides; the rest of the block (checks, weights, ...) is kept as given
_SET_HERE = {_fold(k) for k in ("ID", "Name", "Service", "Kind", "Address", "Tags", "Meta", "Port", "Proxy", "Token")}


@dataclass(frozen=True)
class SidecarDraft:
    """A sidecar's definition before its port is known: `definition.service.port` is 0
    when the agent must assign one; `definition.checks` are the block's own (none: the
    defaults are added once the port is known)."""

    parent_id: str
    definition: ServiceDefinition
    token: str


def sidecar_id(parent_id: str) -> str:
    """Always `<parent ID>-sidecar-proxy`: the agent relies on it to find a parent's sidecar."""
    return parent_id + SIDECAR_SUFFIX


def _sidecar_proxy(parent: Service, raw: Any, what: str) -> dict[str, Any]:
    proxy = canonical_proxy(raw if raw is not None else {}, what)
    if not proxy.get("DestinationServiceName"):
        proxy["DestinationServiceName"] = parent.service
    if not proxy.get("DestinationServiceID"):
        proxy["DestinationServiceID"] = parent.id
    if not proxy.get("LocalServiceSocketPath"):
        if not proxy.get("LocalServiceAddress"):
            proxy["LocalServiceAddress"] = "127.0.0.1"
        if not proxy.get("LocalServicePort"):
            proxy["LocalServicePort"] = parent.port
    return proxy


def draft(parent: ServiceDefinition, what: str = "service") -> SidecarDraft | None:
    """The sidecar of `parent` (None without a sidecar_service), every field but an unset
    port filled in as Consul's sidecarServiceFromNodeService does. Raises
    InvalidRequest naming the field for a block Consul refuses."""
    block = parent.sidecar
    if block is None:
        return None
    where = f"{what}.Connect.SidecarService"
    f = Fields(block, where)
    if f.str("ID"):
        raise InvalidRequest(f"{where}.ID: A SidecarService cannot specify an ID as this is managed by the agent")
    kind = f.str("Kind")
    if kind not in ("", CONNECT_PROXY):
        raise InvalidRequest(f"{where}.Kind: a sidecar service is a {CONNECT_PROXY}, got {kind!r}")
    connect = f.raw("Connect")
    if isinstance(connect, dict) and Fields(connect, f"{where}.Connect").has("SidecarService"):
        raise InvalidRequest(f"{where}.Connect: A SidecarService cannot have a nested SidecarService")
    p = parent.service
    body = {k: v for k, v in block.items() if not isinstance(k, str) or _fold(k) not in _SET_HERE}
    body.update(
        ID=sidecar_id(p.id),
        Name=f.str("Name", "Service") or p.service + SIDECAR_SUFFIX,
        Kind=CONNECT_PROXY,
        Address=f.str("Address") or p.address,
        # Consul copies the parent's tags and meta only when the block sets none
        Tags=list(f.str_list("Tags") or p.tags),
        Meta=f.str_map("Meta") or dict(p.meta),
        Port=f.int("Port", lo=0, hi=65535),
        Proxy=_sidecar_proxy(p, f.raw("Proxy"), f"{where}.Proxy"),
    )
    definition = parse_service_definition(body, where, port_later=True)
    return SidecarDraft(parent_id=p.id, definition=definition, token=f.str("Token") or parent.token)


def default_checks(sidecar: Service, parent_id: str) -> tuple[CheckDefinition, ...]:
    """Consul's sidecarDefaultChecks: the proxy's public port is open (every 10 s, on
    the sidecar's address or else its LocalServiceAddress), and an alias of the parent,
    so a sidecar in front of a failing app is not healthy either."""
    address = sidecar.address or str(sidecar.proxy.get("LocalServiceAddress") or "127.0.0.1")
    bodies = [
        {"Name": _LISTENING, "TCP": format_host_port(address, sidecar.port), "Interval": "10s"},
        {"Name": _ALIASING + parent_id, "AliasService": parent_id},
    ]
    return tuple(parse_check(b, what=f"sidecar {sidecar.id} check", service_id=sidecar.id,
                             service_name=sidecar.service, position=i, total=len(bodies))
                 for i, b in enumerate(bodies))


def assign_port(sidecar: str, used: Collection[int], port_range: tuple[int, int],
                remembered: Mapping[str, int], current: int = 0) -> int:
    """The port for a sidecar registered without one: the one it has (`current`) or had
    (`remembered`) when still free and in range, else the lowest port of the range that
    no other service uses, preferring one no absent sidecar remembers. Consul's
    messages when the range is off (sidecar_min_port 0) or full."""
    lo, hi = port_range
    if lo < 1 or hi < 1:
        raise InvalidRequest("no port provided for sidecar_service and auto-assignment disabled in config")
    for candidate in (current, remembered.get(sidecar, 0)):
        if lo <= candidate <= hi and candidate not in used:
            return candidate
    free = [p for p in range(lo, hi + 1) if p not in used]
    reserved = {p for other, p in remembered.items() if other != sidecar}
    for port in free:
        if port not in reserved:
            return port
    if free:
        return free[0]
    raise InvalidRequest(f"no port provided for sidecar_service and none left in the configured range [{lo}, {hi}]")


def expand(entries: Sequence[tuple[ServiceDefinition, SidecarDraft | None]], local: LocalState,
           replacing: Callable[[str, LocalService], bool], port_range: tuple[int, int]) -> list[Registration]:
    """The registrations for some definitions: each service, then its sidecar with its
    port and checks. `replacing` says which of the agent's current services these
    definitions replace: their ports are free for the new ones, and a sidecar among
    them keeps its port."""
    used: set[int] = set()
    current: dict[str, int] = {}
    for sid, local_service in local.services.items():
        if replacing(sid, local_service):
            current[sid] = local_service.service.port
        else:
            used.add(local_service.service.port)
    for defn, sidecar in entries:
        used.add(defn.service.port)
        if sidecar is not None:
            used.add(sidecar.definition.service.port)
    used.discard(0)
    out: list[Registration] = []
    for defn, sidecar in entries:
        out.append(Registration(defn.service, defn.checks, token=defn.token))
        if sidecar is None:
            continue
        service = sidecar.definition.service
        assigned = not service.port
        if assigned:
            service = evolve(service, port=assign_port(service.id, used, port_range, local.sidecar_ports,
                                                       current.get(service.id, 0)))
            used.add(service.port)
        checks = sidecar.definition.checks or default_checks(service, sidecar.parent_id)
        out.append(Registration(service, checks, sidecar_for=sidecar.parent_id, token=sidecar.token,
                                port_assigned=assigned))
    return out


def for_registration(defn: ServiceDefinition, local: LocalState, port_range: tuple[int, int]) -> list[Registration]:
    """An API registration (or a persisted one restored): the service and its sidecar
    replace themselves."""
    replaced = {defn.service.id, sidecar_id(defn.service.id)}
    return expand([(defn, draft(defn))], local, lambda sid, _: sid in replaced, port_range)


def for_config(entries: Sequence[tuple[ServiceDefinition, SidecarDraft | None]], local: LocalState,
               port_range: tuple[int, int]) -> list[Registration]:
    """The config files' services (a start or a reload): they replace every service
    that came from config files before."""
    return expand(entries, local, lambda _, s: s.source == "config", port_range)
