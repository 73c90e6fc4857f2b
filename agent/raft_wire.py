"""What crosses the Raft port, as pure data: the codec, the frame reader, the penalty box.

pysyncobj 0.3.17 pickles every message it sends and unpickles every frame it receives
(and every log entry it applies), so anyone who can reach the Raft port of a server
without a cluster key can run code on it. Our adapter swaps all of that for msgpack
of plain values (this codec) and reads frames through `FrameReader`, which refuses a
length past its cap as soon as the 4-byte header arrives, long before the body could
fill memory. Until a connection has delivered one frame that authenticates (decrypts
under the cluster key), its cap is a few KiB: pysyncobj's handshake frames are ~150
bytes, while the largest legitimate frame (an append or snapshot chunk of 64 KiB,
base64-expanded by Fernet) stays under 200 KiB.

Nothing here imports pysyncobj; the glue that installs this into the library lives in
server/raft/pysyncobj_node.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "MAX_FRAME",
    "MAX_PREAUTH_FRAME",
    "MAX_ENTRY",
    "FrameError",
    "FrameReader",
    "Codec",
    "PenaltyBox",
    "frame",
]

MAX_FRAME = 4 << 20  # after authentication
MAX_PREAUTH_FRAME = 4 << 10  # before it: the key exchange and the node's address
MAX_ENTRY = 1 << 30  # one log entry sent in chunks (a snapshot restore is one entry)
_HEADER = struct.Struct(">I")

_EXT_NODE = 1  # a pysyncobj node, as its address
_EXT_SET = 2  # a set (the in-memory snapshot holds the cluster as one)


class FrameError(ValueError):
    """The peer broke the framing: the connection is dropped and the peer penalised."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Length-prefixed frames from a byte stream, without quadratic copying.

    Bytes are appended to one bytearray and consumed from its front (CPython makes
    that O(1)); a header announcing more than `limit` raises at once."""

    __slots__ = ("_buf", "limit")

    def __init__(self, limit: int = MAX_PREAUTH_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._check_header()

    def _check_header(self) -> None:
        if len(self._buf) >= 4:
            (length,) = _HEADER.unpack_from(self._buf)
            if length == 0 or length > self.limit:
                raise FrameError(f"frame length {length} outside 1..{self.limit}")

    def next_frame(self) -> bytes | None:
        if len(self._buf) < 4:
            return None
        self._check_header()
        (length,) = _HEADER.unpack_from(self._buf)
        if len(self._buf) < 4 + length:
            return None
        payload = bytes(self._buf[4 : 4 + length])
        del self._buf[: 4 + length]
        self._check_header()
        return payload

    def reset(self, limit: int = MAX_PREAUTH_FRAME) -> None:
        self._buf = bytearray()
        self.limit = limit


class Codec:
    """pysyncobj's `pickle` module, replaced: dumps/loads/dump/load/to_bytes over msgpack.

    Arrays decode as tuples (pysyncobj tells a command from its arguments with
    isinstance(..., tuple) and compares log entries with its journal's tuples). Nodes
    travel as their address and come back as `make_node(address)`; sets as ext 2."""

    def __init__(self, node_type: type, make_node: Callable[[str], Any]) -> None:
        self._node_type = node_type
        self._make_node = make_node

    def _default(self, obj: Any) -> Any:
        if isinstance(obj, self._node_type):
            return msgpack.ExtType(_EXT_NODE, str(obj.id).encode())
        if isinstance(obj, set | frozenset):
            return msgpack.ExtType(_EXT_SET, self.dumps(list(obj)))
        raise TypeError(f"cannot send {type(obj).__name__} over the Raft wire")

    def _ext(self, code: int, data: bytes) -> Any:
        if code == _EXT_NODE:
            return self._make_node(data.decode())
        if code == _EXT_SET:
            return set(self.loads(data))
        raise ValueError(f"unknown msgpack extension {code}")

    def dumps(self, obj: Any) -> bytes:
        return msgpack.packb(obj, use_bin_type=True, default=self._default)

    def loads(self, data: bytes) -> Any:
        return msgpack.unpackb(bytes(data), raw=False, use_list=False, strict_map_key=False,
                               ext_hook=self._ext)

    def dump(self, obj: Any, f: Any) -> None:
        f.write(self.dumps(obj))

    def load(self, f: Any) -> Any:
        return self.loads(f.read())

    @staticmethod
    def to_bytes(data: Any) -> bytes:
        return data.encode() if isinstance(data, str) else bytes(data)


@dataclass
class PenaltyBox:
    """Peers that sent junk are refused for a while, doubling per offence.

    One junk frame costs its sender `base` seconds; the next one within the window twice
    that, up to `ceiling`. A penalty also says when to log, so a flood of junk from one
    address writes one line per penalty rather than one per frame."""

    clock: Callable[[], float]
    base: float = 1.0
    ceiling: float = 60.0
    max_peers: int = 4096
    _until: dict[str, float] = field(default_factory=dict)
    _strikes: dict[str, int] = field(default_factory=dict)

    def blocked(self, peer: str) -> bool:
        until = self._until.get(peer)
        return until is not None and self.clock() < until

    def punish(self, peer: str) -> float:
        """Record an offence; returns how long the peer is now refused."""
        now = self.clock()
        if len(self._until) >= self.max_peers:
            self._forget_expired(now)
        until = self._until.get(peer, 0.0)
        strikes = self._strikes.get(peer, 0) + 1 if now < until + self.ceiling else 1
        seconds = min(self.ceiling, self.base * 2 ** (strikes - 1))
        self._strikes[peer] = strikes
        self._until[peer] = now + seconds
        return seconds

    def _forget_expired(self, now: float) -> None:
        for peer in [p for p, t in self._until.items() if t + self.ceiling <= now]:
            self._until.pop(peer, None)
            self._strikes.pop(peer, None)
        if len(self._until) >= self.max_peers:  # all fresh: forget the oldest half
            for peer in sorted(self._until, key=self._until.__getitem__)[: self.max_peers // 2]:
                self._until.pop(peer, None)
                self._strikes.pop(peer, None)
