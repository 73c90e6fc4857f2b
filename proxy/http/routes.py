"""Consul's `service-router` for one upstream: which destination a request goes to. Pure.

`compile_router(entry, upstream)` turns the (already validated) config entry into a
`Router` once per entry change; `Router.match(view)` runs per request and returns one
of the precompiled `Route` values, so routing allocates nothing.

Semantics, as Consul documents and configures Envoy:

- Routes are tried in order; the first whose `Match.HTTP` matches wins (rules.py has
  the rule kinds). A route without `Match` matches every request.
- No route matches (or there is no router): the default route, to the upstream itself
  with no timeout, retry or header change; its name is "default".
- `Destination.Service` defaults to the upstream. `RequestTimeout`/`IdleTimeout` are
  Go durations; 0 or absent means none.
- Retries: `NumRetries` defaults to 1 when any retry condition is set (Consul leaves
  the field unset and Envoy's default is one retry); see retry.py.
- `PrefixRewrite` replaces the part of the path that a `PathPrefix` or `PathExact`
  matched, as Envoy's `prefix_rewrite` does (`/api` → `/` turns `/api/x` into `//x`:
  write `/api/` → `/` to avoid it, as Envoy's docs advise). Consul accepts it only
  with those two matches; with any other it is ignored here.
- `RequestHeaders`/`ResponseHeaders`: `Remove` first, then `Set` (replaces every value
  of the name), then `Add` (appends), the order Envoy applies them. Values are literal:
  Envoy's `%VARIABLE%` substitutions are not implemented.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.durations import parse_duration

from .request_view import RequestView, parse_query
from .rules import HttpMatch

__all__ = ["HeaderOps", "Route", "Router", "compile_router", "compile_chain_router", "rewrite_target", "NO_HEADER_OPS",
           "header_ops"]

Header = tuple[str, str]


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Compiled `RequestHeaders`/`ResponseHeaders` of a destination."""

    add: tuple[Header, ...] = ()
    set: tuple[Header, ...] = ()
    remove: frozenset[str] = frozenset()  # lower-case names

    def __bool__(self) -> bool:
        return bool(self.add or self.set or self.remove)

    def apply(self, headers: list[Header]) -> list[Header]:
        """The header pairs after the changes (a new list; `headers` itself when there
        is nothing to change, the common case)."""
        if not self:
            return headers
        dropped = self.remove | {name.lower() for name, _ in self.set}
        out = [pair for pair in headers if pair[0].lower() not in dropped] if dropped else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out


NO_HEADER_OPS = HeaderOps()


def header_ops(raw: Mapping[str, Any] | None) -> HeaderOps:
    if not raw:
        return NO_HEADER_OPS
    return HeaderOps(
        add=tuple((str(k), str(v)) for k, v in (raw.get("Add") or {}).items()),
        set=tuple((str(k), str(v)) for k, v in (raw.get("Set") or {}).items()),
        remove=frozenset(str(n).lower() for n in raw.get("Remove") or ()),
    )


@dataclass(frozen=True, slots=True)
class Route:
    """Where a matched request goes and how it is treated on the way."""

    name: str  # "route-0", "route-1", ... or "default": the metrics label
    service: str
    service_subset: str = ""
    prefix_rewrite: str | None = None
    request_timeout: float | None = None  # seconds, the whole request with its retries
    idle_timeout: float | None = None
    num_retries: int = 0  # as written; retry.RetryPolicy applies Consul's default
    retry_on_connect_failure: bool = False
    retry_on: frozenset[str] = frozenset()
    retry_on_status_codes: frozenset[int] = frozenset()
    request_headers: HeaderOps = NO_HEADER_OPS
    response_headers: HeaderOps = NO_HEADER_OPS
    rewrite_length: int | None = field(default=None, repr=False)  # chars a rewrite replaces
    next_node: str = ""  # the discovery chain's node it leads to ("" = the chain's start)

    @property
    def has_retry_features(self) -> bool:
        return bool(self.num_retries or self.retry_on_connect_failure or self.retry_on or self.retry_on_status_codes)


def _seconds(value: Any, what: str) -> float | None:
    if value in (None, "", 0):
        return None
    seconds = parse_duration(value, what=what)
    return seconds or None


def _route(name: str, upstream: str, dest: Mapping[str, Any], http: Mapping[str, Any], next_node: str = "") -> Route:
    rewrite = dest.get("PrefixRewrite") or None
    matched = http.get("PathPrefix") or http.get("PathExact") or None
    return Route(
        name=name,
        service=str(dest.get("Service") or upstream),
        service_subset=str(dest.get("ServiceSubset") or ""),
        prefix_rewrite=str(rewrite) if rewrite and matched else None,
        request_timeout=_seconds(dest.get("RequestTimeout"), f"{name} RequestTimeout"),
        idle_timeout=_seconds(dest.get("IdleTimeout"), f"{name} IdleTimeout"),
        num_retries=int(dest.get("NumRetries") or 0),
        retry_on_connect_failure=bool(dest.get("RetryOnConnectFailure")),
        retry_on=frozenset(str(v) for v in dest.get("RetryOn") or ()),
        retry_on_status_codes=frozenset(int(c) for c in dest.get("RetryOnStatusCodes") or ()),
        request_headers=header_ops(dest.get("RequestHeaders")),
        response_headers=header_ops(dest.get("ResponseHeaders")),
        rewrite_length=len(str(matched)) if rewrite and matched else None,
        next_node=next_node,
    )


class Router:
    """The routes of one upstream, in order, and its default route."""

    __slots__ = ("upstream", "routes", "default", "_reads_query")

    def __init__(self, upstream: str, routes: Iterable[tuple[HttpMatch, Route]] = (),
                 default: Route | None = None) -> None:
        self.upstream = upstream
        self.routes = tuple(routes)
        self.default = default or Route(name="default", service=upstream)
        self._reads_query = any(m.query for m, _ in self.routes)

    def match(self, view: RequestView) -> Route:
        """The first route whose match the request meets, else the default."""
        params = parse_query(view.query) if self._reads_query else None  # once for all routes
        for match, route in self.routes:
            if match.matches(view, params):
                return route
        return self.default

    def names(self) -> list[str]:
        """Every route name, for metrics labels created up front."""
        return [route.name for _, route in self.routes] + [self.default.name]


def compile_router(entry: Mapping[str, Any] | None, upstream: str) -> Router:
    """The router of `upstream` from its `service-router` entry (None: no router)."""
    if not entry:
        return Router(upstream)
    compiled = []
    for i, raw in enumerate(entry.get("Routes") or ()):
        http = (raw.get("Match") or {}).get("HTTP") or {}
        name = f"route-{i}"
        compiled.append((HttpMatch(http), _route(name, upstream, raw.get("Destination") or {}, http)))
    return Router(upstream, compiled)


def compile_chain_router(upstream: str, routes: list[tuple[Mapping[str, Any], str]]) -> Router:
    """The router of a compiled discovery chain: `routes` are (definition, next node)
    pairs in order, the last being the catch-all the chain compiler appends (the
    router's "default" route)."""
    compiled = []
    for i, (raw, next_node) in enumerate(routes[:-1]):
        http = (raw.get("Match") or {}).get("HTTP") or {}
        name = f"route-{i}"
        compiled.append((HttpMatch(http), _route(name, upstream, raw.get("Destination") or {}, http, next_node)))
    default = Route(name="default", service=upstream, next_node=routes[-1][1] if routes else "")
    return Router(upstream, compiled, default)


def rewrite_target(route: Route, target: str) -> str:
    """`target` (path and query, as forwarded) with the matched prefix replaced by the
    route's `PrefixRewrite`; unchanged when the route has none."""
    if route.prefix_rewrite is None or route.rewrite_length is None:
        return target
    return route.prefix_rewrite + target[route.rewrite_length:]
