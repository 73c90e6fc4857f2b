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

from . import tracing
from .message import Request
from .normalize import BadRequestTarget, split_target
from .permissions import L7Decision
from .permissions import authorize as authorize_request
from .request_view import RequestView
from .retry import CONNECT_FAILURE, REFUSED_STREAM, RESET, RetryBudget, RetryPolicy, decide_retry
from .routes import Route, Router, compile_router, rewrite_target

__all__ = [
    "BadRequest", "Parsed", "parse_request", "authorize", "trace", "with_trace_headers", "route",
    "request_timeout", "rewritten_target", "request_headers", "response_editor", "endpoints_key", "may_retry",
    "rng", "new_budget", "compile_router_entry", "DEFAULT_REQUEST_TIMEOUT", "CONNECT_FAILURE", "RESET",
    "REFUSED_STREAM",
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


# ---- routes ------------------------------------------------------------------------------------
_default_routers: dict[str, Router] = {}


def compile_router_entry(entry: dict[str, Any]) -> Router:
    """A service-router entry as the router of the service it names."""
    return compile_router(entry, str(entry.get("Name", "")))


def route(config: Any, spec: Any, parsed: Parsed) -> Route:
    router = config.routers.get(spec.destination_name)
    if router is None:
        router = _default_routers.get(spec.destination_name)
        if router is None:
            router = _default_routers[spec.destination_name] = Router(spec.destination_name)
    return router.match(parsed.view)


def request_timeout(route: Route) -> float:
    return route.request_timeout or DEFAULT_REQUEST_TIMEOUT


def rewritten_target(route: Route, parsed: Parsed) -> bytes:
    if route.prefix_rewrite is None:
        return parsed.target
    return rewrite_target(route, parsed.target.decode("latin-1")).encode("latin-1")


def _edit(ops: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    text = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
    return [(n.encode("latin-1"), v.encode("latin-1")) for n, v in ops.apply(text)]


def request_headers(route: Route, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return _edit(route.request_headers, headers) if route.request_headers else headers


def response_editor(route: Route) -> Any:
    ops = route.response_headers
    if not ops:
        return None
    return lambda headers: _edit(ops, headers)


def endpoints_key(spec: Any, route: Route) -> str:
    """Whose instances serve the route: the upstream's, or another service's (watched
    by the proxy for every service its routers name)."""
    return str(spec.key) if route.service == spec.destination_name else route.service


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
