"""The accepting side of an HTTP/1.1 connection: requests parsed by llhttp (httptools) at
the Protocol level, handled one at a time in order, answers written back.

Used for both listeners of an http sidecar: an app's connection to an upstream listener,
and a peer sidecar's stream (or TLS connection) on the public listener. Requests are
handed to the handler's `begin` one at a time, from the parser's callbacks, without a
task or a future in between (the handler calls `finished` when the answer is out);
requests arriving pipelined are queued and answered in order; a request's body is held until its turn
(reading pauses past a bound). Limits: the request line and headers together
`MAX_HEAD_BYTES`, at most `MAX_HEADERS` fields; a head that breaks them, or bytes the
parser refuses, get a 400/431 from the sidecar and the connection closes: they never
reach an app.

After a request that asks for an upgrade (WebSocket) the parser stops: if the handler
turns the connection into a tunnel (the app answered 101) the bytes already read go into
it; otherwise the connection closes after the answer.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

from ..splice import set_nodelay
from .hop import BadRequest, check_framing
from .message import Body, Request, simple_response

__all__ = ["HttpServerConn", "Begin", "MAX_HEAD_BYTES", "MAX_HEADERS", "HEAD_TIMEOUT", "KEEPALIVE_IDLE",
           "sweep_stalled"]

MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_QUEUED = 64  # pipelined requests waiting for their turn before reading pauses
HEAD_TIMEOUT = 60.0  # a request begun must be whole (head and kept body) within this long of its last byte
KEEPALIVE_IDLE = 3600.0  # an idle keep-alive connection closes after this long (Envoy's default)

Begin = Callable[["HttpServerConn", Request], None]  # must lead to conn.finished(request), once


class _HeadTooLarge(Exception):
    pass


class _BadFraming(Exception):
    pass


_FRAMING = (b"content-length", b"transfer-encoding")


def _check_framing(request: Request) -> None:
    """Framing llhttp lets through but a peer could read another way (hop.py): refused
    here, before the request is queued, so no handler waits for a body that never ends."""
    if any((len(n) == 14 or len(n) == 17) and n.lower() in _FRAMING for n, _ in request.headers):
        try:
            check_framing([(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers], request.version)
        except BadRequest as exc:
            raise _BadFraming(exc.reason) from None


def _expects_continue(request: Request) -> bool:
    for name, value in request.headers:
        if len(name) == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            request.expect_continue = True
            return True
    return False


class HttpServerConn(asyncio.Protocol):
    __slots__ = ("transport", "_begin", "_parser", "_current", "_head_bytes", "_queue", "_busy",
                 "closed", "_on_close", "_broken", "source", "_upgrade_tail", "_tunnel", "_peer", "last_active",
                 "_paused_for_queue", "tag", "_read_paused", "handled", "_writing_paused",
                 "draining", "loop")

    def __init__(self, begin: Begin, on_close: Callable[[HttpServerConn], None] | None = None,
                 peer: str = "") -> None:
        self.transport: Any = None
        self._begin = begin
        self._parser: Any = None
        self._current: Request | None = None
        self._head_bytes = 0
        self._queue: deque[Request] = deque()
        self._busy = False  # the handler has begun queue[0] and not finished it
        self.closed = False
        self._on_close = on_close
        self._broken: tuple[int, str] | None = None
        self.source: Any = None  # the transport a response body comes from (paused when we cannot write)
        self._writing_paused = False
        self._upgrade_tail: bytes | None = None
        self._tunnel: Any = None  # after a 101: the transport bytes go to
        self._peer = peer
        self.last_active = time.monotonic()
        self._paused_for_queue = False
        self._read_paused = False
        self.tag: Any = None
        self.handled = 0
        self.draining = False  # the proxy is stopping: close after the answer in progress
        self.loop: Any = None

    # ---- asyncio callbacks -------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        set_nodelay(transport)
        self._parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._tunnel is not None:
            self._tunnel.write(data)
            return
        if self._upgrade_tail is not None:  # waiting to learn whether the upgrade happens
            self._upgrade_tail += data
            self._pause_reading()
            return
        if self._broken is not None:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._upgrade_tail = data[offset:]
            self._pause_reading()
            self._dispatch()
        except _HeadTooLarge:
            self._refuse(431, "request header fields too large")
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadTooLarge):
                self._refuse(431, "request header fields too large")
            elif isinstance(exc.__context__, _BadFraming):
                self._refuse(400, f"bad request: {exc.__context__}")
            else:
                self._refuse(400, "malformed request")
        except httptools.HttpParserError:
            self._refuse(400, "malformed request")

    def eof_received(self) -> bool:
        if self._tunnel is not None:
            if self._tunnel.can_write_eof():
                self._tunnel.write_eof()
                return True
            self._tunnel.close()
            return False
        current = self._current
        if current is not None:  # the caller stopped in the middle of a request
            current.body.fail()
        if not self._queue:
            self.transport.close()
            return False
        return True  # finish answering what is queued, then close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._current is not None:
            self._current.body.fail()
        for request in self._queue:
            request.body.fail()
        tunnel = self._tunnel
        if tunnel is not None and not tunnel.is_closing():
            tunnel.abort() if exc is not None else tunnel.close()
        if self._on_close is not None:
            self._on_close(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.source is not None:
            self.source.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.source is not None:
            self.source.resume_reading()

    def attach_source(self, transport: Any) -> None:
        """The transport this connection's response body comes from: paused while we
        cannot write to the caller (at once, when we already cannot)."""
        self.source = transport
        if self._writing_paused and transport is not None:
            transport.pause_reading()

    def release_source(self) -> None:
        """The response ended: its connection goes back to a pool or away, and must not
        stay paused by us (a pooled connection that is not read answers nothing: the
        next request on it would time out)."""
        source, self.source = self.source, None
        if source is not None and self._writing_paused:
            source.resume_reading()

    # ---- parser callbacks ----------------------------------------------------------------------
    def on_message_begin(self) -> None:
        request = Request()
        request.started = time.monotonic()
        request.body = Body(self._pause_reading, self._resume_reading)
        self._current = request
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._head_bytes += len(url)
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge()
        current = self._current
        assert current is not None
        current.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        current = self._current
        assert current is not None
        if self._head_bytes > MAX_HEAD_BYTES or len(current.headers) >= MAX_HEADERS:
            raise _HeadTooLarge()
        current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self._current
        assert request is not None
        parser = self._parser
        request.method = parser.get_method().decode("ascii", "replace")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        _check_framing(request)
        self._queue.append(request)
        if len(self._queue) > MAX_QUEUED:
            self._paused_for_queue = True
            self._pause_reading()
        if not request.upgrade and _expects_continue(request):
            self._dispatch()  # it begins before its body: the caller waits for our 100 Continue

    def on_body(self, body: bytes) -> None:
        current = self._current
        assert current is not None
        current.body.feed(body)
        if current.body.kept is None and not self._busy:  # too long to keep: stream it now
            self._dispatch()

    def on_message_complete(self) -> None:
        current = self._current
        if current is not None:
            current.body.finish()
            self._current = None
            if not current.upgrade:  # an upgrade begins once the parser has stopped (data_received)
                self._dispatch()

    # ---- serving -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Begin the first queued request when nothing is in progress and it can start: its
        body is complete, or too long to keep, or the caller waits for `100 Continue`, or
        it asks for an upgrade."""
        if self._busy or self.closed or not self._queue:
            if not self._queue and self._broken is not None and not self._busy and not self.closed:
                self._answer_broken()
            return
        request = self._queue[0]
        body = request.body
        if request.upgrade and self._upgrade_tail is None:
            return  # not until the parser has stopped at it
        if not (body.done or body.kept is None or request.upgrade or _expects_continue(request)):
            return
        self._busy = True
        try:
            self._begin(self, request)
        except Exception:  # a handler bug must not leave the caller hanging
            if not self.closed:
                self.transport.abort()
            raise

    def finished(self, request: Request) -> None:
        """The handler's answer to `request` is out (or the connection is gone)."""
        if not self._busy or not self._queue or self._queue[0] is not request:
            return
        self._busy = False
        self._queue.popleft()
        self.handled += 1
        self.last_active = time.monotonic()
        if self._paused_for_queue and len(self._queue) <= MAX_QUEUED // 2:
            self._paused_for_queue = False
            self._resume_reading()
        if self.closed or self._tunnel is not None:
            return
        if not request.keep_alive or self._upgrade_tail is not None or self.draining:
            self.transport.close()
            return
        self._dispatch()

    def _answer_broken(self) -> None:
        assert self._broken is not None
        status, reason = self._broken
        self.transport.write(simple_response(status, reason, close=True))
        self.transport.close()

    def _refuse(self, status: int, reason: str) -> None:
        """Bytes the parser cannot take: answer once the requests before them are, then close."""
        self._broken = (status, reason)
        if self._current is not None:
            self._current.body.fail()
            self._current = None
        if not self._busy and not self._queue and not self.closed:
            self._answer_broken()
        # else: answered after the requests before it (finished -> _dispatch)

    # ---- for handlers ---------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()

    def become_tunnel(self, other: Any) -> bytes:
        """After a 101: from now on bytes from the caller go to `other` (a transport); returns
        what was read past the upgrade request, which the caller must send first."""
        self._tunnel = other
        tail = self._upgrade_tail or b""
        self._upgrade_tail = None
        self._resume_reading()
        return tail

    def _pause_reading(self) -> None:
        if not self._read_paused and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self.closed and not self._paused_for_queue:
            self._read_paused = False
            self.transport.resume_reading()

    @property
    def peer(self) -> str:
        """The caller's address as host:port (asked of the transport once, when first read)."""
        if not self._peer and self.transport is not None:
            name = self.transport.get_extra_info("peername")
            if isinstance(name, tuple) and len(name) >= 2:
                host, port = name[0], name[1]
                self._peer = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
            else:
                self._peer = "-"
        return "" if self._peer == "-" else self._peer

    def close_when_idle(self) -> None:
        """Stopping: an idle connection closes now, a busy one after its current answer
        (which says `Connection: close`)."""
        self.draining = True
        if self.idle and not self._busy and not self.closed:
            self.transport.close()

    @property
    def idle(self) -> bool:
        """Between requests: nothing queued, nothing half-read."""
        return not self._queue and self._current is None and self._tunnel is None


def sweep_stalled(conns: Any, now: float, keepalive_idle: float = KEEPALIVE_IDLE,
                  head_timeout: float = HEAD_TIMEOUT) -> int:
    """Close connections that hold a request which stopped arriving (a head or a body
    with no byte for `head_timeout`) or that sat idle between requests for
    `keepalive_idle` (`idle_timeout_ms` when set): every read has a timeout. Called
    every few seconds with the listeners' connections; returns how many it closed."""
    closed = 0
    for conn in list(conns):
        if conn.closed or conn._busy or conn._tunnel is not None:  # noqa: SLF001 - the module's own class
            continue
        quiet = now - conn.last_active
        stalled = conn._current is not None and quiet > head_timeout  # noqa: SLF001
        if stalled or (not conn._queue and quiet > keepalive_idle):  # noqa: SLF001
            conn.transport.close()
            closed += 1
    return closed
