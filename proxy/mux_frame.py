"""The yamux wire format (HashiCorp's spec, version 0) for `mux.py`: header, frame
encoding, and an incremental decoder. Pure: no asyncio, no sockets, no clocks.

A frame is a 12-byte big-endian header (version u8, type u8, flags u16, stream id u32,
length u32), followed for Data frames by `length` bytes of payload. For WindowUpdate the
length is a window delta, for Ping an opaque value echoed back, for GoAway an error code;
Ping and GoAway use stream 0. SYN, ACK, FIN and RST ride on Data or WindowUpdate frames.

Errors:
    MeshError
     └── MuxError
          ├── ProtocolError   the peer broke the framing or the flow control; the
          │                   session is over (mux.Session queues a GoAway)
          └── StreamError     a local call the stream's state does not allow
"""

from __future__ import annotations

import struct
from enum import IntEnum, IntFlag
from typing import NamedTuple

from mesh.catalog.errors import MeshError

__all__ = [
    "HEADER_SIZE", "INITIAL_WINDOW", "MAX_WINDOW", "VERSION", "Flag", "Frame", "FrameDecoder",
    "FrameType", "GoAwayCode", "MuxError", "ProtocolError", "StreamError", "encode_frame",
]

VERSION = 0
HEADER = struct.Struct(">BBHII")
HEADER_SIZE = HEADER.size
INITIAL_WINDOW = 256 * 1024  # the spec's initial window, each direction of each stream
MAX_WINDOW = 0xFFFFFFFF

# plain ints on the hot path (mux.py uses them too); the enums are the public spelling
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8
_DATA, _GO_AWAY, _pack = DATA, GO_AWAY, HEADER.pack


class FrameType(IntEnum):
    DATA = DATA
    WINDOW_UPDATE = WINDOW_UPDATE
    PING = PING
    GO_AWAY = GO_AWAY


class Flag(IntFlag):
    SYN = SYN
    ACK = ACK
    FIN = FIN
    RST = RST


class GoAwayCode(IntEnum):
    NORMAL = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class MuxError(MeshError):
    """Base of the multiplexer's errors."""


class ProtocolError(MuxError):
    """The peer broke the framing or the flow control; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamError(MuxError):
    """A local operation on a stream that is gone or closed for it."""


class Frame(NamedTuple):
    """One frame. `length` is the payload size for Data, else the frame's value."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes = b""


def encode_frame(frame: Frame) -> bytes:
    """The frame's bytes on the wire; ValueError when its fields cannot be encoded."""
    if frame.type == _DATA and len(frame.payload) != frame.length:
        raise ValueError("a Data frame's length is its payload's size")
    if frame.type != _DATA and frame.payload:
        raise ValueError("only Data frames carry a payload")
    try:
        return _pack(VERSION, frame.type, frame.flags, frame.stream_id, frame.length) + frame.payload
    except struct.error as exc:
        raise ValueError(str(exc)) from None


class FrameDecoder:
    """Incremental decoder: fed the connection's bytes in chunks of any size, returns the
    complete frames so far and keeps the rest. Rejects a bad version or type, and a Data
    frame longer than `max_frame`, as soon as its header is in.

    Frames come back as plain (type, flags, stream_id, length, payload) tuples, equal to
    the `Frame` of the same fields: building a NamedTuple per frame costs several times
    more on the hot path. Payloads are sliced from the chunk (one copy); only a frame
    that straddles chunks is reassembled in a buffer.
    """

    __slots__ = ("max_frame", "_buf")

    def __init__(self, max_frame: int = INITIAL_WINDOW) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        if type(data) is not bytes:
            data = bytes(data)
        frames: list[Frame] = []
        pos = self._complete(data, frames) if self._buf else 0
        if pos < 0:
            return frames
        unpack, append = HEADER.unpack_from, frames.append
        end, max_frame = len(data), self.max_frame
        while end - pos >= 12:
            version, ftype, flags, sid, length = unpack(data, pos)
            if version or ftype > _GO_AWAY or (not ftype and length > max_frame):
                self._reject(version, ftype, length)
            if ftype:
                append((ftype, flags, sid, length, b""))  # type: ignore[arg-type]
                pos += 12
                continue
            stop = pos + 12 + length
            if stop > end:
                break
            append((ftype, flags, sid, length, data[pos + 12:stop]))  # type: ignore[arg-type]
            pos = stop
        if pos < end:
            self._buf += memoryview(data)[pos:]
        return frames

    def _complete(self, data: bytes, frames: list[Frame]) -> int:
        """Finish the frame begun in an earlier chunk: how much of `data` it took, or -1
        when `data` did not finish it."""
        buf = self._buf
        used = 0
        if len(buf) < 12:
            used = 12 - len(buf)
            buf += data[:used]
            if len(buf) < 12:
                return -1
        version, ftype, flags, sid, length = HEADER.unpack_from(buf)
        if version or ftype > _GO_AWAY or (not ftype and length > self.max_frame):
            self._reject(version, ftype, length)
        payload = b""
        if ftype == _DATA:
            missing = 12 + length - len(buf)
            if missing > 0:
                buf += memoryview(data)[used:used + missing]
                if len(buf) < 12 + length:
                    return -1
                used += missing
            payload = bytes(memoryview(buf)[12:])
        frames.append((ftype, flags, sid, length, payload))  # type: ignore[arg-type]
        buf.clear()
        return used

    def _reject(self, version: int, ftype: int, length: int) -> None:
        if version != VERSION:
            raise ProtocolError(f"unsupported version {version}")
        if ftype > _GO_AWAY:
            raise ProtocolError(f"unknown frame type {ftype}")
        raise ProtocolError(f"data frame of {length} bytes exceeds the {self.max_frame} byte limit")
