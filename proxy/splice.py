"""Two transports joined by a pair of Protocols: bytes in on one side are written out on the other.

The hot path of the proxy. Per chunk it does one `transport.write` and one integer add:
asyncio Protocols instead of streams (1.5x on uvloop, ../shared/reference/perf-baselines.md).
Backpressure is the transports' own: when one side's write buffer passes its high-water
mark, its protocol gets `pause_writing` and stops reading the other side, and resumes it on
`resume_writing`, so memory per connection stays bounded by the two buffers whatever the
speeds of the two ends.

A side may start before its peer exists (the inbound side has accepted and authorized a
connection and is still dialling the app): what arrives meanwhile is held (reading paused)
and written once the peer is attached. Either transport may be a TCP/TLS transport or a
multiplexed stream (proxy/mux_transport.py) that behaves like one.

Half-close: an EOF is passed on as EOF where the other transport can write one (TCP,
mux streams); a TLS transport cannot, so the other side is closed after its buffer
drains. An error on one side aborts the other, so a reset travels as a reset.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["SpliceSide", "Traffic", "join", "set_nodelay", "sweep_idle", "Holding"]

_PENDING_LIMIT = 256 * 1024


class Traffic:
    """Byte and connection counts of one direction pair, plain integers on the hot path
    (a Prometheus counter costs a lock per increment); metrics.py reads them on scrape."""

    __slots__ = ("rx", "tx", "opened", "active", "closed")

    def __init__(self) -> None:
        self.rx = 0  # bytes from the downstream (accepted) side
        self.tx = 0  # bytes to the downstream side
        self.opened = 0
        self.active = 0
        self.closed = 0


def set_nodelay(transport: Any) -> None:
    """Small requests must not wait 40 ms for Nagle and delayed ACK (a pitfall measured in
    perf-baselines: asyncio skips NODELAY for sockets it did not create). uvloop sets it
    on every TCP socket itself, so its transports are left alone (two system calls saved
    per connection)."""
    if type(transport).__module__ == "uvloop.loop":
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class SpliceSide(asyncio.Protocol):
    """One end of a splice. `inbound` counts its received bytes as rx (the side facing the
    connection's initiator), the other end counts them as tx."""

    __slots__ = ("transport", "peer", "traffic", "tag", "breaker", "_is_downstream", "_pending", "_pending_size",
                 "_eof", "_closed", "_on_close", "_paused_for_peer", "_on_data", "_tls", "seen", "idle_sweeps")

    def __init__(self, traffic: Traffic, downstream: bool, on_close: Callable[[SpliceSide], None] | None = None) -> None:
        self.transport: Any = None
        self.peer: SpliceSide | None = None
        self.traffic = traffic
        self._is_downstream = downstream
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._eof = False
        self._closed = False
        self._on_close = on_close
        self._paused_for_peer = False
        self._on_data: Callable[[], None] | None = None
        self.tag: Any = None  # the owner's note (the outbound side keeps its instance here)
        self.breaker: Any = None  # the upstream's circuit breaker this connection is counted in
        self._tls = False  # a TLS transport closes after an EOF whatever we answer
        self.seen = False  # data arrived since the last idle sweep (one attribute store per chunk)
        self.idle_sweeps = 0

    # ---- wiring --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._tls = transport.get_extra_info("mux_stream_id") is None and \
            transport.get_extra_info("sslcontext") is not None
        set_nodelay(transport)

    def attach(self, peer: SpliceSide) -> None:
        """Start moving bytes to `peer`; flush what arrived before it existed."""
        self.peer = peer
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._pending_size = 0
            self._forward(data)
        if self._eof:
            self._pass_eof()
        if self._paused_for_peer and not self._closed:
            self._paused_for_peer = False
            self.transport.resume_reading()

    def on_first_data(self, callback: Callable[[], None]) -> None:
        """Called once when the first byte arrives (the outbound side uses it to learn that
        the remote app answered)."""
        self._on_data = callback

    # ---- protocol callbacks --------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.seen = True
        if self._on_data is not None:
            callback, self._on_data = self._on_data, None
            callback()
        peer = self.peer
        if peer is None:
            self._pending.append(data)
            self._pending_size += len(data)
            if not self._paused_for_peer:
                self._paused_for_peer = True
                self.transport.pause_reading()
            if self._pending_size > _PENDING_LIMIT:
                self.transport.abort()
            return
        self._forward(data)

    def _forward(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        if peer._closed:
            return
        peer.transport.write(data)
        if self._is_downstream:
            self.traffic.rx += len(data)
        else:
            self.traffic.tx += len(data)

    def eof_received(self) -> bool:
        self._eof = True
        if self.peer is not None:
            return self._pass_eof() and not self._tls
        return not self._tls  # keep it until the peer exists; attach() passes it on

    def _pass_eof(self) -> bool:
        peer = self.peer
        assert peer is not None
        if peer._closed:
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
            if peer._eof:  # both directions are done
                self.transport.close()
                peer.transport.close()
                return False
            return True
        peer.transport.close()  # flushes first
        return False

    def pause_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer._closed:
            peer.transport.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer
        if peer is not None and not peer._closed:
            peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed:
            return
        self._closed = True
        peer = self.peer
        if peer is not None and not peer._closed:
            if exc is not None:
                peer.transport.abort()
            else:
                peer.transport.close()
        if self._on_close is not None:
            self._on_close(self)

    def close(self) -> None:
        """Close this side (flushing); the peer follows through connection_lost."""
        if self.transport is not None and not self._closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.abort()

    @property
    def closed(self) -> bool:
        return self._closed


def join(downstream: SpliceSide, upstream: SpliceSide) -> None:
    """Connect two sides both ways; `downstream` faces the connection's initiator. A side
    that ended before the join (a stream reset right after it was accepted) ends the other."""
    upstream.attach(downstream)
    downstream.attach(upstream)
    if upstream.closed and not downstream.closed:
        downstream.close()
    elif downstream.closed and not upstream.closed:
        upstream.close()


class Holding(asyncio.Protocol):
    """Holds what a fresh TLS connection delivers until the proxy has decided what the
    connection is (a plain splice or a multiplexed session), then hands it over: the TLS
    layer may deliver the peer's first bytes in the same read as its last handshake
    message, before anyone has looked at the certificate."""

    def __init__(self) -> None:
        self.transport: Any = None
        self._data: list[bytes] = []
        self._size = 0
        self._eof = False
        self._lost: tuple[Exception | None] | None = None
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._data.append(data)
        self._size += len(data)
        if self._size > _PENDING_LIMIT and self.transport is not None:
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return False  # TLS: the transport closes after an EOF whatever we answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = (exc,)
        if not self.lost.done():
            self.lost.set_result(exc)

    def hand_over(self, transport: Any, protocol: asyncio.BaseProtocol) -> None:
        """Make `protocol` the connection's protocol and replay what was held."""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._data and isinstance(protocol, asyncio.Protocol):
            data = b"".join(self._data)
            self._data.clear()
            protocol.data_received(data)
        if self._size > _PENDING_LIMIT and not transport.is_closing():
            transport.resume_reading()
        if self._eof and isinstance(protocol, asyncio.Protocol) and not protocol.eof_received():
            transport.close()
        if self._lost is not None:
            protocol.connection_lost(self._lost[0])


def sweep_idle(sides: Iterable[SpliceSide], sweeps: int = 2) -> int:
    """Close spliced connections that moved no byte either way for `sweeps` calls in a row
    (called every idle_timeout/2: a connection idle for the timeout goes within half of it
    more). A per-connection timer would cost a timer reset per chunk; this costs one
    attribute store per chunk and one pass per sweep. Returns how many it closed."""
    closed = 0
    for side in list(sides):
        peer = side.peer
        if side.seen or (peer is not None and peer.seen):
            side.seen = False
            if peer is not None:
                peer.seen = False
            side.idle_sweeps = 0
            continue
        side.idle_sweeps += 1
        if side.idle_sweeps >= sweeps:
            side.close()
            closed += 1
    return closed
