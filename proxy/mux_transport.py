"""MuxConnection: the asyncio Protocol that runs a `mux.Session` on an established
mutual-TLS transport and carries many MuxStreams (`mux_stream.py`) on it.

Why: a new app connection between two sidecars then costs one frame on a pooled
connection instead of a TLS handshake. The client side opens streams with
`open_stream(protocol_factory)` (no round trip: data may follow the SYN at once); the
server side gets `on_stream(stream)` per stream the peer opens and returns the protocol
to attach (None refuses the stream, which the peer sees as StreamRefusedError).

Batching: stream writes and credits made during one loop iteration go out in one TLS
write (a `call_soon` flush), at once when `write_batch` bytes of data are waiting;
everything one received chunk causes, in one write at its end. When the TLS transport's
buffer passes its high-water mark the session stops framing stream data (their writers
get paused by their own water marks); on resume the streams' queues go out in turns of
about the high-water mark. A buffer past `max_transport_buffer` while paused means a
peer that makes us answer without reading: the connection is aborted.

For a pool: `usable` (not going away, below max streams), `idle_since` (loop time since
when no stream is open), `active_streams`, `streams_opened`; `go_away()` drains and
closes once the last stream ends; `on_close(conn)` is called when the connection ends.

Keepalive: when nothing was received for `keepalive_interval`, a ping; when nothing is
received within `keepalive_timeout` after it, the connection is aborted.

Affinity: event loop thread only. No tasks: timers are loop handles, cancelled with the
connection. MuxConnection sits on a transport made by loop.create_connection or
create_server with ssl=...; a protocol that checked ALPN (`mux_negotiated`) may hand its
transport over with transport.set_protocol(conn) and conn.connection_made(transport).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mesh.proxy.mux import ALPN, Session
from mesh.proxy.mux_events import (
    Data,
    GoAwayReceived,
    Pong,
    StreamAccepted,
    StreamFinished,
    StreamOpened,
    StreamReset,
    WindowOpened,
)
from mesh.proxy.mux_frame import GoAwayCode, MuxError, ProtocolError
from mesh.proxy.mux_stream import (
    MuxClosedError,
    MuxLimits,
    MuxStream,
    StreamRefusedError,
    StreamResetError,
)

__all__ = ["DEFER", "MuxConnection", "StreamHandler", "mux_negotiated"]

# returned by on_stream: the handler decides later, with stream.accept(protocol) or
# stream.refuse(); until then the stream is neither acknowledged nor read (its data waits
# in the stream, within its window), so a refusal reaches the peer as a refusal before
# anything reached any app and the peer may retry elsewhere.
DEFER = object()

StreamHandler = Callable[[MuxStream], asyncio.BaseProtocol | object | None]


def mux_negotiated(transport: asyncio.BaseTransport) -> bool:
    """Whether the TLS handshake on `transport` chose our multiplexing (ALPN)."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == ALPN


class MuxConnection(asyncio.Protocol):
    """One multiplexed connection; `client` decides the stream id parity (spec)."""

    def __init__(self, *, client: bool, on_stream: StreamHandler | None = None,
                 limits: MuxLimits | None = None,
                 on_close: Callable[[MuxConnection], None] | None = None) -> None:
        self.client = client
        self.limits = limits = limits or MuxLimits()
        self.last_rtt: float | None = None
        self._session = Session(client=client, max_streams=limits.max_streams,
                                accept_backlog=limits.accept_backlog)
        self._on_stream = on_stream
        self._on_close = on_close
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # connection_made
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, MuxStream] = {}
        self._batching = False  # handling events: flush once at the end (and see _check_later)
        self._check_later: list[MuxStream] = []
        self._flush_pending = False
        self._closing = False  # no more writes to the transport
        self._error: Exception | None = None  # why we ended it, for the streams
        self._idle_since = 0.0
        self._heard = False  # something was received since the last keepalive tick
        self._keepalive_ping = False  # a keepalive ping is waiting for any answer
        self._keepalive: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._next_ping = 0
        self._closed: asyncio.Future[None] | None = None

    # -- for the pool and for metrics -----------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether a new stream may be opened here now."""
        return (self._transport is not None and not self._closing
                and self._session.open_refusal() is None)

    @property
    def idle_since(self) -> float | None:
        """Loop time since when no stream is open; None while some are."""
        return None if self._streams else self._idle_since

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    @property
    def streams_opened(self) -> int:
        """Streams opened in both directions since the connection began."""
        return self._session.streams_opened

    @property
    def streams_refused(self) -> int:
        """Streams the peer tried to open beyond our limits."""
        return self._session.streams_refused

    # -- opening streams and ending the connection ---------------------------------------

    def open_stream(self, protocol_factory: Callable[[], asyncio.BaseProtocol]) -> MuxStream:
        """A new stream with the factory's protocol attached (connection_made called).
        MuxClosedError when the connection is not `usable`."""
        if self._transport is None or self._closing:
            raise MuxClosedError("the connection is closed")
        reason = self._session.open_refusal()
        if reason is not None:
            raise MuxClosedError(f"cannot open a stream: {reason}")
        stream = MuxStream(self, self._session.open_stream())
        self._streams[stream.id] = stream
        try:
            protocol = protocol_factory()
            stream._protocol = protocol
            protocol.connection_made(stream)
        except BaseException:
            stream._protocol = None
            stream.abort()  # its SYN never left: forgotten without a frame
            raise
        self._want_flush()  # the SYN goes out even when the app has nothing to say first
        return stream

    def ping(self) -> asyncio.Future[float]:
        """The round-trip time to the peer, in seconds."""
        if self._transport is None or self._closing:
            raise MuxClosedError("the connection is closed")
        self._next_ping = opaque = self._next_ping % 0xFFFFFFFF + 1  # never 0 (keepalive)
        future = self._loop.create_future()
        self._pings[opaque] = (self._loop.time(), future)
        self._session.ping(opaque)
        self._want_flush()
        return future

    def go_away(self) -> None:
        """Refuse new streams (both ways) and close once the open ones have ended."""
        if self._transport is None or self._closing:
            return
        self._session.go_away(GoAwayCode.NORMAL)
        self._want_flush()
        if not self._streams:
            self.close()

    def close(self) -> None:
        """GoAway, then close the TLS connection: open streams get MuxClosedError."""
        if self._transport is None or self._closing:
            return
        self._session.go_away(GoAwayCode.NORMAL)
        self._flush()
        self._closing = True
        self._transport.close()

    def abort(self, exc: Exception | None = None) -> None:
        """Drop the TLS connection now; streams get MuxClosedError (cause: exc)."""
        if self._transport is None:
            return
        if self._error is None:
            self._error = exc
        self._closing = True
        self._transport.abort()

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._idle_since = self._loop.time()
        transport.set_write_buffer_limits(high=self.limits.transport_high_water)
        if self.limits.keepalive_interval:
            self._keepalive = self._loop.call_later(self.limits.keepalive_interval,
                                                    self._keepalive_tick)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        self._batching = True
        try:
            self._dispatch(self._session.receive(data))
        except ProtocolError as exc:
            self._error = exc
            self._flush()  # the GoAway(protocol error) the session queued
            self._closing = True
            self._transport.close()  # type: ignore[union-attr]
        finally:
            self._end_batch()

    def eof_received(self) -> bool:
        return False  # TLS has no half-close: the connection ends, every stream with it

    def pause_writing(self) -> None:
        self._write_paused = True
        self._session.set_output_blocked(True)

    def resume_writing(self) -> None:
        self._write_paused = False
        self._batching = True
        try:
            self._dispatch(self._session.set_output_blocked(False,
                                                            self.limits.transport_high_water))
        finally:
            self._end_batch()
        if not self._write_paused and not self._closing and self._session.sendable():
            self._loop.call_soon(self.resume_writing)  # the next share, after others ran

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        cause = self._error or exc
        reason = f"the mux connection ended: {cause}" if cause else "the mux connection ended"
        for stream in list(self._streams.values()):
            error = MuxClosedError(reason)
            error.__cause__ = cause
            stream._lost(error)
        for _, future in self._pings.values():
            if not future.done():
                future.set_exception(MuxClosedError(reason))
        self._pings.clear()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    # -- internals ---------------------------------------------------------------------------

    def _dispatch(self, events: list) -> None:
        streams = self._streams
        for event in events:
            kind = type(event)
            if kind is Data:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_data(event.data)
            elif kind is StreamOpened:
                self._accept(event.stream_id)
            elif kind is StreamAccepted:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_accepted()
            elif kind is WindowOpened:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_window_opened()
            elif kind is StreamFinished:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._on_finished()
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    error = StreamRefusedError if event.refused else StreamResetError
                    stream._lost(error(f"stream {event.stream_id} was "
                                       f"{'refused' if event.refused else 'reset'} by the peer"))
            elif kind is GoAwayReceived:
                self._on_go_away(event.code)
            elif kind is Pong:
                self._on_pong(event.opaque)

    def _end_batch(self) -> None:
        self._batching = False
        while self._check_later:
            self._check_later.pop()._check_done()
        self._flush()

    def _accept(self, sid: int) -> None:
        stream = MuxStream(self, sid)
        protocol = None
        if self._on_stream is not None and not self._closing:
            try:
                protocol = self._on_stream(stream)
            except Exception as exc:
                self._loop.call_exception_handler({
                    "message": "mux on_stream() failed", "exception": exc, "protocol": self})
        if protocol is None:
            self._session.reset_stream(sid)  # no ACK yet: the peer sees a refusal
            return
        self._streams[sid] = stream
        if protocol is DEFER:
            stream._defer()
            return
        self._session.accept_stream(sid)
        stream._protocol = protocol  # type: ignore[assignment]
        try:
            protocol.connection_made(stream)  # type: ignore[union-attr]
        except Exception as exc:
            stream._fatal(exc, "connection_made")

    def _stream_done(self, stream: MuxStream) -> None:
        if self._streams.pop(stream.id, None) is not None and not self._streams:
            self._idle_since = self._loop.time()
            session = self._session
            if session.local_go_away is not None or session.remote_go_away is not None:
                self._loop.call_soon(self.close)  # drained: after this batch is flushed

    def _on_go_away(self, code: int) -> None:
        if code != GoAwayCode.NORMAL:
            self.abort(MuxError(f"the peer went away with error code {code}"))
        elif not self._streams:
            self.close()

    def _on_pong(self, opaque: int) -> None:
        entry = self._pings.pop(opaque, None)
        if entry is not None:
            sent, future = entry
            self.last_rtt = self._loop.time() - sent
            if not future.done():
                future.set_result(self.last_rtt)

    def _keepalive_tick(self) -> None:
        """Every keepalive_interval: fine when something came in since the last tick;
        else a ping, and when nothing comes in keepalive_timeout after it, abort."""
        limits = self.limits
        if self._heard:
            self._heard = self._keepalive_ping = False
            delay = limits.keepalive_interval or 0.0
        elif not self._keepalive_ping:
            self._session.ping(0)  # opaque 0: keepalive; ping() never uses 0
            self._want_flush()
            self._keepalive_ping = True
            delay = limits.keepalive_timeout
        else:
            self.abort(MuxError(f"keepalive: nothing received for "
                                f"{limits.keepalive_timeout:g} s after a ping"))
            return
        self._keepalive = self._loop.call_later(delay, self._keepalive_tick)

    def _want_flush(self) -> None:
        if not self._flush_pending and not self._batching:
            self._flush_pending = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        if self._closing:
            return
        data = self._session.data_to_send()
        if data:
            transport = self._transport
            transport.write(data)  # type: ignore[union-attr]
            # only control frames are written while paused; a pile of them means a peer
            # that makes us answer without reading the answers
            if self._write_paused:
                size = transport.get_write_buffer_size()  # type: ignore[union-attr]
                if size > self.limits.max_transport_buffer:
                    self.abort(MuxError(f"the peer does not read: {size} bytes buffered"))
