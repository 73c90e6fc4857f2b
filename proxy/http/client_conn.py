"""The dialling side of an HTTP/1.1 connection: one request at a time out, its response
parsed by llhttp (httptools) and handed to whoever sent it, piece by piece.

Carried by a plain TCP connection to the local app, or by a stream (or TLS connection)
to a peer sidecar. After a complete response that allows it the connection goes back to
its pool for the next request. A HEAD request's response has no body whatever its
Content-Length says; llhttp cannot be told, so the parser is replaced after its head.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import httptools

from ..splice import set_nodelay

__all__ = ["HttpClientConn", "ResponseSink", "ResponseHead", "MAX_RESPONSE_HEAD_BYTES"]

MAX_RESPONSE_HEAD_BYTES = 64 * 1024


class ResponseHead:
    __slots__ = ("status", "reason", "headers", "keep_alive", "upgrade")

    def __init__(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool,
                 upgrade: bool) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.keep_alive = keep_alive
        self.upgrade = upgrade


class ResponseSink(Protocol):
    def flush(self) -> None: ...  # after each read: write out what it brought
    def response_head(self, head: ResponseHead) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_done(self) -> None: ...
    def response_failed(self, reason: str) -> None: ...


class _StopParsing(Exception):
    pass


_FRAMING = (b"content-length", b"transfer-encoding")


class HttpClientConn(asyncio.Protocol):
    __slots__ = ("transport", "_parser", "_sink", "_method", "_status_reason", "_headers", "_head_bytes",
                 "closed", "on_idle", "on_lost", "idle_since", "key", "_sent", "_interim", "used",
                 "_upgraded", "tunnel_peer", "generation", "_replace_parser", "_pending_tunnel",
                 "_until_close", "dead", "_framed", "_writing_paused")

    def __init__(self, key: str = "", generation: int = 0) -> None:
        self.transport: Any = None
        self._parser: Any = None
        self._sink: ResponseSink | None = None
        self._writing_paused = False  # our transport's buffer is full: the request's source is paused
        self._method = ""
        self._status_reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self.closed = False
        self.on_idle: Callable[[HttpClientConn], None] | None = None
        self.on_lost: Callable[[HttpClientConn], None] | None = None
        self.idle_since = time.monotonic()
        self.key = key
        self.generation = generation
        self._sent = False
        self._interim = False
        self.used = 0  # requests carried
        self._upgraded = False
        self.tunnel_peer: Any = None  # after a 101: the caller's transport
        self._replace_parser = False
        self._pending_tunnel = b""
        self._until_close = False  # the response in progress ends when the connection does
        self.dead = False  # aborted by us: never back to a pool, whatever the parser still says
        self._framed = False  # the response in progress has Content-Length or Transfer-Encoding

    # ---- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        set_nodelay(transport)
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel_peer is not None:
            self.tunnel_peer.write(data)
            return
        sink = self._sink
        if sink is None:  # bytes nobody asked for: the connection is unusable
            self.transport.abort()
            return
        try:
            self._parser.feed_data(data)
            sink.flush()
        except httptools.HttpParserUpgrade as exc:
            offset = exc.args[0] if exc.args else len(data)
            self._upgraded = True
            self._pending_tunnel = data[offset:]
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _StopParsing):
                return
            self._fail("bad_response")
        except httptools.HttpParserError:
            self._fail("bad_response")

    def eof_received(self) -> bool:
        if self.tunnel_peer is not None:
            if self.tunnel_peer.can_write_eof():
                self.tunnel_peer.write_eof()
                return True
            self.tunnel_peer.close()
            return False
        self._end_by_close()
        return False

    def _end_by_close(self) -> None:
        """A response without Content-Length or chunking ends with its connection (llhttp
        would need its finish call, which httptools does not offer)."""
        if self._sink is not None and self._until_close:
            self._until_close = False
            sink, self._sink = self._sink, None
            sink.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self.tunnel_peer is not None and not self.tunnel_peer.is_closing():
            self.tunnel_peer.abort() if exc is not None else self.tunnel_peer.close()
        if exc is None:
            self._end_by_close()
        if self._sink is not None:
            self._fail("reset")
        if self.on_lost is not None:
            self.on_lost(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        sink = self._sink
        source = getattr(sink, "request_source", None)
        if source is not None:
            source.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        sink = self._sink
        source = getattr(sink, "request_source", None)
        if source is not None:
            source.resume_reading()

    def _release(self, sink: ResponseSink | None) -> None:
        """A response ended while we held its request's source paused (the app answered
        before it read the whole body): resume it, or the caller's connection would stay
        unread for good."""
        if self._writing_paused and sink is not None:
            source = getattr(sink, "request_source", None)
            if source is not None:
                source.resume_reading()

    # ---- parser callbacks ------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._head_bytes = 0
        self._status_reason = b""
        self._framed = False

    def on_status(self, status: bytes) -> None:
        self._status_reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD_BYTES:
            raise ValueError("response head too large")
        self._headers.append((name, value))
        if (len(name) == 14 or len(name) == 17) and name.lower() in _FRAMING:
            self._framed = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        sink = self._sink
        if sink is None:
            return
        head = ResponseHead(status, self._status_reason, self._headers, parser.should_keep_alive(),
                            status == 101)
        self._interim = 100 <= status < 200 and status != 101
        self._until_close = not self._framed and not self._interim and status not in (101, 204, 304) and \
            self._method != "HEAD"
        sink.response_head(head)
        if self._method == "HEAD" and not self._interim:
            # no body follows, whatever the headers say: finish here, new parser next time
            self._replace_parser = True
            self._complete(head.keep_alive)
            raise _StopParsing()

    def on_body(self, body: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink.response_body(body)

    def on_message_complete(self) -> None:
        if self._interim:  # a 100 Continue: the real response follows
            self._interim = False
            return
        if self._upgraded or self._status_is_101():
            sink, self._sink = self._sink, None
            if sink is not None:
                sink.response_done()
            return
        self._complete(self._parser.should_keep_alive())

    def _status_is_101(self) -> bool:
        try:
            return self._parser.get_status_code() == 101
        except Exception:
            return False

    # ---- for the exchange -------------------------------------------------------------------------
    def send(self, head: bytes, method: str, sink: ResponseSink) -> None:
        """Start a request: `head` now, body through `write`; the response goes to `sink`."""
        if self._replace_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._replace_parser = False
        self._sink = sink
        self._method = method
        self.used += 1
        self.transport.write(head)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def _complete(self, keep_alive: bool) -> None:
        self._until_close = False
        sink, self._sink = self._sink, None
        self._release(sink)
        if sink is not None:
            sink.response_done()
        if keep_alive and not self.closed and not self.dead:
            self.idle_since = time.monotonic()
            if self.on_idle is not None:
                self.on_idle(self)
        else:
            self.close()

    def _fail(self, reason: str) -> None:
        sink, self._sink = self._sink, None
        self._release(sink)
        self.dead = True
        if not self.closed:
            self.transport.abort()
        if sink is not None:
            sink.response_failed(reason)

    def take_tunnel_tail(self) -> bytes:
        """Bytes the app sent right after its 101, to be passed on first."""
        tail, self._pending_tunnel = self._pending_tunnel, b""
        return tail

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        sink, self._sink = self._sink, None
        self._release(sink)
        self.dead = True
        if not self.closed and self.transport is not None:
            self.transport.abort()

    @property
    def busy(self) -> bool:
        return self._sink is not None
