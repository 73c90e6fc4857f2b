"""The two request handlers of an http sidecar.

Inbound (the public listener): a peer sidecar's request is authorized by the L7
intentions (403 when denied: the next request on the same connection goes on), carries
the caller's trace on, and goes to the local app over a pooled keep-alive connection,
bounded by `local_request_timeout_ms` (504).

Outbound (an upstream listener): the app's request is matched against the upstream's
service-router, sent to a healthy instance of the route's service over a pooled stream
to its sidecar, and retried as the route says (a fresh instance where there is one,
within the retry budget, idempotent methods only unless nothing reached an app); the
route's RequestTimeout covers the whole request, retries included (504).

Both write one access log record per request when access logs are on and count it per
route. Decisions (normalization, permissions, routes, retries, tracing) are the pure
functions of `policy`; this module only moves messages and keeps time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..balancer import Balancer
from ..outbound import MAX_ATTEMPTS, Dialer, DialError
from . import policy
from .client_conn import HttpClientConn
from .forward import Attempt, ConnPool, end_to_end, forward_request_head, send_body
from .message import Request, simple_response
from .permissions import DENIED_BODY, DENIED_STATUS
from .retry import IDEMPOTENT_METHODS
from .server_conn import HttpServerConn
from .stats import HttpStats
from .tracing import FinishedSpan

__all__ = ["InboundHttp", "OutboundHttp", "Observer", "POOL_IDLE_SECONDS"]

POOL_IDLE_SECONDS = 60.0
APP_KEY = "app"


class _Exchange:
    """What one request became, for the access log, the span and the metrics."""

    __slots__ = ("status", "retries", "upstream_host", "authz", "authz_reason", "route", "trace", "bytes_in",
                 "bytes_out", "failure", "flags")

    def __init__(self) -> None:
        self.status = 0
        self.retries = 0
        self.upstream_host = ""
        self.authz = "allow"
        self.authz_reason = ""
        self.route = "default"
        self.trace: Any = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.failure = ""
        self.flags = ""  # Envoy's response flags: UF (connect failure), UT (timeout), UC (reset), ...

    @property
    def trace_id(self) -> str:
        return self.trace.trace_id if self.trace is not None else ""


async def _settled_body(request: Request) -> bool:
    """Whether the body can be sent again: complete and small enough to keep. A caller that
    waits for `100 Continue` sends nothing before it, so such a body is streamed."""
    body = request.body
    if body.done:
        return body.replayable and not body.failed
    if request.expect_continue:
        return False
    await body.settle()
    return body.replayable and not body.failed


def _answer(down: HttpServerConn, request: Request, ex: _Exchange, status: int, text: str,
            extra: list[tuple[bytes, bytes]] | None = None) -> None:
    request.body.discard()
    ex.status = status
    if status == 400:  # what follows a request we could not read is not to be trusted
        request.keep_alive = False
    close = not request.keep_alive
    down.write(simple_response(status, text, extra, close=close))


async def _run_attempt(down: HttpServerConn, request: Request, conn: HttpClientConn, head: bytes, replay: bool,
                       deadline: float | None) -> Attempt:
    attempt = Attempt(down, request, conn)
    conn.send(head, request.method, attempt)
    send_body(request, conn, replay)
    if deadline is not None:
        attempt.deadline_at(_loop_time(down.loop, deadline))
    await attempt.wait_head()
    return attempt


def _loop_time(loop: Any, monotonic_deadline: float) -> float:
    return loop.time() + (monotonic_deadline - time.monotonic())


async def _stream_response(down: HttpServerConn, request: Request, attempt: Attempt, deadline: float | None,
                           edit: Any = None, idle: float | None = None) -> bool:
    """Send the response on; False when it could not be finished (timeout or reset).
    `idle`: the route's IdleTimeout, the longest the response may go without a byte."""
    head = attempt.head
    assert head is not None
    attempt.commit(None, edit)
    if head.status == 101 and request.upgrade:
        attempt.finish()  # no deadline for the tunnel's life
        _tunnel(down, attempt.conn)
        return True
    try:
        if not attempt.done:
            if idle is None:
                await attempt.wait_done()  # the deadline timer set by _run_attempt still runs
            else:
                await _wait_with_idle(attempt, deadline, idle)
    except TimeoutError:
        attempt.failure = "timeout"
        attempt.conn.abort()
    finally:
        attempt.finish()
    if attempt.failure:
        down.abort()  # the head went out: the caller can only learn by the reset
        return False
    return True


async def _wait_with_idle(attempt: Attempt, deadline: float | None, idle: float) -> None:
    """Until the response ends; TimeoutError after `idle` seconds without a byte of it
    (the deadline is the attempt's own timer)."""
    while not attempt.done:
        seen = attempt.bytes_out
        try:
            async with asyncio.timeout(idle):
                await asyncio.shield(attempt.wait_done())
        except TimeoutError:
            if attempt.bytes_out == seen and not attempt.done:
                raise


def _tunnel(down: HttpServerConn, conn: HttpClientConn) -> None:
    """After a 101 both connections carry raw bytes to each other until one closes."""
    conn.tunnel_peer = down.transport
    tail = down.become_tunnel(conn.transport)
    if tail:
        conn.write(tail)
    early = conn.take_tunnel_tail()
    if early:
        down.write(early)


class Observer:
    """Access log, span and metrics of finished requests, shared by both directions."""

    def __init__(self, stats: HttpStats, access: Callable[[], Any], spans: Any) -> None:
        self.stats = stats
        self.access = access  # the AccessLog when on (read per request: the registration may change)
        self.spans = spans

    def finished(self, direction: str, config: Any, request: Request, ex: _Exchange, stats: Any, *, source: str,
                 destination: str, peer: str) -> None:
        now = time.monotonic()
        stats.observe(ex.status, now - request.started)
        ex.bytes_in = request.body.size
        access = self.access()
        if access is not None:
            access.record(direction, request, ex, request.started, source=source, destination=destination, peer=peer)
        trace = ex.trace
        if trace is not None and trace.exporting and trace.ctx.sampled and self.spans is not None:
            endpoint = policy.tracing_config(config).otlp_endpoint or ""
            wall_ns = time.time_ns()
            self.spans.add(endpoint, FinishedSpan(
                ctx=trace.ctx, name=f"{request.method} {destination}", kind="SERVER" if direction == "inbound" else "CLIENT",
                start_ns=wall_ns - int((now - request.started) * 1e9), end_ns=wall_ns, method=request.method,
                path=request.target.decode("latin-1").partition("?")[0], status_code=ex.status,
                server_address=ex.upstream_host), config.registration.service)


class InboundHttp:
    """Requests arriving on the public listener, to the local app."""

    def __init__(self, current: Callable[[], Any], observer: Observer, refused: Callable[..., None]) -> None:
        self._current = current
        self._observer = observer
        self._refused = refused
        self.pool = ConnPool()
        self.conns: set[HttpServerConn] = set()

    def connection(self, caller: str, peer: str,
                   on_close: Callable[[HttpServerConn], None] | None = None) -> HttpServerConn:
        def closed(conn: HttpServerConn) -> None:
            self.conns.discard(conn)
            if on_close is not None:
                on_close(conn)

        conn = HttpServerConn(self._handle, on_close=closed, peer=peer)
        conn.tag = caller
        self.conns.add(conn)
        return conn

    async def _dial_app(self, config: Any) -> HttpClientConn:
        reg = config.registration
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(reg.local_connect_timeout or None):
            _, conn = await loop.create_connection(lambda: HttpClientConn(APP_KEY), reg.local_address,
                                                   reg.local_port)
        self.pool.adopt(conn)
        return conn

    async def _handle(self, down: HttpServerConn, request: Request) -> None:
        config = self._current()
        reg = config.registration
        ex = _Exchange()
        stats = self._observer.stats.route("inbound", "", "default")
        try:
            await self._serve(down, request, config, ex, stats)
        finally:
            self._observer.finished("inbound", config, request, ex, stats, source=down.tag, destination=reg.service,
                                    peer=down.peer)

    async def _serve(self, down: HttpServerConn, request: Request, config: Any, ex: _Exchange, stats: Any) -> None:
        reg = config.registration
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            _answer(down, request, ex, 400, f"bad request: {exc}")
            return
        decision = policy.authorize(config, down.tag, parsed)
        ex.authz, ex.authz_reason = decision.authz, decision.reason
        if not decision.allowed:
            stats.denied += 1
            ex.flags = "RBAC"
            _answer(down, request, ex, DENIED_STATUS, DENIED_BODY)
            return
        ex.trace = policy.trace(config, request)
        deadline = request.started + reg.local_request_timeout if reg.local_request_timeout else None
        replay = await _settled_body(request)
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        headers = policy.with_trace_headers(headers, ex.trace)
        head = forward_request_head(request, parsed.target, headers, _length(request, replay))
        ex.upstream_host = f"{reg.local_address}:{reg.local_port}"
        for fresh in (False, True):
            conn = None if fresh else self.pool.get(APP_KEY)
            if conn is None:
                try:
                    conn = await self._dial_app(config)
                except (OSError, TimeoutError) as exc:
                    self._refused("local_app_unreachable", app=ex.upstream_host, error=str(exc) or type(exc).__name__)
                    ex.failure, ex.flags = "app_unreachable", "UF"
                    _answer(down, request, ex, 503, "upstream connect error: the local app is not reachable")
                    return
                fresh = True
            attempt = await _run_attempt(down, request, conn, head, replay, deadline)
            if attempt.head is not None:
                break
            if attempt.failure == "timeout":
                stats.timeouts += 1
                ex.flags = "UT"
                _answer(down, request, ex, 504, "upstream request timeout")
                return
            # a kept-alive connection the app closed as we used it: once more on a new one,
            # when the request can be sent again and may be repeated
            if fresh or not replay or request.method not in IDEMPOTENT_METHODS:
                ex.failure, ex.flags = attempt.failure, "UC"
                _answer(down, request, ex, 502, "upstream reset before the response")
                return
        assert attempt.head is not None
        ex.status = attempt.head.status
        if not await _stream_response(down, request, attempt, deadline):
            ex.failure = attempt.failure or "timeout"
            if ex.failure == "timeout":
                stats.timeouts += 1
                ex.flags = "UT"
        ex.bytes_out = attempt.bytes_out

    def drain(self) -> None:
        for conn in list(self.conns):
            conn.close_when_idle()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
        self.pool.close_all()


def _length(request: Request, replay: bool) -> int | None:
    """The body length to state: known when kept whole; none when there is no body;
    None (chunked) while it is still arriving."""
    if replay:
        return request.body.size
    return 0 if request.body.done and not request.body.size else None


class OutboundHttp:
    """Requests from the local app on one upstream listener."""

    def __init__(self, listener: Any, current: Callable[[], Any], dialer: Dialer, observer: Observer,
                 refused: Callable[..., None], balancer_for: Callable[[str], Balancer], pool: ConnPool,
                 budget_for: Callable[[str], Any], metrics: Any) -> None:
        self._listener = listener
        self._current = current
        self._dialer = dialer
        self._observer = observer
        self._refused = refused
        self._balancer_for = balancer_for
        self.pool = pool
        self._budget_for = budget_for
        self._metrics = metrics
        self.conns: set[HttpServerConn] = set()

    @property
    def spec(self) -> Any:
        return self._listener.spec  # follows the registration (a new protocol, timeout, ...)

    def connection(self) -> HttpServerConn:
        conn = HttpServerConn(self._handle, on_close=self.conns.discard)
        self.conns.add(conn)
        return conn

    async def _peer_conn(self, endpoint: Any, config: Any, timeout: float) -> HttpClientConn:
        conn = self.pool.get(endpoint.key, config.generation)
        if conn is not None:
            return conn
        conn = await self._dialer.open_http(endpoint, config, timeout)
        self.pool.adopt(conn)
        return conn

    async def _handle(self, down: HttpServerConn, request: Request) -> None:
        config = self._current()
        spec = self.spec
        ex = _Exchange()
        box: list[Any] = [self._observer.stats.route("outbound", spec.destination_name, "default")]
        try:
            await self._serve(down, request, config, spec, ex, box)
        finally:
            self._observer.finished("outbound", config, request, ex, box[0], source=config.registration.service,
                                    destination=spec.destination_name, peer=down.peer)

    async def _serve(self, down: HttpServerConn, request: Request, config: Any, spec: Any, ex: _Exchange,
                     box: list[Any]) -> None:
        name = spec.destination_name
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            _answer(down, request, ex, 400, f"bad request: {exc}")
            return
        route = policy.route(config, spec, parsed)
        ex.route = route.name
        stats = box[0] = self._observer.stats.route("outbound", name, route.name)
        ex.trace = policy.trace(config, request)
        deadline = request.started + policy.request_timeout(route)
        budget = self._budget_for(spec.key)
        budget.record_request()
        replay = await _settled_body(request)
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        headers = policy.request_headers(route, headers)
        headers = policy.with_trace_headers(headers, ex.trace)
        head = forward_request_head(request, policy.rewritten_target(route, parsed), headers, _length(request, replay))
        key = policy.endpoints_key(spec, route)
        balancer = self._balancer_for(key)
        tried: set[str] = set()
        dial_failures = 0
        while True:
            config = self._current()
            endpoints = config.endpoints.get(key, ())
            now = time.monotonic()
            if now >= deadline:
                stats.timeouts += 1
                ex.flags = "UT"
                _answer(down, request, ex, 504, "upstream request timeout")
                return
            endpoint = balancer.pick(endpoints, now, tried) or (balancer.pick(endpoints, now, set()) if tried else None)
            if endpoint is None:
                self._metrics.refused.labels("outbound", "no_healthy_instances").inc()
                ex.flags = "UH"
                _answer(down, request, ex, 503, f"no healthy upstream: {route.service}")
                return
            tried.add(endpoint.key)
            ex.upstream_host = endpoint.key
            try:
                conn = await self._peer_conn(endpoint, config, min(spec.connect_timeout or deadline - now, deadline - now))
            except (DialError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, DialError) else "timeout"
                self._metrics.dial_failures.labels(name, reason).inc()
                if balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                self._refused("upstream_dial_failed", upstream=name, instance=endpoint.key, reason=reason,
                              error=str(exc))
                dial_failures += 1
                outcome = policy.REFUSED_STREAM if reason == "refused_by_peer" else policy.CONNECT_FAILURE
                # nothing reached any app: other instances are tried as on the tcp path,
                # then the route's own retries
                if dial_failures < MAX_ATTEMPTS:
                    continue
                if policy.may_retry(route, ex.retries, outcome, request.method, False, budget):
                    ex.retries += 1
                    stats.retries += 1
                    await policy.backoff(ex.retries)
                    continue
                ex.flags = "UF"
                _answer(down, request, ex, 503, "upstream connect error")
                return
            balancer.started(endpoint.key)
            attempt = await _run_attempt(down, request, conn, head, replay, deadline)
            balancer.finished(endpoint.key)
            if attempt.head is None:
                if attempt.failure == "timeout":
                    stats.timeouts += 1
                    ex.flags = "UT"
                    _answer(down, request, ex, 504, "upstream request timeout")
                    return
                if balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                if replay and policy.may_retry(route, ex.retries, policy.RESET, request.method, True, budget):
                    ex.retries += 1
                    stats.retries += 1
                    await policy.backoff(ex.retries)
                    continue
                ex.failure, ex.flags = attempt.failure, "UC"
                _answer(down, request, ex, 502, "upstream reset before the response")
                return
            status = attempt.head.status
            if status >= 400 and replay and policy.may_retry(route, ex.retries, status, request.method, True, budget):
                attempt.finish()
                conn.abort()  # its body is not wanted; a new request needs a clean connection
                if status >= 500 and balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                ex.retries += 1
                stats.retries += 1
                await policy.backoff(ex.retries)
                continue
            if status < 500:
                balancer.succeeded(endpoint.key)
            ex.status = status
            if not await _stream_response(down, request, attempt, deadline, edit=policy.response_editor(route),
                                          idle=route.idle_timeout):
                ex.failure = attempt.failure or "timeout"
                if ex.failure == "timeout":
                    stats.timeouts += 1
                    ex.flags = "UT"
            ex.bytes_out = attempt.bytes_out
            return

    def drain(self) -> None:
        for conn in list(self.conns):
            conn.close_when_idle()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
