"""The public listener: mutual TLS, the caller's SPIFFE identity, intentions, then the local app.

Every accepted connection takes the configuration current at that moment: its TLS
context (so a new leaf or root applies to the next connection without restarting the
listener: the handshake is started per connection with `loop.start_tls`), its
intentions, its app address. The decision is made here, from the watched intentions, by
`mesh.catalog.authz` (the agent's own code): no HTTP call per connection, and decisions
go on while the agent is down. A denied connection is closed right after the handshake.

A caller that negotiated the multiplexing protocol by ALPN gets a `MuxConnection`: each
stream it opens is authorized against the intentions current when the stream opens, so an
intention change applies to new streams on old connections too.

The port faces the network: connections and handshakes in progress are capped, a
handshake must finish within `handshake_timeout_ms`, and a refusal is one rate-limited
log line and a metric.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mesh.ca import tls

from .config import ProxyConfig
from .metrics import ProxyMetrics
from .mux import ALPN
from .mux_transport import DEFER, MuxConnection
from .splice import Holding, SpliceSide, Traffic, join

if TYPE_CHECKING:
    from .http.exchange import InboundHttp

__all__ = ["InboundListener", "MAX_CONNECTIONS", "MAX_HANDSHAKES"]

MAX_CONNECTIONS = 16384
MAX_HANDSHAKES = 512

Refused = Callable[..., None]


def handshake_failure_reason(exc: BaseException) -> str:
    """A stable metric label for why a TLS handshake did not complete."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "bad_certificate"
    if isinstance(exc, ssl.SSLError):
        text = f"{exc.reason or ''} {exc}".lower()
        if "certificate" in text or "peer did not return" in text:
            return "no_or_bad_certificate"
        if "wrong version" in text or "http request" in text or "unknown protocol" in text or "record" in text:
            return "not_tls"
        if "version" in text or "protocol" in text:
            return "tls_version"
        return "tls_error"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "closed"
    return "error"


class InboundListener:
    def __init__(self, current: Callable[[], ProxyConfig], metrics: ProxyMetrics, refused: Refused,
                 http: InboundHttp | None = None) -> None:
        self._current = current
        self.http = http  # requests of an http service: parsed, authorized one by one
        self._metrics = metrics
        self._refused = refused
        self._socket: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections = 0
        self._handshakes = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._sides: set[SpliceSide] = set()  # plain TLS connections
        self._stream_sides: set[SpliceSide] = set()  # streams of multiplexed ones
        self._mux: set[MuxConnection] = set()
        self._http_streams = 0  # http connections carried by streams of pooled connections
        self.traffic: Traffic = metrics.traffic_for("inbound", "")
        metrics.mux_sources["inbound"] = lambda: (len(self._mux), sum(m.active_streams for m in self._mux))

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and accept. Sockets are accepted here and each gets its TLS handshake from
        `connect_accepted_socket` with the context current at that moment: a TLS server
        made by create_server would fix one context for the listener's life and swallow
        handshake errors (they are OSErrors, logged at debug), which we count by reason."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(sock), name="inbound-accept")
        name = sock.getsockname()
        return name[0], name[1]

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: do not spin
                self._metrics.refused.labels("inbound", "accept_failed").inc()
                self._refused("inbound_accept_failed", error=exc.strerror or str(exc))
                await asyncio.sleep(0.1)
                continue
            self.accepted(conn)

    async def stop_accepting(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    @property
    def active(self) -> int:
        return self._connections

    def spliced(self) -> list[SpliceSide]:
        """The downstream side of every connection and stream moving bytes now."""
        return [*self._sides, *self._stream_sides]

    def close_all(self) -> None:
        for side in list(self._sides):
            side.abort()
        for conn in list(self._mux):
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if self.http is not None:
            self.http.close_all()

    # ---- per connection ------------------------------------------------------------------
    def _over_limit(self) -> bool:
        """Consul's MaxInboundConnections (service-defaults), counting streams of pooled
        connections as the connections they stand for."""
        limit = self._current().registration.max_inbound_connections
        return bool(limit) and self.traffic.active + self._http_streams >= limit

    def accepted(self, conn: socket.socket) -> None:
        if self._connections >= MAX_CONNECTIONS or self._handshakes >= MAX_HANDSHAKES or self._over_limit():
            self._metrics.refused.labels("inbound", "too_many_connections").inc()
            conn.close()
            return
        self._connections += 1
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _released(self, _: Any = None) -> None:
        self._connections -= 1
        self.traffic.active -= 1
        self.traffic.closed += 1

    async def _serve(self, conn: socket.socket) -> None:
        config = self._current()
        try:
            host, port = conn.getpeername()[:2]
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except (OSError, ValueError):
            peer = "?"
        holding = Holding()
        started = time.perf_counter()
        self._handshakes += 1
        try:
            tls_transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: holding, conn, ssl=config.server_context,
                ssl_handshake_timeout=config.registration.handshake_timeout or None)
        except (OSError, ssl.SSLError, TimeoutError, EOFError) as exc:
            self._connections -= 1
            reason = handshake_failure_reason(exc)
            self._metrics.handshake_failures.labels("inbound", reason).inc()
            if reason != "closed":  # a TCP health check connects and closes: not worth a line
                self._refused("inbound_handshake_failed", reason=reason, peer=str(peer), error=str(exc)[:200])
            conn.close()
            return
        except asyncio.CancelledError:
            self._connections -= 1
            conn.close()
            raise
        finally:
            self._handshakes -= 1
        self._metrics.handshake_seconds.labels("inbound").observe(time.perf_counter() - started)
        ssl_object = tls_transport.get_extra_info("ssl_object")
        try:
            caller = tls.peer_service_id(ssl_object.getpeercert(binary_form=True))
            tls.check_client_identity(caller, config.trust_domain)
        except tls.PeerRejected as exc:
            self._connections -= 1
            self._metrics.handshake_failures.labels("inbound", exc.reason).inc()
            self._refused("inbound_identity_refused", reason=exc.reason, peer=str(peer), error=str(exc))
            tls_transport.abort()
            return
        if ssl_object.selected_alpn_protocol() == ALPN:
            self._serve_mux(tls_transport, holding, caller.service, str(peer))
            return
        if self.http is not None and config.registration.protocol == "http":
            self.traffic.opened += 1
            self.traffic.active += 1
            holding.hand_over(tls_transport, self.http.connection(caller.service, str(peer), self._released))
            return
        self.traffic.opened += 1
        self.traffic.active += 1
        decision = config.authorize(caller.service)
        self._metrics.authz.labels("allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            self._refused("inbound_denied", source=caller.service, destination=config.registration.service,
                          reason=decision.reason, peer=str(peer))
            tls_transport.close()
            self._released()
            return
        downstream = SpliceSide(self.traffic, downstream=True, on_close=self._side_closed)
        self._sides.add(downstream)
        holding.hand_over(tls_transport, downstream)
        app = await self._dial_app(config)
        if app is None:
            downstream.abort()
            return
        join(downstream, app)

    def _side_closed(self, side: SpliceSide) -> None:
        if side in self._sides:
            self._sides.discard(side)
            self._released()

    async def _dial_app(self, config: ProxyConfig) -> SpliceSide | None:
        reg = config.registration
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(reg.local_connect_timeout or None):
                _, app = await loop.create_connection(lambda: SpliceSide(self.traffic, downstream=False),
                                                      reg.local_address, reg.local_port)
        except (OSError, TimeoutError) as exc:
            self._metrics.refused.labels("inbound", "app_unreachable").inc()
            self._refused("local_app_unreachable", app=f"{reg.local_address}:{reg.local_port}",
                          error=str(exc) or type(exc).__name__)
            return None
        return app

    # ---- multiplexed callers -------------------------------------------------------------
    def _serve_mux(self, tls_transport: Any, holding: Holding, caller: str, peer: str) -> None:
        def on_stream(stream: Any) -> object:
            task = asyncio.get_running_loop().create_task(self._serve_stream(stream, caller, peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return DEFER

        def on_lost(conn: MuxConnection) -> None:
            if conn in self._mux:
                self._mux.discard(conn)
                self._metrics.streams_per_connection.observe(conn.streams_opened)
                self._connections -= 1

        conn = MuxConnection(client=False, on_stream=on_stream, on_close=on_lost)
        self._mux.add(conn)
        holding.hand_over(tls_transport, conn)

    async def _serve_stream(self, stream: Any, caller: str, peer: str) -> None:
        """One stream: authorized and connected to the app before it is accepted, so the
        caller learns of a refusal (a reset before the accept) while nothing has reached
        any app and can try another instance."""
        config = self._current()
        if self.http is not None and config.registration.protocol == "http":
            if self._over_limit():
                self._metrics.refused.labels("inbound", "max_inbound_connections").inc()
                stream.refuse()
                return
            self._http_streams += 1
            stream.accept(self.http.connection(caller, peer, self._http_stream_closed))  # authorized per request
            return
        if self._over_limit():  # streams of pooled connections count as the connections they stand for
            self._metrics.refused.labels("inbound", "max_inbound_connections").inc()
            stream.refuse()
            return
        decision = config.authorize(caller)
        self._metrics.authz.labels("allow" if decision.allowed else "deny").inc()
        if not decision.allowed:
            self._refused("inbound_denied", source=caller, destination=config.registration.service,
                          reason=decision.reason, peer=peer)
            # accepted, then reset: a denial is an answer, not a broken instance, so the
            # caller neither retries elsewhere (intentions are the same everywhere) nor
            # counts it towards setting this instance aside
            stream.accept(asyncio.Protocol())
            stream.abort()
            return
        app = await self._dial_app(config)
        if app is None:
            stream.refuse()
            return
        self.traffic.opened += 1
        self.traffic.active += 1
        downstream = SpliceSide(self.traffic, downstream=True, on_close=self._stream_closed)
        self._stream_sides.add(downstream)
        stream.accept(downstream)
        join(downstream, app)

    def _http_stream_closed(self, _: object) -> None:
        self._http_streams -= 1

    def _stream_closed(self, side: SpliceSide) -> None:
        self._stream_sides.discard(side)
        self.traffic.active -= 1
        self.traffic.closed += 1
