"""MuxStream: one stream of a multiplexed mutual-TLS connection (`mux_transport.py`), as
an asyncio Transport for the protocol attached to it.

Why a Transport: the splice written for TCP transports works unchanged on a stream:
write/write_eof/close/abort, pause_reading/resume_reading, pause_writing/resume_writing
with water marks, connection_lost on reset or when the TLS connection drops.

Backpressure: bytes are reported consumed to the session only after the protocol took
them, and never while its reading is paused (they wait here, at most one window), so
the peer's window closes and its writer stops. Writes beyond the send window queue in
the session; the protocol gets pause_writing above the high-water mark.

Errors the protocol can see in connection_lost (each a MuxError and an OSError):
StreamResetError (the peer reset it), StreamRefusedError (the peer refused it before its
app saw anything: safe to retry elsewhere), MuxClosedError (the connection under it ended).

Affinity: event loop thread only; protocol callbacks that raise cost their stream (RST
and the loop's exception handler), never the connection.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.proxy.mux import ACCEPT_BACKLOG, MAX_STREAMS
from mesh.proxy.mux_frame import MuxError, StreamError

if TYPE_CHECKING:
    from mesh.proxy.mux_transport import MuxConnection

__all__ = ["MuxClosedError", "MuxLimits", "MuxStream", "StreamRefusedError", "StreamResetError"]


class StreamResetError(MuxError, ConnectionResetError):
    """The peer reset the stream."""


class StreamRefusedError(MuxError, ConnectionRefusedError):
    """The peer refused the stream (limits, going away, no handler); nothing reached its
    app, so the caller may retry on another connection or instance."""


class MuxClosedError(MuxError, ConnectionResetError):
    """The multiplexed connection ended under the stream."""


@dataclass(frozen=True, slots=True)
class MuxLimits:
    """Bounds and timers of one connection (defaults are the sidecar's)."""

    max_streams: int = MAX_STREAMS
    accept_backlog: int = ACCEPT_BACKLOG
    stream_high_water: int = 64 * 1024  # a stream's queued bytes before pause_writing
    transport_high_water: int = 256 * 1024  # TLS write buffer before stream data waits
    write_batch: int = 64 * 1024  # data waiting for the end of the loop iteration: flush now
    max_transport_buffer: int = 16 * 1024 * 1024  # beyond: the peer does not read; abort
    keepalive_interval: float | None = 30.0  # ping when nothing was received for this long
    keepalive_timeout: float = 10.0  # ... and give up when still nothing after this
    fin_timeout: float = 30.0  # after close() and our FIN, wait this long for the peer's


_DELEGATED = frozenset({"peername", "sockname", "sslcontext", "ssl_object", "peercert", "cipher",
                        "compression"})


class MuxStream(asyncio.Transport):
    """One stream, as an asyncio Transport for the protocol attached to it."""

    __slots__ = ("id", "_conn", "_session", "_loop", "_protocol", "_high", "_low",
                 "_write_paused", "_read_paused", "_pending", "_pending_eof", "_eof_written",
                 "_closing", "_done", "_linger", "_accepted", "_established", "_deferred")

    def __init__(self, conn: MuxConnection, sid: int) -> None:
        super().__init__()
        self.id = sid
        self._conn = conn
        self._session = conn._session
        self._loop = conn._loop
        self._protocol: asyncio.BaseProtocol | None = None
        self._high = conn.limits.stream_high_water
        self._low = self._high // 4
        self._write_paused = False
        self._read_paused = False
        self._pending: collections.deque[bytes] = collections.deque()  # read while paused
        self._pending_eof = False
        self._eof_written = False
        self._closing = False
        self._done = False
        self._linger: asyncio.TimerHandle | None = None
        self._accepted = False  # (opened here) the peer acknowledged it
        self._established: asyncio.Future[None] | None = None
        self._deferred = False  # (opened by the peer) waiting for accept() or refuse()

    # -- asyncio.Transport ---------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "mux_stream_id":
            return self.id
        if name in _DELEGATED and self._conn._transport is not None:
            return self._conn._transport.get_extra_info(name, default)
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol  # type: ignore[return-value]

    def is_closing(self) -> bool:
        return self._closing

    def is_reading(self) -> bool:
        return not self._read_paused and not self._closing

    def pause_reading(self) -> None:
        """Stop delivering and stop crediting the peer: its writer stops at the window."""
        if not self._closing:
            self._read_paused = True

    def resume_reading(self) -> None:
        if self._read_paused:
            self._read_paused = False
            if self._pending or self._pending_eof:
                self._loop.call_soon(self._drain)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def get_write_buffer_size(self) -> int:
        return self._session.buffered(self.id)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return  # like asyncio's transports, writes after close are dropped
        if self._eof_written:
            raise RuntimeError("write() after write_eof()")
        session = self._session
        try:
            queued = session.send_data(self.id, data)
        except StreamError:
            return  # reset by the peer; its StreamReset is later in the batch being handled
        if session.output_size >= self._conn.limits.write_batch:
            self._conn._flush()  # bulk: no use waiting, and the transport may pause us now
        else:
            self._conn._want_flush()
        if queued > self._high and not self._write_paused:
            self._write_paused = True
            self._callback("pause_writing")

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """FIN after the queued data: the peer's protocol gets eof_received."""
        if self._closing or self._eof_written:
            return
        self._eof_written = True
        self._send_fin()
        self._check_done()

    def close(self) -> None:
        """FIN after the queued data; connection_lost(None) once the peer's FIN is in.
        Unread data, or data arriving later, resets the stream instead (as TCP does)."""
        if self._closing:
            return
        self._closing = True
        if self._pending:
            self._reset()
            return
        if not self._eof_written:
            self._eof_written = True
            self._send_fin()
        self._check_done()
        self._start_linger()

    def abort(self) -> None:
        """RST: queued data dropped, the peer's protocol gets StreamResetError."""
        if not self._done:
            self._closing = True
            self._reset()

    # -- deciding later (server side) and learning the decision (client side) -------------

    def accept(self, protocol: asyncio.BaseProtocol) -> None:
        """Acknowledge a stream whose on_stream returned DEFER and attach `protocol`;
        data that arrived meanwhile is delivered after connection_made."""
        if not self._deferred or self._done:
            return
        self._deferred = False
        self._session.accept_stream(self.id)
        self._protocol = protocol
        self._conn._want_flush()
        try:
            protocol.connection_made(self)
        except Exception as exc:
            self._fatal(exc, "connection_made")
            return
        self.resume_reading()

    def refuse(self) -> None:
        """Refuse a deferred stream: the peer gets StreamRefusedError (a reset before the
        acknowledgement), which tells it nothing reached any app."""
        if self._deferred and not self._done:
            self._deferred = False
            self._closing = True
            self._reset()

    def established(self) -> asyncio.Future[None]:
        """(A stream we opened) resolves when the peer accepts it; fails with
        StreamRefusedError when the peer refused it, or why it was lost."""
        if self._established is None:
            self._established = self._loop.create_future()
            if self._accepted:
                self._established.set_result(None)
            elif self._done:
                self._established.set_exception(MuxClosedError(f"stream {self.id} is closed"))
        return self._established

    def _defer(self) -> None:
        self._deferred = True
        self._read_paused = True

    def _on_accepted(self) -> None:
        self._accepted = True
        if self._established is not None and not self._established.done():
            self._established.set_result(None)

    # -- called by MuxConnection ----------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._closing:
            if not self._done:
                self._reset()  # closed by us: nobody reads, as a closed socket would
        elif self._read_paused or self._pending:
            self._pending.append(data)
        else:
            self._hand(data)

    def _on_finished(self) -> None:
        if self._closing:
            self._check_done()
        elif self._read_paused or self._pending:
            self._pending_eof = True
        else:
            self._deliver_eof()

    def _on_window_opened(self) -> None:
        if self._done:
            return
        if self._write_paused and self._session.buffered(self.id) <= self._low:
            self._write_paused = False
            self._callback("resume_writing")
        if self._eof_written:
            self._check_done()
            self._start_linger()

    def _lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._finish(exc)

    # -- internals -------------------------------------------------------------------------

    def _hand(self, data: bytes) -> None:
        try:
            self._protocol.data_received(data)  # type: ignore[union-attr]
        except Exception as exc:  # a broken protocol loses its stream, not the connection
            self._fatal(exc, "data_received")
            return
        self._session.consume(self.id, len(data))

    def _drain(self) -> None:
        while self._pending and not self._read_paused and not self._closing:
            self._hand(self._pending.popleft())
        if self._pending_eof and not self._pending and not self._read_paused and not self._closing:
            self._deliver_eof()
        self._conn._want_flush()

    def _deliver_eof(self) -> None:
        self._pending_eof = False
        try:
            keep_open = self._protocol.eof_received()  # type: ignore[union-attr]
        except Exception as exc:
            self._fatal(exc, "eof_received")
            return
        if keep_open:
            self._check_done()
        else:
            self.close()

    def _callback(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception as exc:
            self._fatal(exc, name)

    def _fatal(self, exc: Exception, what: str) -> None:
        self._loop.call_exception_handler({
            "message": f"mux stream {self.id}: protocol {what}() failed", "exception": exc,
            "transport": self, "protocol": self._protocol})
        self.abort()

    def _reset(self) -> None:
        self._session.reset_stream(self.id)
        self._conn._want_flush()
        self._finish(None)

    def _send_fin(self) -> None:
        try:
            self._session.send_fin(self.id)
        except StreamError:
            return  # reset by the peer, as in write()
        self._conn._want_flush()

    def _check_done(self) -> None:
        """Finish cleanly once the session forgot the stream after both FINs. While the
        connection handles a batch of events the session is ahead of them (a RST later
        in the batch already made it forget the stream), so the check waits for the
        batch's end, when such a stream has had its StreamReset."""
        if self._done:
            return
        if self._conn._batching:
            self._conn._check_later.append(self)
        elif not self._session.has_stream(self.id):
            self._finish(None)

    def _start_linger(self) -> None:
        """FIN_WAIT_2 with a bound: the peer's FIN must follow ours within fin_timeout."""
        if self._closing and not self._done and self._linger is None \
                and not self._session.buffered(self.id):
            self._linger = self._loop.call_later(self._conn.limits.fin_timeout, self.abort)

    def _finish(self, exc: Exception | None) -> None:
        if self._done:
            return
        self._done = self._closing = True
        self._pending.clear()
        if self._linger is not None:
            self._linger.cancel()
        self._conn._stream_done(self)
        if self._established is not None and not self._established.done():
            self._established.set_exception(exc or MuxClosedError(f"stream {self.id} ended before it was accepted"))
        if self._protocol is not None:
            self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)  # type: ignore[union-attr]
        except Exception as err:
            self._loop.call_exception_handler({
                "message": f"mux stream {self.id}: protocol connection_lost() failed",
                "exception": err, "transport": self, "protocol": self._protocol})
