"""The engine's view of the pure decision modules: bytes in, decisions out.

The engine (exchange.py) works on header pairs of bytes as llhttp hands them over;
the decision modules (normalize, permissions, routes, retry, tracing) work on text.
This module converts only what a decision reads, and only when it reads it: a route
without header operations, or a request no rule inspects the headers of, costs no
conversion at all.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from mesh.catalog.authz import IntentionIndex

from ..traffic.lb import cookie_value
from ..traffic.lb import request_hash as request_hash_of
from . import tracing
from .message import Request
from .normalize import BadRequestTarget, split_target
from .permissions import L7Decision
from .permissions import authorize as authorize_request
from .request_view import RequestView, parse_query
from .retry import CONNECT_FAILURE, REFUSED_STREAM, RESET, RetryBudget, RetryPolicy, decide_retry
from .routes import Route, Router, rewrite_target

__all__ = [
    "BadRequest", "Parsed", "parse_request", "authorize", "trace", "with_trace_headers", "route",
    "request_timeout", "rewritten_target", "request_headers", "edit_headers", "response_editor", "request_hash",
    "may_retry", "rng", "new_budget", "DEFAULT_REQUEST_TIMEOUT", "CONNECT_FAILURE", "RESET", "REFUSED_STREAM",
]

DEFAULT_REQUEST_TIMEOUT = 15.0  # Envoy's route timeout, which Consul leaves in place when RequestTimeout is unset

rng = random.Random()  # trace IDs, sampling, retry backoff jitter


class BadRequest(ValueError):
    """A request the sidecar answers with 400 itself."""


@dataclass(slots=True)
class Parsed:
    view: RequestView
    target: bytes  # origin-form, normalized path (what rules checked is what the app gets)


def parse_request(request: Request) -> Parsed:
    """The request's normalized target (its framing was checked as it was parsed:
    server_conn.py refuses what hop.check_framing refuses)."""
    try:
        path, query = split_target(request.target, request.method)
    except BadRequestTarget as exc:
        raise BadRequest(exc.reason) from None
    target = (f"{path}?{query}" if query else path).encode("latin-1")
    return Parsed(RequestView(request.method, path, query, request.header_map), target)


def authorize(config: Any, caller: str, parsed: Parsed) -> L7Decision:
    index: IntentionIndex = config.intentions
    return authorize_request(index, caller, config.registration.service, config.default_allow, parsed.view)


# ---- tracing ---------------------------------------------------------------------------------
_tracing_cache: dict[int, tuple[Any, tracing.TracingConfig]] = {}


def tracing_config(config: Any) -> tracing.TracingConfig:
    """The registration's `Config.tracing`, parsed once per registration; an invalid one
    is the default (the agent refuses it when written; a proxy must not stop on it)."""
    raw = config.registration.tracing
    cached = _tracing_cache.get(id(raw))
    if cached is not None and cached[0] is raw:
        return cached[1]
    try:
        parsed = tracing.parse_tracing_config(raw or None)
    except tracing.TracingConfigError:
        parsed = tracing.TracingConfig()
    _tracing_cache.clear()
    _tracing_cache[id(raw)] = (raw, parsed)
    return parsed


@dataclass(slots=True)
class Trace:
    ctx: tracing.TraceContext
    style: str
    exporting: bool
    carried: bool  # the request came with trace headers of some kind

    @property
    def trace_id(self) -> str:
        return self.ctx.trace_id


_TRACE_NAMES = frozenset(name.encode("latin-1") for name in tracing.TRACE_HEADERS)


def trace(config: Any, request: Request) -> Trace:
    settings = tracing_config(config)
    for name, _ in request.headers:
        if name.lower() in _TRACE_NAMES:
            ctx, style = tracing.start_or_continue(request.header, rng, settings.exporting, settings.sampling)
            return Trace(ctx, style, settings.exporting, True)
    return Trace(tracing.start(rng, settings.sampling), tracing.STARTED, settings.exporting, False)


def with_trace_headers(headers: list[tuple[bytes, bytes]], trace: Trace) -> list[tuple[bytes, bytes]]:
    """The caller's trace headers replaced by this hop's (same style; a started trace
    gets `traceparent`). Unchanged when the incoming context passes through as it was."""
    if trace.style and not trace.exporting:
        return headers  # same IDs, same style: the caller's headers are already right
    out = [(n, v) for n, v in headers if n.lower() not in _TRACE_NAMES] if trace.carried else list(headers)
    out.extend((n.encode("latin-1"), v.encode("latin-1")) for n, v in tracing.outgoing_headers(trace.ctx, trace.style))
    return out


# ---- routes, splits, hashing ---------------------------------------------------------------------
_default_routers: dict[str, Router] = {}


def route(plan: Any, spec: Any, parsed: Parsed) -> Route:
    """The route the request takes: by the upstream's service-router when its chain has
    one, else the default route (to the chain's start)."""
    router = plan.router if plan is not None else None
    if router is None:
        router = _default_routers.get(spec.destination_name)
        if router is None:
            router = _default_routers[spec.destination_name] = Router(spec.destination_name)
    return router.match(parsed.view)


def request_timeout(route: Route, resolver: Any = None) -> float:
    """The route's RequestTimeout, else the resolver's, else Envoy's 15 s."""
    return route.request_timeout or (resolver.request_timeout if resolver is not None else None) \
        or DEFAULT_REQUEST_TIMEOUT


def rewritten_target(route: Route, parsed: Parsed) -> bytes:
    if route.prefix_rewrite is None:
        return parsed.target
    return rewrite_target(route, parsed.target.decode("latin-1")).encode("latin-1")


def edit_headers(ops: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ops.apply(text)]


def request_headers(route: Route, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return edit_headers(route.request_headers, headers) if route.request_headers else headers


def response_editor(route: Route, split: Any = None, set_cookie: bytes | None = None) -> Any:
    """The edit of the response's headers: the route's, then the split's (Envoy applies
    the more specific last), then a cookie a hash policy made."""
    ops = [o for o in (route.response_headers, split.response_headers if split is not None else None) if o]
    if not ops and set_cookie is None:
        return None

    def edit(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        for op in ops:
            headers = edit_headers(op, headers)
        if set_cookie is not None:
            headers = [*headers, (b"set-cookie", set_cookie)]
        return headers

    return edit


def request_hash(lb: Any, request: Request, parsed: Parsed, peer: str) -> tuple[int | None, bytes | None]:
    """The request's hash for ring_hash/maglev by the resolver's HashPolicies, and the
    Set-Cookie value when a cookie policy made one."""
    view = parsed.view
    params: list[dict[str, list[str]]] = []

    def header(name: str) -> str | None:
        return view.headers().get(name.lower())

    def cookie(name: str) -> str | None:
        raw = view.headers().get("cookie")
        return cookie_value(raw, name) if raw else None

    def query(name: str) -> str | None:
        if not params:
            params.append(parse_query(view.query))
        values = params[0].get(name)
        return values[0] if values else None

    source_ip = peer.rpartition(":")[0] if ":" in peer else peer
    result = request_hash_of(lb.hash_policies, header=header, cookie=cookie, query=query, source_ip=source_ip,
                             rng=rng)
    return result.key, result.set_cookie.encode("latin-1") if result.set_cookie else None


# ---- retries --------------------------------------------------------------------------------------
_policies: dict[Route, RetryPolicy] = {}


def _policy(route: Route) -> RetryPolicy:
    policy = _policies.get(route)
    if policy is None:
        try:
            policy = RetryPolicy.from_route(route)
        except ValueError:
            policy = RetryPolicy()
        if len(_policies) > 4096:
            _policies.clear()
        _policies[route] = policy
    return policy


def may_retry(route: Route, retries_so_far: int, outcome: Any, method: str, reached: bool,
              budget: RetryBudget) -> bool:
    """Whether to send the request again after `outcome` (a status, CONNECT_FAILURE,
    RESET or REFUSED_STREAM)."""
    return decide_retry(_policy(route), retries_so_far + 1, outcome, method, reached, budget).retry


def new_budget() -> RetryBudget:
    return RetryBudget()
