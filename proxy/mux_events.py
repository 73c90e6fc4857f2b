"""What the pure mux `Session` (`mux.py`) hands to its glue (`mux_transport.py`): events
from `Session.receive` and `Session.set_output_blocked`, a stream's state, and its
flow-control counters. Plain values, no behaviour; events are small slotted dataclasses
because one is built per frame on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

__all__ = ["Data", "Event", "GoAwayReceived", "Pong", "StreamFinished", "StreamAccepted", "StreamOpened",
           "StreamReset", "StreamState", "StreamStats", "WindowOpened"]

class StreamState(IntEnum):
    """A live stream's state. Closed and reset streams are forgotten (state None)."""

    SYN_SENT = 0  # mux.py keeps these three as plain ints in its streams
    SYN_RECEIVED = 1
    ESTABLISHED = 2
    LOCAL_CLOSE = 3  # we sent (or queued) FIN
    REMOTE_CLOSE = 4  # the peer sent FIN
    CLOSING = 5  # both, our FIN still queued behind data the window does not allow yet


class StreamStats(NamedTuple):
    send_window: int  # bytes we may still send
    recv_window: int  # bytes the peer may still send
    unconsumed: int  # delivered to the app, not yet consumed
    uncredited: int  # consumed, not yet credited back to the peer
    buffered: int  # written by the app, waiting for window


@dataclass(slots=True)
class StreamOpened:
    """The peer opened a stream; the glue attaches it and calls `accept_stream`."""

    stream_id: int


@dataclass(slots=True)
class StreamAccepted:
    """The peer accepted a stream we opened (its ACK): whatever we send now reaches it."""

    stream_id: int


@dataclass(slots=True)
class Data:
    """Bytes for a stream, in order; the glue reports them with `consume` once taken."""

    stream_id: int
    data: bytes


@dataclass(slots=True)
class StreamFinished:
    """The peer sent FIN: after all its data, no more will come."""

    stream_id: int


@dataclass(slots=True)
class StreamReset:
    """The peer reset the stream; `refused` when it never accepted it (nothing reached
    its app, so the caller may retry elsewhere)."""

    stream_id: int
    refused: bool = False


@dataclass(slots=True)
class WindowOpened:
    """Queued data of the stream went out: its send buffer shrank."""

    stream_id: int


@dataclass(slots=True)
class GoAwayReceived:
    code: int


@dataclass(slots=True)
class Pong:
    opaque: int


Event = StreamOpened | StreamAccepted | Data | StreamFinished | StreamReset | WindowOpened | GoAwayReceived | Pong
