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
from .server_conn import HttpServerConn
from .stats import HttpStats

__all__ = ["InboundHttp", "OutboundHttp", "POOL_IDLE_SECONDS"]

POOL_IDLE_SECONDS = 60.0
APP_KEY = "app"


class _Exchange:
    """What one request became, for the access log and the metrics."""

    __slots__ = ("status", "retries", "upstream_host", "authz", "route", "trace_id", "bytes_in", "bytes_out",
                 "failure")

    def __init__(self) -> None:
        self.status = 0
        self.retries = 0
        self.upstream_host = ""
        self.authz = ""
        self.route = "default"
        self.trace_id = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.failure = ""


async def _settled_body(request: Request) -> bool:
    """Whether the body can be sent again: complete and small enough to keep. A caller that
    waits for `100 Continue` sends nothing before it, so such a body is streamed."""
    if request.expect_continue:
        return False
    await request.body.settle()
    return request.body.replayable and not request.body.failed


def _answer(down: HttpServerConn, request: Request, ex: _Exchange, status: int, text: str,
            extra: list[tuple[bytes, bytes]] | None = None) -> None:
    request.body.discard()
    ex.status = status
    close = not request.keep_alive
    down.write(simple_response(status, text, extra, close=close))


async def _run_attempt(down: HttpServerConn, request: Request, conn: HttpClientConn, head: bytes, replay: bool,
                       deadline: float | None) -> Attempt:
    attempt = Attempt(down, request, conn)
    conn.send(head, request.method, attempt)
    send_body(request, conn, replay)
    try:
        if deadline is None:
            await attempt.wait_head()
        else:
            async with asyncio.timeout_at(_loop_time(deadline)):
                await attempt.wait_head()
    except TimeoutError:
        attempt.failure = "timeout"
        conn.abort()
    return attempt


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


async def _stream_response(down: HttpServerConn, request: Request, attempt: Attempt, deadline: float | None,
                           edit: Any = None, extra: list[tuple[bytes, bytes]] | None = None) -> bool:
    """Send the response on; False when it could not be finished (timeout or reset)."""
    head = attempt.head
    assert head is not None
    attempt.commit(extra, edit)
    if head.status == 101 and request.upgrade:
        _tunnel(down, attempt.conn)
        return True
    try:
        if not attempt.done:
            if deadline is None:
                await attempt.wait_done()
            else:
                async with asyncio.timeout_at(_loop_time(deadline)):
                    await attempt.wait_done()
    except TimeoutError:
        attempt.conn.abort()
        down.abort()
        return False
    finally:
        attempt.finish()
    if attempt.failure:
        down.abort()  # the head went out: the caller can only learn by the reset
        return False
    return True


def _tunnel(down: HttpServerConn, conn: HttpClientConn) -> None:
    """After a 101 both connections carry raw bytes to each other until one closes."""
    conn.tunnel_peer = down.transport
    tail = down.become_tunnel(conn.transport)
    if tail:
        conn.write(tail)
    early = conn.take_tunnel_tail()
    if early:
        down.write(early)


class InboundHttp:
    """Requests arriving on the public listener, to the local app."""

    def __init__(self, current: Callable[[], Any], stats: HttpStats, access: Any, refused: Callable[..., None]) -> None:
        self._current = current
        self._stats = stats
        self._access = access  # an AccessLog or None (read per request: config may change)
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
        caller = down.tag
        ex = _Exchange()
        started = request.started
        stats = self._stats.route("inbound", "", "default")
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            _answer(down, request, ex, 400, f"bad request: {exc}")
            self._finish(config, down, request, ex, started, stats, caller)
            return
        decision = policy.authorize(config, caller, parsed)
        ex.authz = decision.log
        if not decision.allowed:
            stats.denied += 1
            _answer(down, request, ex, 403, "RBAC: access denied")
            self._finish(config, down, request, ex, started, stats, caller)
            return
        trace = policy.trace(config, request, inbound=True)
        ex.trace_id = trace.trace_id if trace else ""
        deadline = started + reg.local_request_timeout if reg.local_request_timeout else None
        replay = await _settled_body(request)
        conn = self.pool.get(APP_KEY)
        if conn is None:
            try:
                conn = await self._dial_app(config)
            except (OSError, TimeoutError) as exc:
                self._refused("local_app_unreachable", app=f"{reg.local_address}:{reg.local_port}",
                              error=str(exc) or type(exc).__name__)
                ex.failure = "app_unreachable"
                _answer(down, request, ex, 503, "upstream connect error: the local app is not reachable")
                self._finish(config, down, request, ex, started, stats, caller)
                return
        ex.upstream_host = f"{reg.local_address}:{reg.local_port}"
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        if trace is not None:
            headers = policy.with_trace_headers(headers, trace)
        head = forward_request_head(request, request.target, headers,
                                    request.body.size if replay else (None if not request.body.done or request.body.size else 0))
        attempt = await _run_attempt(down, request, conn, head, replay, deadline)
        if attempt.head is None:
            if attempt.failure == "timeout":
                stats.timeouts += 1
                _answer(down, request, ex, 504, "upstream request timeout")
            else:
                _answer(down, request, ex, 502, f"upstream reset before the response ({attempt.failure})")
            ex.failure = attempt.failure
            self._finish(config, down, request, ex, started, stats, caller)
            return
        ex.status = attempt.head.status
        if not await _stream_response(down, request, attempt, deadline):
            ex.failure = attempt.failure or "timeout"
            if ex.failure == "timeout":
                stats.timeouts += 1
        ex.bytes_out = attempt.bytes_out
        self._finish(config, down, request, ex, started, stats, caller)

    def _finish(self, config: Any, down: HttpServerConn, request: Request, ex: _Exchange, started: float,
                stats: Any, caller: str) -> None:
        stats.observe(ex.status, time.monotonic() - started)
        ex.bytes_in = request.body.size
        access = self._access()
        if access is not None:
            access.record("inbound", config, request, ex, started, source=caller,
                          destination=config.registration.service, peer=down.peer)

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
        self.pool.close_all()


class OutboundHttp:
    """Requests from the local app on one upstream listener."""

    def __init__(self, listener: Any, current: Callable[[], Any], dialer: Dialer, stats: HttpStats, access: Any,
                 refused: Callable[..., None], balancer_for: Callable[[str], Balancer], pool: ConnPool,
                 budget_for: Callable[[str], Any], metrics: Any) -> None:
        self._listener = listener
        self._current = current
        self._dialer = dialer
        self._stats = stats
        self._access = access
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
        name = self.spec.destination_name
        ex = _Exchange()
        started = request.started
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            _answer(down, request, ex, 400, f"bad request: {exc}")
            self._finish(config, request, ex, started, self._stats.route("outbound", name, "default"))
            return
        route = policy.route(config, self.spec, parsed)
        ex.route = route.name
        stats = self._stats.route("outbound", name, route.name)
        trace = policy.trace(config, request, inbound=False)
        ex.trace_id = trace.trace_id if trace else ""
        timeout = policy.request_timeout(route)
        deadline = started + timeout if timeout else None
        budget = self._budget_for(self.spec.key)
        budget.record_request()
        replay = await _settled_body(request)
        target = policy.rewritten_target(route, parsed, request.target)
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        headers = policy.request_headers(route, headers)
        if trace is not None:
            headers = policy.with_trace_headers(headers, trace)
        length = request.body.size if replay else (None if not request.body.done or request.body.size else 0)
        head = forward_request_head(request, target, headers, length)
        key = policy.endpoints_key(self.spec, route)
        balancer = self._balancer_for(key)
        tried: set[str] = set()
        dial_failures = 0
        attempt_no = 0
        while True:
            config = self._current()
            endpoints = config.endpoints.get(key, ())
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                stats.timeouts += 1
                _answer(down, request, ex, 504, "upstream request timeout")
                break
            endpoint = balancer.pick(endpoints, now, tried) or (balancer.pick(endpoints, now, set()) if tried else None)
            if endpoint is None:
                self._metrics.refused.labels("outbound", "no_healthy_instances").inc()
                _answer(down, request, ex, 503, f"no healthy instance of {route.service}")
                break
            tried.add(endpoint.key)
            ex.upstream_host = endpoint.key
            connect_timeout = self.spec.connect_timeout
            if deadline is not None:
                connect_timeout = min(connect_timeout or deadline - now, deadline - now)
            try:
                conn = await self._peer_conn(endpoint, config, connect_timeout)
            except (DialError, TimeoutError) as exc:
                reason = exc.reason if isinstance(exc, DialError) else "timeout"
                self._metrics.dial_failures.labels(name, reason).inc()
                if balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                self._refused("upstream_dial_failed", upstream=name, instance=endpoint.key, reason=reason,
                              error=str(exc))
                dial_failures += 1
                # nothing reached any app: trying another instance is always safe
                if dial_failures < MAX_ATTEMPTS or policy.may_retry(route, attempt_no, "connect-failure",
                                                                    request.method, False, budget):
                    attempt_no += 1 if dial_failures >= MAX_ATTEMPTS else 0
                    continue
                _answer(down, request, ex, 503, "upstream connect error")
                break
            balancer.started(endpoint.key)
            attempt = await _run_attempt(down, request, conn, head, replay, deadline)
            balancer.finished(endpoint.key)
            if attempt.head is None:
                if attempt.failure == "timeout":
                    stats.timeouts += 1
                    _answer(down, request, ex, 504, "upstream request timeout")
                    break
                if balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                reached = conn.used > 1 or attempt.failure != "refused"
                if replay and policy.may_retry(route, attempt_no, "reset", request.method, reached, budget):
                    attempt_no += 1
                    ex.retries += 1
                    stats.retries += 1
                    await policy.backoff(attempt_no)
                    continue
                ex.failure = attempt.failure
                _answer(down, request, ex, 502, "upstream reset before the response")
                break
            status = attempt.head.status
            if replay and status >= 400 and policy.may_retry(route, attempt_no, status, request.method, True,
                                                             budget, attempt.head.headers):
                conn.abort()
                if status >= 500 and balancer.failed(endpoint.key, time.monotonic()):
                    self._metrics.ejections.labels(name).inc()
                attempt_no += 1
                ex.retries += 1
                stats.retries += 1
                await policy.backoff(attempt_no)
                continue
            balancer.succeeded(endpoint.key)
            ex.status = status
            if not await _stream_response(down, request, attempt, deadline, edit=policy.response_editor(route)):
                ex.failure = attempt.failure or "timeout"
                if ex.failure == "timeout":
                    stats.timeouts += 1
            ex.bytes_out = attempt.bytes_out
            break
        self._finish(config, request, ex, started, stats)

    def _finish(self, config: Any, request: Request, ex: _Exchange, started: float, stats: Any) -> None:
        stats.observe(ex.status, time.monotonic() - started)
        ex.bytes_in = request.body.size
        access = self._access()
        if access is not None:
            access.record("outbound", config, request, ex, started, source=config.registration.service,
                          destination=self.spec.destination_name, peer="")

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
