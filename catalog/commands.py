"""Raft commands: a type byte and a msgpack body, the only way cluster state changes.

Wire form of one command: ``type byte | msgpack([version, request_id, body])``. The
high bit of the type byte is IGNORE_UNKNOWN: a server that does not know the type
skips such a command instead of stopping, so new optional commands can be rolled
out one server at a time (Consul's precedent). The request ID makes a command
idempotent: a write that timed out and is sent again applies once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .acl_state import ACLWrite
from .errors import FatalStateError
from .sessions import Session
from .structs import (
    Check,
    ConfigEntry,
    Intention,
    Node,
    ServerInfo,
    Service,
    row_from_wire,
    row_to_wire,
)

__all__ = [
    "IGNORE_UNKNOWN",
    "CODEC_VERSION",
    "MessageType",
    "Command",
    "RegisterRequest",
    "DeregisterRequest",
    "ConfigSetRequest",
    "ConfigDeleteRequest",
    "KVOp",
    "KVRequest",
    "SessionDestroyRequest",
    "TIMED",
    "encode",
    "decode",
    "encode_batch",
    "decode_batch",
]

IGNORE_UNKNOWN = 0x80
CODEC_VERSION = 1


class MessageType(enum.IntEnum):
    REGISTER = 0
    DEREGISTER = 1
    BARRIER = 2
    SERVER_UPSERT = 3
    SERVER_REMOVE = 4
    RESTORE = 5
    INTENTION_UPSERT = 6
    INTENTION_DELETE = 7
    CA_SET = 8
    CA_SERIAL = 9
    CONFIG_SET = 10
    CONFIG_DELETE = 11
    KV_APPLY = 12
    TXN = 13
    SESSION_CREATE = 14
    SESSION_DESTROY = 15
    KV_REAP = 16
    ACL = 17  # catalog.acl_state.ACLWrite: tokens, policies, roles, bootstrap


# commands whose `now` the receiving server sets (agent/server/catalog_rpc.py): lock
# delays compare wall times, and an agent's clock is not trusted with them
# (and token expiry and CreateTime)
TIMED = frozenset({MessageType.KV_APPLY, MessageType.TXN, MessageType.SESSION_DESTROY, MessageType.ACL})


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """/v1/catalog/register, validated and normalized (see catalog.requests)."""

    node: Node
    service: Service | None = None
    checks: tuple[Check, ...] = ()
    skip_node_update: bool = False

    def to_wire(self) -> list[Any]:
        return [
            row_to_wire(self.node),
            row_to_wire(self.service) if self.service else None,
            [row_to_wire(c) for c in self.checks],
            self.skip_node_update,
        ]

    @classmethod
    def from_wire(cls, data: list[Any]) -> RegisterRequest:
        node, service, checks, skip = data
        return cls(
            node=row_from_wire(Node, node),
            service=row_from_wire(Service, service) if service else None,
            checks=tuple(row_from_wire(Check, c) for c in checks),
            skip_node_update=bool(skip),
        )


@dataclass(frozen=True, slots=True)
class DeregisterRequest:
    node: str
    service_id: str = ""
    check_id: str = ""

    def to_wire(self) -> list[Any]:
        return [self.node, self.service_id, self.check_id]

    @classmethod
    def from_wire(cls, data: list[Any]) -> DeregisterRequest:
        return cls(*data)


@dataclass(frozen=True, slots=True)
class ConfigSetRequest:
    """PUT /v1/config, validated (catalog.config_entries): the entry, the `?cas` index
    (None: no check; 0: create only) and, for service-intentions, the destination's new
    intention rows, IDs stamped."""

    entry: ConfigEntry
    cas: int | None = None
    intentions: tuple[Intention, ...] = ()

    def to_wire(self) -> list[Any]:
        return [row_to_wire(self.entry), self.cas, [row_to_wire(i) for i in self.intentions]]

    @classmethod
    def from_wire(cls, data: list[Any]) -> ConfigSetRequest:
        entry, cas, intentions = data
        return cls(entry=row_from_wire(ConfigEntry, entry), cas=cas,
                   intentions=tuple(row_from_wire(Intention, i) for i in intentions))


@dataclass(frozen=True, slots=True)
class ConfigDeleteRequest:
    """DELETE /v1/config/:kind/:name, with the `?cas` index or None."""

    kind: str
    name: str
    cas: int | None = None

    def to_wire(self) -> list[Any]:
        return [self.kind, self.name, self.cas]

    @classmethod
    def from_wire(cls, data: list[Any]) -> ConfigDeleteRequest:
        return cls(*data)


@dataclass(frozen=True, slots=True)
class KVOp:
    """One KV operation (catalog.kv.run_op): a `/v1/kv` write or a `/v1/txn` op."""

    verb: str
    key: str
    value: bytes = b""
    flags: int = 0
    index: int = 0
    session: str = ""

    def to_wire(self) -> list[Any]:
        return [self.verb, self.key, self.value, self.flags, self.index, self.session]

    @classmethod
    def from_wire(cls, data: list[Any]) -> KVOp:
        verb, key, value, flags, index, session = data
        return cls(str(verb), str(key), bytes(value), int(flags), int(index), str(session))


@dataclass(frozen=True, slots=True)
class KVRequest:
    """KV_APPLY (one op, answers true/false) and TXN (all ops or none); `now` is the
    wall time the receiving server stamped."""

    ops: tuple[KVOp, ...]
    now: float = 0.0

    def to_wire(self) -> list[Any]:
        return [[op.to_wire() for op in self.ops], self.now]

    @classmethod
    def from_wire(cls, data: list[Any]) -> KVRequest:
        ops, now = data
        return cls(tuple(KVOp.from_wire(op) for op in ops), float(now))


@dataclass(frozen=True, slots=True)
class SessionDestroyRequest:
    """A user's destroy or the leader's invalidation of sessions, at wall time `now`
    (their locks are delayed from it)."""

    ids: tuple[str, ...]
    now: float = 0.0
    reason: str = ""

    def to_wire(self) -> list[Any]:
        return [list(self.ids), self.now, self.reason]

    @classmethod
    def from_wire(cls, data: list[Any]) -> SessionDestroyRequest:
        ids, now, reason = data
        return cls(tuple(str(i) for i in ids), float(now), str(reason))


@dataclass(frozen=True, slots=True)
class Command:
    type: int
    body: Any = None
    request_id: bytes = b""
    version: int = CODEC_VERSION
    flags: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _body_to_wire(msg_type: int, body: Any) -> Any:
    if isinstance(body, RegisterRequest | DeregisterRequest | ConfigSetRequest | ConfigDeleteRequest | KVRequest
                  | SessionDestroyRequest | Session | ACLWrite):
        return body.to_wire()
    if msg_type == MessageType.INTENTION_UPSERT:
        intention, mode = body
        return [row_to_wire(intention), mode]
    if isinstance(body, ServerInfo):
        return row_to_wire(body)
    return body


def _body_from_wire(msg_type: int, body: Any) -> Any:
    if msg_type == MessageType.REGISTER:
        return RegisterRequest.from_wire(body)
    if msg_type == MessageType.DEREGISTER:
        return DeregisterRequest.from_wire(body)
    if msg_type == MessageType.SERVER_UPSERT:
        return row_from_wire(ServerInfo, body)
    if msg_type == MessageType.INTENTION_UPSERT:
        return row_from_wire(Intention, body[0]), str(body[1])
    if msg_type == MessageType.CONFIG_SET:
        return ConfigSetRequest.from_wire(body)
    if msg_type == MessageType.CONFIG_DELETE:
        return ConfigDeleteRequest.from_wire(body)
    if msg_type in (MessageType.KV_APPLY, MessageType.TXN):
        return KVRequest.from_wire(body)
    if msg_type == MessageType.SESSION_CREATE:
        return Session.from_wire(body)
    if msg_type == MessageType.SESSION_DESTROY:
        return SessionDestroyRequest.from_wire(body)
    if msg_type == MessageType.ACL:
        return ACLWrite.from_wire(body)
    return body


def encode(msg_type: int, body: Any = None, request_id: bytes = b"", flags: int = 0) -> bytes:
    """One command as bytes; `flags` may carry IGNORE_UNKNOWN."""
    payload = msgpack.packb(
        [CODEC_VERSION, request_id, _body_to_wire(msg_type, body)], use_bin_type=True
    )
    return bytes([(int(msg_type) & 0x7F) | flags]) + payload


def decode(data: bytes) -> Command:
    """Bytes back to a Command. A command of an unknown type decodes with body None;
    whether that is fatal is the FSM's decision (IGNORE_UNKNOWN)."""
    if not data:
        raise FatalStateError("empty command")
    type_byte = data[0]
    msg_type = type_byte & 0x7F
    flags = type_byte & IGNORE_UNKNOWN
    try:
        version, request_id, body = msgpack.unpackb(data[1:], raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FatalStateError(f"undecodable command of type {msg_type}: {exc}") from exc
    if msg_type in MessageType.__members__.values():
        body = _body_from_wire(msg_type, body)
    return Command(type=msg_type, body=body, request_id=request_id, version=version, flags=flags)


def encode_batch(commands: list[bytes]) -> bytes:
    """Group commit: many encoded commands in one Raft entry."""
    return msgpack.packb(commands, use_bin_type=True)


def decode_batch(data: bytes) -> list[bytes]:
    try:
        out = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise FatalStateError(f"undecodable batch: {exc}") from exc
    if not isinstance(out, list):
        raise FatalStateError("batch is not a list")
    return out
