"""Upstream listeners: a plain TCP port per upstream on loopback, each connection carried to a
healthy instance's sidecar over mutual TLS.

For every accepted connection: the upstream's plan (plan.py) picks the resolver (a
splitter draws per connection) and the first of its targets with a healthy instance
(failover in order), the target's balancer picks an instance from the configuration
current at that moment, and the upstream's circuit breaker counts it (over
`max_connections` it is closed at once); the connection rides a new stream on a pooled, multiplexed mTLS
connection to that instance's sidecar (no handshake per app connection), or a TLS
connection of its own when that sidecar does not speak the multiplexing protocol (another
Connect implementation), resumed from a cached TLS session where possible. The server's
certificate must carry the destination service's SPIFFE identity.

A failed dial, a refused handshake, or (on a stream) a reset before the peer sidecar
accepted it (it could not reach its app, or the intentions deny us) tries another
instance, at most `MAX_ATTEMPTS` in all: nothing has reached any app yet, so the retry is
safe. The balancer sets aside an instance that keeps failing.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from mesh.ca import tls

from .config import ProxyConfig, UpstreamSpec
from .endpoint import Endpoint
from .http.client_conn import HttpClientConn
from .inbound import handshake_failure_reason
from .metrics import ProxyMetrics
from .mux import ALPN
from .mux_stream import MuxClosedError, StreamRefusedError, StreamResetError
from .mux_transport import MuxConnection
from .plan import SplitterPlan
from .splice import Holding, SpliceSide, Traffic, join

PlainHandOver = Callable[[Holding, Any], None]  # gives a peer without mux its TLS connection

__all__ = ["UpstreamListener", "Dialer", "DialError", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 3
MAX_CONNECTIONS_PER_UPSTREAM = 16384
POOL_IDLE_SECONDS = 90.0
NO_MUX_REMEMBER_SECONDS = 300.0


class DialError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sni_for(endpoint: Endpoint, trust_domain: str, datacenter: str) -> str:
    """The SNI Envoy sidecars route on (consul.md §6.5 interop note); we send it so that a
    Consul/Envoy sidecar accepts us, and it keys our TLS session cache."""
    return f"{endpoint.service}.default.{endpoint.datacenter or datacenter}.internal.{trust_domain}"


class Dialer:
    """Connections from this proxy to other sidecars: a pool of multiplexed mTLS
    connections per instance, and plain mTLS connections for peers without mux."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics
        self._pool: dict[str, list[tuple[int, MuxConnection]]] = {}  # endpoint key -> (ctx generation, conn)
        self._dialing: dict[tuple[str, int], asyncio.Future[MuxConnection | None]] = {}
        self._no_mux_until: dict[str, float] = {}
        metrics.mux_sources["outbound"] = self.mux_counts

    def mux_counts(self) -> tuple[int, int]:
        conns = [c for entries in self._pool.values() for _, c in entries]
        return len(conns), sum(c.active_streams for c in conns)

    def close(self) -> None:
        for entries in self._pool.values():
            for _, conn in entries:
                conn.go_away()
        self._pool.clear()

    def _pooled(self, key: str, generation: int) -> MuxConnection | None:
        entries = self._pool.get(key)
        if not entries:
            return None
        for gen, conn in list(entries):
            if not conn.usable:
                entries.remove((gen, conn))
                continue
            if gen == generation:
                return conn
            if conn.active_streams == 0:  # made with an older leaf or roots: retire it
                entries.remove((gen, conn))
                conn.go_away()
        return None

    async def open(self, endpoint: Endpoint, config: ProxyConfig, timeout: float, side: SpliceSide) -> None:
        """Connect `side` (the app's connection) to `endpoint`'s sidecar; DialError when
        nothing reached the peer's app."""

        def plain(holding: Holding, transport: Any) -> None:
            upstream = SpliceSide(side.traffic, downstream=False)
            holding.hand_over(transport, upstream)
            join(side, upstream)

        async with asyncio.timeout(timeout or None):
            conn = self._pooled(endpoint.key, config.generation)
            if conn is None and self._no_mux_until.get(endpoint.key, 0) < time.monotonic():
                conn = await self._shared_dial(endpoint, config, plain)
                if conn is None:  # the peer has no mux: `side` got its own TLS connection
                    return
            elif conn is None:
                await self._dial(endpoint, config, plain)
                return
            upstream = SpliceSide(side.traffic, downstream=False)
            try:
                stream = conn.open_stream(lambda: upstream)
                await stream.established()
            except StreamRefusedError as exc:
                raise DialError("refused_by_peer", f"{endpoint.key} refused the stream: {exc}") from None
            except MuxClosedError as exc:
                raise DialError("connection_lost", f"{endpoint.key}: {exc}") from None
            except StreamResetError:
                # accepted and reset at once: the peer's answer (an intention denies us),
                # not a broken instance: no retry elsewhere, nothing counted against it
                side.abort()
                return
            join(side, upstream)

    async def open_http(self, endpoint: Endpoint, config: ProxyConfig, timeout: float) -> HttpClientConn:
        """A new HTTP/1.1 connection to `endpoint`'s sidecar: a stream on a pooled mux
        connection, or a TLS connection of its own for a peer without mux."""
        proto = HttpClientConn(endpoint.key, config.generation)

        def plain(holding: Holding, transport: Any) -> None:
            holding.hand_over(transport, proto)

        async with asyncio.timeout(timeout or None):
            conn = self._pooled(endpoint.key, config.generation)
            if conn is None and self._no_mux_until.get(endpoint.key, 0) < time.monotonic():
                conn = await self._shared_dial(endpoint, config, plain)
                if conn is None:
                    return proto
            elif conn is None:
                await self._dial(endpoint, config, plain)
                return proto
            try:
                stream = conn.open_stream(lambda: proto)
                await stream.established()
            except StreamRefusedError as exc:
                raise DialError("refused_by_peer", f"{endpoint.key} refused the stream: {exc}") from None
            except (MuxClosedError, StreamResetError) as exc:
                raise DialError("connection_lost", f"{endpoint.key}: {exc}") from None
        return proto

    async def _shared_dial(self, endpoint: Endpoint, config: ProxyConfig, plain: PlainHandOver) -> MuxConnection | None:
        """One dial per instance at a time: connections opening while it is in flight wait
        for it and share the pooled connection."""
        key = (endpoint.key, config.generation)
        pending = self._dialing.get(key)
        if pending is not None:
            conn = await asyncio.shield(pending)
            if conn is not None:
                return conn
            await self._dial(endpoint, config, plain)
            return None
        future: asyncio.Future[MuxConnection | None] = asyncio.get_running_loop().create_future()
        self._dialing[key] = future
        try:
            conn = await self._dial(endpoint, config, plain)
            future.set_result(conn)
            return conn
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise their own copy
            raise
        finally:
            del self._dialing[key]

    async def _dial(self, endpoint: Endpoint, config: ProxyConfig, plain: PlainHandOver) -> MuxConnection | None:
        """A new mTLS connection: returns the pooled MuxConnection when the peer speaks
        mux, else hands the TLS connection over by `plain` and returns None."""
        loop = asyncio.get_running_loop()
        holding = Holding()
        started = time.perf_counter()
        try:
            transport, _ = await loop.create_connection(
                lambda: holding, endpoint.address, endpoint.port, ssl=config.client_context,
                server_hostname=config.client_context.dial_hostname(
                    endpoint.key, sni=sni_for(endpoint, config.trust_domain, config.datacenter)),
                ssl_handshake_timeout=config.registration.handshake_timeout or None)
        except (OSError, ssl.SSLError, EOFError) as exc:
            reason = handshake_failure_reason(exc) if isinstance(exc, ssl.SSLError) else "connect_failed"
            raise DialError(reason, f"{endpoint.key}: {exc or type(exc).__name__}") from None
        self._metrics.handshake_seconds.labels("outbound").observe(time.perf_counter() - started)
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            peer = tls.peer_service_id(ssl_object.getpeercert(binary_form=True))
            tls.check_server_identity(peer, endpoint.service, endpoint.datacenter or None, config.trust_domain)
        except tls.PeerRejected as exc:
            transport.abort()
            raise DialError(exc.reason, f"{endpoint.key}: {exc}") from None
        if ssl_object.selected_alpn_protocol() == ALPN:
            def on_lost(lost: MuxConnection) -> None:
                entries = self._pool.get(endpoint.key, [])
                if (config.generation, lost) in entries:
                    entries.remove((config.generation, lost))
                self._metrics.streams_per_connection.observe(lost.streams_opened)

            conn = MuxConnection(client=True, on_close=on_lost)
            holding.hand_over(transport, conn)
            self._pool.setdefault(endpoint.key, []).append((config.generation, conn))
            return conn
        self._no_mux_until[endpoint.key] = time.monotonic() + NO_MUX_REMEMBER_SECONDS
        plain(holding, transport)
        return None

    def prune_idle(self) -> None:
        """Pooled connections without streams for a while are closed (called periodically)."""
        now = time.monotonic()
        for key, entries in list(self._pool.items()):
            for gen, conn in list(entries):
                if conn.active_streams == 0 and now - conn.idle_since > POOL_IDLE_SECONDS:
                    entries.remove((gen, conn))
                    conn.go_away()
            if not entries:
                del self._pool[key]


class UpstreamListener:
    """The local listener of one upstream."""

    def __init__(self, spec: UpstreamSpec, current: Callable[[], ProxyConfig], dialer: Dialer,
                 metrics: ProxyMetrics, refused: Callable[..., None], owner: Any,
                 http: Callable[[UpstreamListener], Any] | None = None) -> None:
        self.spec = spec
        self.http = http(self) if http is not None else None  # requests when spec.protocol is http
        self._current = current
        self._dialer = dialer
        self._metrics = metrics
        self._refused = refused
        self.owner = owner  # the Proxy: balancer_for, breaker_for, traffic
        self.traffic: Traffic = metrics.traffic_for("outbound", spec.destination_name)
        self._server: asyncio.Server | None = None
        self._sides: set[SpliceSide] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, self.spec.bind_address, self.spec.bind_port,
                                                backlog=1024)
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    @property
    def active(self) -> int:
        return len(self._sides) + (len(self.http.conns) if self.http is not None else 0)

    def spliced(self) -> list[SpliceSide]:
        return list(self._sides)

    def close_all(self) -> None:
        for side in list(self._sides):
            side.abort()
        if self.http is not None:
            self.http.close_all()

    def _accept(self) -> asyncio.Protocol:
        if self.http is not None and self.spec.protocol == "http":
            return self.http.connection()
        return _AppSide(self)

    def _connected(self, side: SpliceSide) -> None:
        if len(self._sides) >= MAX_CONNECTIONS_PER_UPSTREAM:
            self._metrics.refused.labels("outbound", "too_many_connections").inc()
            side.abort()
            return
        breaker = self.owner.breaker_for(self.spec)
        if breaker is not None and not breaker.open_connection():
            self.owner.traffic.overloaded(self.spec.destination_name, "connections")
            self._metrics.refused.labels("outbound", "overloaded").inc()
            side.abort()
            return
        side.breaker = breaker
        self._sides.add(side)
        self.traffic.opened += 1
        self.traffic.active += 1
        task = asyncio.get_running_loop().create_task(self._connect(side))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _closed(self, side: SpliceSide) -> None:
        if side in self._sides:
            self._sides.discard(side)
            self.traffic.active -= 1
            self.traffic.closed += 1
            if side.breaker is not None:
                side.breaker.close_connection()
            if side.tag is not None:
                balancer, key = side.tag
                balancer.finished(key)

    def _resolver(self, config: ProxyConfig) -> tuple[Any, str]:
        """The resolver this connection goes to: the chain's start, or the split a
        weighted draw picks (tcp splits per connection)."""
        plan = config.plans.get(self.spec.key)
        step = plan.start if plan is not None else None
        if isinstance(step, SplitterPlan):
            step = step.choose(random.random()).resolver
        return step, ""

    async def _connect(self, side: SpliceSide) -> None:
        config = self._current()
        name = self.spec.destination_name
        resolver, _ = self._resolver(config)
        if resolver is None:
            self._refused("upstream_unavailable", upstream=name, reason="no_plan")
            side.abort()
            return
        target, endpoints = resolver.targets[0], ()
        for candidate in resolver.targets:
            endpoints = config.endpoints.get(candidate.id, ())
            if endpoints:
                target = candidate
                break
        balancer = self.owner.balancer_for(self.spec, resolver, target)
        breaker = side.breaker
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            if side.closed:
                return
            now = time.monotonic()
            endpoint = balancer.pick(endpoints, now, tried)
            if endpoint is None:
                break
            tried.add(endpoint.key)
            if breaker is not None and not breaker.start_pending():
                self.owner.traffic.overloaded(name, "pending")
                side.abort()
                return
            try:
                await self._dialer.open(endpoint, config, self.spec.connect_timeout or target.connect_timeout, side)
            except (DialError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, DialError) else "timeout"
                self._metrics.dial_failures.labels(name, reason).inc()
                if balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                self._refused("upstream_dial_failed", upstream=name, instance=endpoint.key, reason=reason,
                              error=str(exc))
                continue
            finally:
                if breaker is not None:
                    breaker.end_pending()
            balancer.succeeded(endpoint.key, time.monotonic())
            self.owner.traffic.request(name, target.id, target is not resolver.targets[0])
            if side.closed:
                return
            balancer.started(endpoint.key)
            side.tag = (balancer, endpoint.key)
            return
        reason = "no_healthy_instances" if not endpoints else "all_attempts_failed"
        self._metrics.refused.labels("outbound", reason).inc()
        self._refused("upstream_unavailable", upstream=name, reason=reason, tried=len(tried))
        side.abort()


class _AppSide(SpliceSide):
    """An app's connection to an upstream listener."""

    def __init__(self, listener: UpstreamListener) -> None:
        super().__init__(listener.traffic, downstream=True, on_close=listener._closed)
        self._listener = listener

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._listener._connected(self)
