"""The HTTP API's TCP listener: per-client connection cap, header deadline, and
prompt notice of clients that went away.

aiohttp's keep-alive timer (`limits.http_idle_timeout`) closes idle connections, but
nothing bounds a client that connects and sends half a header, and nothing caps how
many connections one address may hold: 300 such connections lasted for minutes and,
under a lower descriptor limit, stopped the agent answering. Each connection's
protocol is therefore wrapped:

- past `limits.http_max_conns_per_client` open connections from one address (Consul's
  limit, loopback included), a new one is closed at once;
- the first request's header must be complete (`\\r\\n\\r\\n` seen) within
  `limits.http_header_timeout` of connecting, or the connection is closed; later
  requests on a kept-alive connection fall under the idle timer, which aiohttp runs
  whenever no request is being handled;
- handlers can ask to be told when their client disconnects (`on_disconnect`), so a
  blocking query stops waiting as soon as nobody is left to answer.

The wrapper only watches bytes and forwards every protocol call to aiohttp's handler.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from aiohttp import web

from ..conn_limits import ConnLimiter
from ..logging import RateLimiter, get_logger, per_peer_limiter
from ..metrics import HTTP

__all__ = ["ListenerLimits", "HTTPServer", "serve", "on_disconnect"]

log = get_logger("http")

_HEADER_END = b"\r\n\r\n"


@dataclass
class ListenerLimits:
    max_conns_per_client: int = 200
    header_timeout: float = 10.0
    conns: ConnLimiter = field(init=False)
    throttle: RateLimiter = field(init=False, default_factory=per_peer_limiter)

    def __post_init__(self) -> None:
        self.conns = ConnLimiter(self.max_conns_per_client)

    def quiet(self, event: str, ip: str, **kw: object) -> None:
        """One warning per event and client address a minute: these come from the network."""
        if self.throttle.allow((event, ip)) is not None:
            log.warning(event, peer=ip, **kw)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's RequestHandler behind the listener's limits (see the module doc)."""

    def __init__(self, inner: asyncio.Protocol, limits: ListenerLimits) -> None:
        self._inner: asyncio.Protocol | None = inner
        self._limits = limits
        self._ip: str | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._lost: list[Callable[[], None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's classes
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self._limits.conns.acquire(ip):
            HTTP.rejected.labels("per_client_limit").inc()
            self._limits.quiet("http_conn_limit", ip, limit=self._limits.max_conns_per_client)
            self._inner = None
            transport.abort()
            return
        self._ip, self._transport = ip, transport
        HTTP.connections.inc()
        self._timer = asyncio.get_running_loop().call_later(self._limits.header_timeout, self._header_late)
        assert self._inner is not None
        self._inner.connection_made(transport)

    def _header_late(self) -> None:
        self._timer = None
        HTTP.rejected.labels("header_timeout").inc()
        self._limits.quiet("http_header_timeout", self._ip or "?", timeout=self._limits.header_timeout)
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._timer is not None:
            probe = self._tail + data
            if _HEADER_END in probe:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = probe[-(len(_HEADER_END) - 1):]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._ip is not None:
            self._limits.conns.release(self._ip)
            HTTP.connections.dec()
            self._ip = None
        callbacks, self._lost = self._lost, []
        for callback in callbacks:
            callback()
        if self._inner is not None:
            self._inner.connection_lost(exc)
        self._transport = None

    def watch(self, callback: Callable[[], None]) -> Callable[[], None]:
        if self._transport is None:
            callback()
            return lambda: None
        self._lost.append(callback)

        def unwatch() -> None:
            if callback in self._lost:
                self._lost.remove(callback)

        return unwatch


def on_disconnect(request: web.BaseRequest, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` once when the client of `request` disconnects (at once if it
    already has). Returns a function that cancels the watch; a no-op outside the
    guarded listener (aiohttp's test server)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        callback()
        return lambda: None
    protocol = transport.get_protocol()
    if isinstance(protocol, _GuardedProtocol):
        return protocol.watch(callback)
    return lambda: None


async def serve(runner: web.AppRunner, host: str, port: int, limits: ListenerLimits,
                ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = 5.0) -> asyncio.Server:
    """Listen on host:port for `runner`'s application behind `limits` (over TLS with
    `ssl_context`). The caller closes the returned server before cleaning the runner up.

    With TLS the handshake comes first and is bounded by `handshake_timeout`; aiohttp's
    protocol and the limits above see only connections that completed it. A failed or
    stalled handshake closes that connection alone, and asyncio reports it at debug
    level only (ssl.SSLError and the timeout are OSErrors), so a port scanner cannot
    fill the log."""
    factory = runner.server
    assert factory is not None, "runner.setup() first"
    loop = asyncio.get_running_loop()
    extra: dict[str, Any] = {"ssl": ssl_context, "ssl_handshake_timeout": handshake_timeout} if ssl_context else {}
    return await loop.create_server(lambda: _GuardedProtocol(factory(), limits), host, port, reuse_address=True,
                                    **extra)


class HTTPServer:
    """The agent's HTTP API: aiohttp's runner for `app` behind ListenerLimits, on one or
    more listeners (HTTP, HTTPS) sharing the application. The only place an aiohttp
    server is run (DESIGN.md principle 3)."""

    def __init__(self, app: web.Application, idle_timeout: float) -> None:
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0, keepalive_timeout=idle_timeout)
        self._servers: list[asyncio.Server] = []
        self._ready = False

    async def start(self, host: str, port: int, limits: ListenerLimits,
                    ssl_context: ssl.SSLContext | None = None, handshake_timeout: float = 5.0) -> int:
        """Bind and listen (call again for another listener); the port bound (port 0
        picks one). OSError when it cannot."""
        if not self._ready:
            await self._runner.setup()
            self._ready = True
        server = await serve(self._runner, host, port, limits, ssl_context, handshake_timeout)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop accepting, then let aiohttp finish in-flight requests (its shutdown timeout)."""
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        if self._ready:
            await self._runner.cleanup()
            self._ready = False
