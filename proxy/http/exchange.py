"""The two request handlers of an http sidecar, as callback state machines.

Inbound (the public listener): a peer sidecar's request is authorized by the L7
intentions (403 when denied: the next request on the same connection goes on), passes
the service's rate limits (429 with Retry-After), carries
the caller's trace on, and goes to the local app over a pooled keep-alive connection,
bounded by `local_request_timeout_ms` (504).

Outbound (an upstream listener): the app's request is matched against the upstream's
service-router, walks its discovery chain (a split by weight, the resolver's targets with
failover, its load balancer and hash policies, plan.py), passes the upstream's circuit
breaker (503 `x-mesh-overloaded` at once when over a limit), goes to the chosen instance
over a pooled stream to its sidecar, and is retried as the route says (a fresh instance where there is one,
within the retry budget, idempotent methods only unless nothing reached an app); the
route's RequestTimeout covers the whole request, retries included (504).

A request runs from the parser's callback (`begin`) to the response's last byte without
a task or a future: the common case (a pooled connection, an answer) is two callbacks.
Only dialling a new connection and waiting out a retry's backoff leave the callbacks (a
task and a timer). Both write one access log record per request when access logs are
on and count it per route. Decisions (normalization, permissions, routes, retries,
tracing) are the pure functions of `policy`; this module moves messages and keeps time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from ..balancer import Balancer
from ..outbound import MAX_ATTEMPTS, Dialer, DialError
from ..plan import SplitterPlan
from ..traffic.ratelimit import RateLimiter
from . import policy
from .client_conn import HttpClientConn
from .forward import Attempt, ConnPool, end_to_end, forward_request_head, send_request
from .message import Request, simple_response
from .permissions import DENIED_BODY, DENIED_STATUS
from .retry import IDEMPOTENT_METHODS, backoff
from .server_conn import HttpServerConn
from .stats import HttpStats
from .tracing import FinishedSpan

__all__ = ["InboundHttp", "OutboundHttp", "Observer", "POOL_IDLE_SECONDS"]

POOL_IDLE_SECONDS = 60.0
APP_KEY = "app"


class _Record:
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


def _length(request: Request, replay: bool) -> int | None:
    """The body length to state: known when kept whole; none when there is no body;
    None (chunked) while it is still arriving."""
    if replay:
        return request.body.size
    return 0 if request.body.done and not request.body.size else None


def _loop_time(loop: Any, monotonic_deadline: float) -> float:
    return loop.time() + (monotonic_deadline - time.monotonic())


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

    def finished(self, direction: str, config: Any, request: Request, rec: _Record, stats: Any, *, source: str,
                 destination: str, peer: str) -> None:
        now = time.monotonic()
        stats.observe(rec.status, now - request.started)
        rec.bytes_in = request.body.size
        access = self.access()
        if access is not None:
            access.record(direction, request, rec, request.started, source=source, destination=destination,
                          peer=peer)
        trace = rec.trace
        if trace is not None and trace.exporting and trace.ctx.sampled and self.spans is not None:
            endpoint = policy.tracing_config(config).otlp_endpoint or ""
            wall_ns = time.time_ns()
            self.spans.add(endpoint, FinishedSpan(
                ctx=trace.ctx, name=f"{request.method} {destination}",
                kind="SERVER" if direction == "inbound" else "CLIENT",
                start_ns=wall_ns - int((now - request.started) * 1e9), end_ns=wall_ns, method=request.method,
                path=request.target.decode("latin-1").partition("?")[0], status_code=rec.status,
                server_address=rec.upstream_host), config.registration.service)


class _Exchange:
    """One request from `begin` to its end; subclasses say where it goes."""

    direction = ""

    def __init__(self, down: HttpServerConn, request: Request, config: Any, observer: Observer,
                 stats: Any) -> None:
        self.down = down
        self.request = request
        self.config = config
        self.observer = observer
        self.stats = stats
        self.rec = _Record()
        self.replay = False
        self.deadline: float | None = None  # loop time
        self.ended = False

    # ---- endings ----------------------------------------------------------------------------
    def answer(self, status: int, text: str, flags: str = "", extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """The sidecar's own answer (400, 403, 502, 503, 504), then the end."""
        request = self.request
        request.body.discard()
        self.rec.status = status
        if flags:
            self.rec.flags = flags
        if status == 400:  # what follows a request we could not read is not to be trusted
            request.keep_alive = False
        if status == 504:
            self.stats.timeouts += 1
        data = simple_response(status, text, extra, close=not request.keep_alive)
        self.rec.bytes_out = len(data)
        self.down.write(data)
        self.end()

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.observe()
        self.down.finished(self.request)

    def observe(self) -> None:
        raise NotImplementedError

    # ---- the response --------------------------------------------------------------------------
    def deliver(self, attempt: Attempt, edit: Any = None, idle: float | None = None) -> None:
        """Commit `attempt`'s response to the caller; the end comes with its last byte."""
        head = attempt.head
        assert head is not None
        self.rec.status = head.status
        attempt.commit(None, edit)
        if head.status == 101 and self.request.upgrade:
            attempt.flush()  # the 101 goes before any byte of the tunnel
            attempt.finish()  # no deadline for the tunnel's life
            _tunnel(self.down, attempt.conn)
            self.end()
            return
        attempt.on_end = self._delivered
        if idle:
            attempt.idle_timeout(idle, self.deadline)
        if attempt.done:
            self._delivered(attempt)

    def _delivered(self, attempt: Attempt) -> None:
        attempt.on_end = None
        attempt.finish()
        self.rec.bytes_out = attempt.bytes_out
        if attempt.failure:
            self.rec.failure = attempt.failure
            if attempt.failure == "timeout":
                self.stats.timeouts += 1
                self.rec.flags = "UT"
            self.down.abort()  # the head went out: the caller can only learn by the reset
        self.end()

    def send(self, conn: HttpClientConn, head: bytes, on_head: Callable[[Attempt], None]) -> Attempt:
        attempt = Attempt(self.down, self.request, conn, on_head)
        send_request(self.request, conn, head, self.replay, attempt)
        if self.deadline is not None:
            attempt.deadline_at(self.deadline)
        return attempt


def _settled(request: Request) -> bool:
    """Whether the body can be sent again: complete and small enough to keep. A caller that
    waits for `100 Continue` sends nothing before it, so such a body is streamed."""
    body = request.body
    if request.expect_continue or not body.done:
        return False
    return body.replayable and not body.failed


class _Listener:
    """What both listeners' handlers keep: their callers' connections and the few tasks
    (dials) their requests started."""

    def __init__(self) -> None:
        self.conns: set[HttpServerConn] = set()
        self.tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def drain(self) -> None:
        for conn in list(self.conns):
            conn.close_when_idle()

    def close_all(self) -> None:
        for conn in list(self.conns):
            conn.abort()
        for task in list(self.tasks):
            task.cancel()


# ---- inbound ------------------------------------------------------------------------------------
class InboundHttp(_Listener):
    """Requests arriving on the public listener, to the local app."""

    def __init__(self, current: Callable[[], Any], observer: Observer, refused: Callable[..., None],
                 traffic: Any = None) -> None:
        super().__init__()
        self._current = current
        self.observer = observer
        self.refused = refused
        self.pool = ConnPool()
        self.traffic = traffic
        self._limiter: tuple[Any, RateLimiter | None] = (None, None)

    def limiter(self, config: Any) -> RateLimiter | None:
        """The rate limiter of the registration's `rate_limits`, kept (with its buckets)
        while they stay the same; None when nothing is limited."""
        limits = config.registration.rate_limits
        if self._limiter[0] is not limits and self._limiter[0] != limits:
            self._limiter = (limits, RateLimiter(limits) if limits else None)
        return self._limiter[1]

    def connection(self, caller: str, peer: str,
                   on_close: Callable[[HttpServerConn], None] | None = None) -> HttpServerConn:
        def closed(conn: HttpServerConn) -> None:
            self.conns.discard(conn)
            if on_close is not None:
                on_close(conn)

        conn = HttpServerConn(self.begin, on_close=closed, peer=peer)
        conn.tag = caller
        self.conns.add(conn)
        return conn

    def begin(self, down: HttpServerConn, request: Request) -> None:
        config = self._current()
        _Inbound(self, down, request, config).start()

    def close_all(self) -> None:
        super().close_all()
        self.pool.close_all()


class _Inbound(_Exchange):
    direction = "inbound"

    def __init__(self, handler: InboundHttp, down: HttpServerConn, request: Request, config: Any) -> None:
        super().__init__(down, request, config, handler.observer, handler.observer.stats.route("inbound", "", "default"))
        self.handler = handler
        self.head = b""
        self.fresh = False

    def observe(self) -> None:
        self.observer.finished("inbound", self.config, self.request, self.rec, self.stats, source=self.down.tag,
                               destination=self.config.registration.service, peer=self.down.peer)

    def start(self) -> None:
        request, config, rec = self.request, self.config, self.rec
        reg = config.registration
        if request.body.failed:
            self.end()
            return
        rec.trace = policy.trace(config, request)  # first: a refused request's line has its trace ID too
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            self.answer(400, f"bad request: {exc}")
            return
        decision = policy.authorize(config, self.down.tag, parsed)
        rec.authz, rec.authz_reason = decision.authz, decision.reason
        if not decision.allowed:
            self.stats.denied += 1
            self.answer(DENIED_STATUS, DENIED_BODY, "RBAC")
            return
        limiter = self.handler.limiter(config)
        if limiter is not None:
            verdict = limiter.check(parsed.view.path, time.monotonic())
            if not verdict.allowed:
                if self.handler.traffic is not None:
                    self.handler.traffic.rate_limited(verdict.route)
                self.answer(429, "rate limited", "RL", [(b"retry-after", b"%d" % verdict.retry_after)])
                return
        if reg.local_request_timeout:
            self.deadline = _loop_time(self.down.loop, request.started + reg.local_request_timeout)
        self.replay = _settled(request)
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        headers = policy.with_trace_headers(headers, rec.trace)
        self.head = forward_request_head(request, parsed.target, headers, _length(request, self.replay))
        rec.upstream_host = f"{reg.local_address}:{reg.local_port}"
        conn = self.handler.pool.get(APP_KEY)
        if conn is None:
            self.handler.spawn(self._dial())
        else:
            self.send(conn, self.head, self._on_head)

    async def _dial(self) -> None:
        reg = self.config.registration
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(reg.local_connect_timeout or None):
                _, conn = await loop.create_connection(lambda: HttpClientConn(APP_KEY), reg.local_address,
                                                       reg.local_port)
        except (OSError, TimeoutError) as exc:
            self.handler.refused("local_app_unreachable", app=self.rec.upstream_host,
                                 error=str(exc) or type(exc).__name__)
            self.rec.failure = "app_unreachable"
            self.answer(503, "upstream connect error: the local app is not reachable", "UF")
            return
        self.handler.pool.adopt(conn)
        self.fresh = True
        if self.down.closed:
            self.end()
            return
        self.send(conn, self.head, self._on_head)

    def _on_head(self, attempt: Attempt) -> None:
        if attempt.head is not None:
            self.deliver(attempt)
            return
        if attempt.failure == "timeout":
            self.answer(504, "upstream request timeout", "UT")
            return
        # a kept-alive connection the app closed as we used it: once more on a new one,
        # when the request can be sent again and may be repeated
        if not self.fresh and self.replay and self.request.method in IDEMPOTENT_METHODS and not self.down.closed:
            self.handler.spawn(self._dial())
            return
        self.rec.failure = attempt.failure
        self.answer(502, "upstream reset before the response", "UC")


# ---- outbound -----------------------------------------------------------------------------------
OVERLOADED = [(b"x-mesh-overloaded", b"true")]


class OutboundHttp(_Listener):
    """Requests from the local app on one upstream listener."""

    def __init__(self, listener: Any, current: Callable[[], Any], dialer: Dialer, observer: Observer,
                 refused: Callable[..., None], balancer_for: Callable[[Any, Any, Any], Balancer], pool: ConnPool,
                 budget_for: Callable[[str], Any], metrics: Any, traffic: Any, breaker_for: Callable[[Any], Any]) -> None:
        super().__init__()
        self._listener = listener
        self._current = current
        self.dialer = dialer
        self.observer = observer
        self.refused = refused
        self.balancer_for = balancer_for
        self.pool = pool
        self.budget_for = budget_for
        self.metrics = metrics
        self.traffic = traffic  # TrafficStats: per target, failovers, overloads
        self.breaker_for = breaker_for

    @property
    def spec(self) -> Any:
        return self._listener.spec  # follows the registration (a new protocol, timeout, ...)

    def connection(self) -> HttpServerConn:
        conn = HttpServerConn(self.begin, on_close=self.conns.discard)
        self.conns.add(conn)
        return conn

    def begin(self, down: HttpServerConn, request: Request) -> None:
        _Outbound(self, down, request, self._current(), self.spec).start()


class _Outbound(_Exchange):
    direction = "outbound"

    def __init__(self, handler: OutboundHttp, down: HttpServerConn, request: Request, config: Any,
                 spec: Any) -> None:
        super().__init__(down, request, config, handler.observer,
                         handler.observer.stats.route("outbound", spec.destination_name, "default"))
        self.handler = handler
        self.spec = spec
        self.route: Any = None
        self.split: Any = None
        self.resolver: Any = None
        self.target: Any = None
        self.hash_key: int | None = None
        self.set_cookie: bytes | None = None
        self.head = b""
        self.balancer: Any = None
        self.breaker: Any = None
        self.budget: Any = None
        self.tried: set[str] = set()
        self.dial_failures = 0
        self.endpoint: Any = None

    def observe(self) -> None:
        if self.breaker is not None:
            self.breaker.end_request()
            self.breaker = None
        self.observer.finished("outbound", self.config, self.request, self.rec, self.stats,
                               source=self.config.registration.service, destination=self.spec.destination_name,
                               peer=self.down.peer)

    def start(self) -> None:
        request, config, spec, rec, handler = self.request, self.config, self.spec, self.rec, self.handler
        if request.body.failed:
            self.end()
            return
        rec.trace = policy.trace(config, request)
        try:
            parsed = policy.parse_request(request)
        except policy.BadRequest as exc:
            self.answer(400, f"bad request: {exc}")
            return
        plan = config.plans.get(spec.key)
        route = self.route = policy.route(plan, spec, parsed)
        rec.route = route.name
        self.stats = self.observer.stats.route("outbound", spec.destination_name, route.name)
        breaker = handler.breaker_for(spec)
        if breaker is not None:
            if not breaker.start_request():
                self._overloaded("requests")
                return
            self.breaker = breaker
        step = plan.step(route.next_node) if plan is not None else None
        if step is None:
            self.answer(503, f"no route to {spec.destination_name}", "NR")
            return
        split = None
        if isinstance(step, SplitterPlan):
            split = self.split = step.choose(policy.rng.random())
            step = split.resolver
        self.resolver = step
        self.deadline = _loop_time(self.down.loop, request.started + policy.request_timeout(route, step))
        self.budget = handler.budget_for(spec.key)
        self.budget.record_request()
        self.replay = _settled(request)
        headers = end_to_end(request.headers, keep_upgrade=request.upgrade)
        headers = policy.request_headers(route, headers)
        if split is not None and split.request_headers:
            headers = policy.edit_headers(split.request_headers, headers)
        headers = policy.with_trace_headers(headers, rec.trace)
        self.head = forward_request_head(request, policy.rewritten_target(route, parsed), headers,
                                         _length(request, self.replay))
        if step.lb.hash_policies:
            self.hash_key, self.set_cookie = policy.request_hash(step.lb, request, parsed, self.down.peer)
        self.next_attempt()

    def _overloaded(self, limit: str) -> None:
        self.handler.traffic.overloaded(self.spec.destination_name, limit)
        self.answer(503, f"upstream overloaded: {limit} limit of {self.spec.destination_name} reached", "UO",
                    OVERLOADED)

    def _choose_target(self, endpoints: Any) -> tuple[Any, tuple[Any, ...]]:
        """The first of the resolver's targets (primary, then failover in order) that has
        a healthy instance; the primary with none when no target has one."""
        targets = self.resolver.targets
        for target in targets:
            found = endpoints.get(target.id)
            if found:
                return target, found
        return targets[0], ()

    # ---- attempts -------------------------------------------------------------------------------
    def next_attempt(self) -> None:
        if self.ended:
            return
        if self.down.closed:
            self.end()
            return
        loop = self.down.loop
        if self.deadline is not None and loop.time() >= self.deadline:
            self.answer(504, "upstream request timeout", "UT")
            return
        config = self.handler._current()
        handler = self.handler
        target, endpoints = self._choose_target(config.endpoints)
        if target is not self.target:
            self.target = target
            self.balancer = handler.balancer_for(self.spec, self.resolver, target)
        now = time.monotonic()
        balancer = self.balancer
        endpoint = balancer.pick(endpoints, now, self.tried, self.hash_key) or (
            balancer.pick(endpoints, now, (), self.hash_key) if self.tried else None)
        if endpoint is None:
            handler.metrics.refused.labels("outbound", "no_healthy_instances").inc()
            self.answer(503, f"no healthy upstream: {target.service}", "UH")
            return
        handler.traffic.request(self.spec.destination_name, target.id, target is not self.resolver.targets[0])
        self.tried.add(endpoint.key)
        self.endpoint = endpoint
        self.rec.upstream_host = endpoint.key
        conn = handler.pool.get(endpoint.key, config.generation)
        if conn is None:
            breaker = self.breaker
            if breaker is not None:
                if not breaker.open_connection():
                    self._overloaded("connections")
                    return
                if not breaker.start_pending():
                    breaker.close_connection()
                    self._overloaded("pending")
                    return
            handler.spawn(self._dial(endpoint, config, breaker))
            return
        self._send_to(conn)

    async def _dial(self, endpoint: Any, config: Any, breaker: Any) -> None:
        remaining = (self.deadline - self.down.loop.time()) if self.deadline is not None else None
        timeout = self.spec.connect_timeout or self.target.connect_timeout or remaining or 0
        if remaining is not None:
            timeout = min(timeout, remaining)
        try:
            conn = await self.handler.dialer.open_http(endpoint, config, max(timeout, 0.001))
        except (DialError, TimeoutError) as exc:
            if breaker is not None:
                breaker.end_pending()
                breaker.close_connection()
            self._dial_failed(endpoint, exc)
            return
        self.handler.pool.adopt(conn)
        if breaker is not None:
            breaker.end_pending()
            lost = conn.on_lost

            def closed(c: HttpClientConn) -> None:
                breaker.close_connection()
                if lost is not None:
                    lost(c)

            conn.on_lost = closed
        self._send_to(conn)

    def _eject_if(self, failed: bool) -> None:
        if failed:
            self.handler.metrics.ejections.labels(self.spec.destination_name).inc()

    def _dial_failed(self, endpoint: Any, exc: Exception) -> None:
        handler, name = self.handler, self.spec.destination_name
        reason = exc.reason if isinstance(exc, DialError) else "timeout"
        handler.metrics.dial_failures.labels(name, reason).inc()
        self._eject_if(self.balancer.failed(endpoint.key, time.monotonic()))
        handler.refused("upstream_dial_failed", upstream=name, instance=endpoint.key, reason=reason, error=str(exc))
        self.dial_failures += 1
        # nothing reached any app: other instances are tried as on the tcp path, then the
        # route's own retries
        if self.dial_failures < MAX_ATTEMPTS:
            self.next_attempt()
            return
        outcome = policy.REFUSED_STREAM if reason == "refused_by_peer" else policy.CONNECT_FAILURE
        if policy.may_retry(self.route, self.rec.retries, outcome, self.request.method, False, self.budget):
            self._retry_later()
            return
        self.answer(503, "upstream connect error", "UF")

    def _send_to(self, conn: HttpClientConn) -> None:
        if self.ended:
            conn.close()
            return
        if self.down.closed:
            self.end()
            return
        self.balancer.started(self.endpoint.key)
        self.send(conn, self.head, self._on_head)

    def _retry_later(self) -> None:
        self.rec.retries += 1
        self.stats.retries += 1
        self.down.loop.call_later(backoff(self.rec.retries, policy.rng), self.next_attempt)

    def _on_head(self, attempt: Attempt) -> None:
        endpoint, balancer = self.endpoint, self.balancer
        balancer.finished(endpoint.key)
        head = attempt.head
        if head is None:
            if attempt.failure == "timeout":
                self.answer(504, "upstream request timeout", "UT")
                return
            self._eject_if(balancer.failed(endpoint.key, time.monotonic()))
            if self.replay and policy.may_retry(self.route, self.rec.retries, policy.RESET, self.request.method,
                                                True, self.budget):
                self._retry_later()
                return
            self.rec.failure = attempt.failure
            self.answer(502, "upstream reset before the response", "UC")
            return
        status = head.status
        if status >= 400 and self.replay and policy.may_retry(self.route, self.rec.retries, status,
                                                              self.request.method, True, self.budget):
            attempt.drop()  # its body is not wanted; a new request needs a clean connection
            if status >= 500:
                self._eject_if(balancer.failed(endpoint.key, time.monotonic()))
            self._retry_later()
            return
        if status < 500:
            balancer.succeeded(endpoint.key)
        else:  # consecutive 5xx set an instance aside
            self._eject_if(balancer.failed(endpoint.key, time.monotonic()))
        edit = policy.response_editor(self.route, self.split, self.set_cookie)
        self.deliver(attempt, edit=edit, idle=self.route.idle_timeout)
