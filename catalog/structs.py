"""The rows of the replicated catalog: nodes, services, checks, server records and intentions.

Rows are frozen: the store replaces a row instead of mutating it, so a shallow copy of
a table is a consistent snapshot (the Raft thread keeps applying while a snapshot of
the copy is encoded elsewhere). Attribute names are snake_case; `to_api()` renders
Consul's exact JSON field names, `to_wire()`/`from_wire()` are the msgpack form used
in Raft commands and snapshots.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, ClassVar

__all__ = [
    "HEALTH_STATES",
    "PASSING",
    "WARNING",
    "CRITICAL",
    "Node",
    "Service",
    "Check",
    "ServerInfo",
    "Intention",
    "ConfigEntry",
    "camel",
    "evolve",
    "row_from_wire",
    "row_to_wire",
    "same_content",
    "with_index",
]

PASSING = "passing"
WARNING = "warning"
CRITICAL = "critical"
HEALTH_STATES = (PASSING, WARNING, CRITICAL)

_CAMEL_EXCEPTIONS = {
    "id": "ID",
    "check_id": "CheckID",
    "service_id": "ServiceID",
    "node_id": "NodeID",
}


def camel(name: str) -> str:
    """Consul's Go field name for one of our snake_case attributes."""
    if name in _CAMEL_EXCEPTIONS:
        return _CAMEL_EXCEPTIONS[name]
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


_GETTERS: dict[type, tuple[attrgetter[Any], tuple[str, ...]]] = {}


def _getter(cls: type) -> tuple[attrgetter[Any], tuple[str, ...]]:
    """Rows are applied on the Raft thread by the thousand: dataclasses.replace and
    fields() are too slow there, so rows are read and rebuilt positionally."""
    cached = _GETTERS.get(cls)
    if cached is None:
        names = tuple(f.name for f in fields(cls))
        cached = _GETTERS[cls] = (attrgetter(*names), names)
    return cached


def _values(row: Any) -> tuple[Any, ...]:
    return _getter(type(row))[0](row)  # type: ignore[no-any-return]


def row_to_wire(row: Any) -> list[Any]:
    """Positional msgpack form: smaller and faster than a map for 100k-row snapshots."""
    return list(_values(row))


_EMPTY: dict[str, Any] = {}
_DEFAULT_WEIGHTS = {"Passing": 1, "Warning": 1}
# positions of the fields compacted per row type: (maps, strings to intern, tuples of strings)
_COMPACT: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "Node": ((4, 5), (3,), ()),
    "Service": ((6, 8, 9, 12), (1, 7), (3,)),
    "Check": ((10,), (1, 3, 7, 9), (8,)),
}


def _shared(mapping: Any) -> Any:
    if not mapping:
        return _EMPTY
    if mapping == _DEFAULT_WEIGHTS:
        return _DEFAULT_WEIGHTS
    return mapping


def row_from_wire(cls: type, values: list[Any]) -> Any:
    """Rebuild a row from msgpack. Every row in the store comes through here, so this
    is where memory is saved: empty maps and default weights are one shared object,
    names, kinds and statuses are interned, tags become tuples of interned strings.
    Row maps are therefore shared: nothing may mutate them (rows are replaced, never
    edited)."""
    spec = _COMPACT.get(cls.__name__)
    if spec is None:
        if cls.__name__ == "Intention":
            values = list(values)
            values[7] = tuple(values[7])
        return cls(*values)
    values = list(values)
    maps, strings, string_tuples = spec
    for i in maps:
        values[i] = _shared(values[i])
    for i in strings:
        if isinstance(values[i], str):
            values[i] = sys.intern(values[i])
    for i in string_tuples:
        values[i] = tuple(sys.intern(t) if isinstance(t, str) else t for t in values[i])
    if cls is Service:
        values[10] = _shared(values[10])
    return cls(*values)


def with_index(row: Any, create_index: int, modify_index: int) -> Any:
    """The same row at other Raft indexes (every row ends with create, modify)."""
    return type(row)(*_values(row)[:-2], create_index, modify_index)


def same_content(a: Any, b: Any) -> bool:
    """Equal apart from the Raft indexes."""
    return _values(a)[:-2] == _values(b)[:-2]


def evolve(row: Any, **changes: Any) -> Any:
    """dataclasses.replace without its per-call validation cost."""
    getter, names = _getter(type(row))
    values = dict(zip(names, getter(row), strict=True))
    values.update(changes)
    return type(row)(**values)


@dataclass(frozen=True, slots=True)
class Node:
    node: str
    address: str
    id: str = ""
    datacenter: str = ""
    tagged_addresses: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


    def to_api(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Node": self.node,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": dict(self.tagged_addresses),
            "Meta": dict(self.meta),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True, slots=True)
class Service:
    id: str
    service: str
    node: str = ""
    tags: tuple[str, ...] = ()
    address: str = ""
    port: int = 0
    meta: dict[str, str] = field(default_factory=dict)
    kind: str = ""
    proxy: dict[str, Any] = field(default_factory=dict)
    connect: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=lambda: {"Passing": 1, "Warning": 1})
    enable_tag_override: bool = False
    tagged_addresses: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


    def to_api(self) -> dict[str, Any]:
        """AgentService shape, as in /v1/catalog/node/:node and health entries."""
        out: dict[str, Any] = {}
        if self.kind:
            out["Kind"] = self.kind
        out.update(
            {
                "ID": self.id,
                "Service": self.service,
                "Tags": list(self.tags),
                "Address": self.address,
                "Meta": dict(self.meta),
                "Port": self.port,
                "Weights": dict(self.weights),
                "EnableTagOverride": self.enable_tag_override,
            }
        )
        if self.tagged_addresses:
            out["TaggedAddresses"] = dict(self.tagged_addresses)
        if self.proxy:
            out["Proxy"] = dict(self.proxy)
        if self.connect:
            out["Connect"] = dict(self.connect)
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


@dataclass(frozen=True, slots=True)
class Check:
    check_id: str
    name: str
    node: str = ""
    status: str = CRITICAL
    notes: str = ""
    output: str = ""
    service_id: str = ""
    service_name: str = ""
    service_tags: tuple[str, ...] = ()
    type: str = ""
    definition: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0


    def to_api(self) -> dict[str, Any]:
        return {
            "Node": self.node,
            "CheckID": self.check_id,
            "Name": self.name,
            "Status": self.status,
            "Notes": self.notes,
            "Output": self.output,
            "ServiceID": self.service_id,
            "ServiceName": self.service_name,
            "ServiceTags": list(self.service_tags),
            "Type": self.type,
            "Definition": dict(self.definition),
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A Raft voter as the other servers and the HTTP API need to name it."""

    raft_address: str
    node: str
    node_id: str
    rpc_address: str
    create_index: int = 0
    modify_index: int = 0

    TABLE: ClassVar[str] = "servers"


@dataclass(frozen=True, slots=True)
class Intention:
    """Whether `source_name` may call `destination_name`: an L4 `action` (allow or
    deny) or L7 `permissions`; `precedence` is stamped when it is parsed."""

    id: str
    source_name: str
    destination_name: str
    action: str = ""
    description: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    source_type: str = "consul"
    permissions: tuple[dict[str, Any], ...] = ()
    precedence: int = 0
    created_at: str = ""
    updated_at: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": self.id,
            "Description": self.description,
            "SourceNS": "default",
            "SourceName": self.source_name,
            "DestinationNS": "default",
            "DestinationName": self.destination_name,
            "SourceType": self.source_type,
            "Action": self.action,
            "Meta": dict(self.meta),
            "Precedence": self.precedence,
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.permissions:
            out["Permissions"] = [dict(p) for p in self.permissions]
        return out

    def label(self) -> str:
        kind = self.action if self.action else "L7"
        return f"{self.source_name} => {self.destination_name} ({kind})"


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """One central config entry (`/v1/config`): its `kind`, `name` and `body`, the
    entry's fields in Consul's JSON names, validated and with empty fields left out
    (catalog.config_entries builds and renders it). For service-intentions the body
    holds only the entry's Meta: its sources are rows of the intention table."""

    kind: str
    name: str
    body: dict[str, Any] = field(default_factory=dict)
    create_index: int = 0
    modify_index: int = 0
