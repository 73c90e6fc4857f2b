"""Query options and blocking reads, shared by every read endpoint.

Consul's rules (../shared/reference/consul.md §2): `?index` blocks until the result's
index is greater, for `?wait` (Go duration, default 5 min, capped at 10 min) plus up
to wait/16 of jitter, then answers with the current data and index. `X-Consul-Index`
is never 0. `?stale` reads any server; the default read needs a server that knows a
leader (a leader whose lease lapsed does not count); `?consistent` runs a barrier first.
A blocking read whose client disconnects is cancelled at once (on a client agent, so
is its Read on the server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from mesh.catalog import jsonbody
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.filter import Predicate, compile_filter

from ..acl import REQUEST_TOKEN
from ..metrics import HTTP
from ..reads import ReadOptions, ReadResult
from .listener import on_disconnect

__all__ = ["QueryOptions", "parse_options", "read", "read_response", "json_response", "read_json", "read_body", "flag"]

T = TypeVar("T")
_SAME: Any = object()

MAX_BODY = 512 * 1024


def flag(request: web.Request, name: str) -> bool:
    """Consul's boolean params: present means true, unless it says false."""
    if name not in request.query:
        return False
    return request.query[name].lower() not in ("false", "0", "no")


@dataclass(frozen=True)
class QueryOptions:
    min_index: int = 0
    wait: float = 300.0
    stale: bool = False
    consistent: bool = False
    datacenter: str = ""
    filter: Predicate | None = None
    node_meta: dict[str, str] | None = None
    tags: tuple[str, ...] = ()
    pretty: bool = False


def parse_options(request: web.Request) -> QueryOptions:
    agent = request.app["agent"]
    q = request.query
    min_index = 0
    if "index" in q and q["index"] != "":
        try:
            min_index = int(q["index"])
        except ValueError:
            raise InvalidRequest(f"Invalid index: {q['index']!r}") from None
        if min_index < 0:
            raise InvalidRequest("Invalid index: negative")
    wait = agent.cfg.default_query_time
    if "wait" in q:
        raw = q["wait"]
        if raw and raw[-1].isdigit():
            raise InvalidRequest(f"Invalid wait time: {raw!r} (needs a unit, e.g. 10s)")
        wait = parse_duration(raw, what="wait time")
    wait = min(wait, agent.cfg.max_query_time)
    stale, consistent = flag(request, "stale"), flag(request, "consistent")
    if stale and consistent:
        raise InvalidRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
    node_meta: dict[str, str] = {}
    for item in q.getall("node-meta", []):
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise InvalidRequest(f"Invalid node-meta {item!r}: expected key:value")
        node_meta[key] = value
    return QueryOptions(
        min_index=min_index,
        wait=wait,
        stale=stale,
        consistent=consistent,
        datacenter=q.get("dc", ""),
        filter=compile_filter(q.get("filter")),
        node_meta=node_meta,
        tags=tuple(q.getall("tag", [])),
        pretty="pretty" in q,
    )


async def read(request: web.Request, name: str, params: dict[str, Any] | None = None) -> ReadResult:
    """Run the named query (agent.queries) through this agent's backend, with the
    request's blocking and consistency options."""
    agent = request.app["agent"]
    opts = parse_options(request)
    agent.check_datacenter(opts.datacenter)
    full = dict(params or {})
    full.setdefault("filter", request.query.get("filter"))
    full.setdefault("node_meta", opts.node_meta or {})
    full.setdefault("tags", list(opts.tags))
    blocking = bool(opts.min_index)
    unwatch: Callable[[], None] = _nothing
    if blocking:
        # nobody is left to answer once the client has gone: stop waiting at once
        # (a thousand abandoned waiters on one service slowed every write to it)
        task = asyncio.current_task()
        if task is not None:
            unwatch = on_disconnect(request, task.cancel)
        HTTP.blocking.inc()
    try:
        return await agent.backend.read(  # type: ignore[no-any-return]
            name, full, ReadOptions(opts.min_index, opts.wait, opts.stale, opts.consistent), REQUEST_TOKEN.get())
    finally:
        if blocking:
            unwatch()
            HTTP.blocking.dec()


def _nothing() -> None:
    pass


def read_response(request: web.Request, result: ReadResult, body: Any = _SAME, status: int = 200) -> web.Response:
    """The JSON answer to a read, with X-Consul-Index and the leader headers."""
    resp = json_response(request, result.value if body is _SAME else body, status=status)
    request.app["agent"].set_read_headers(resp, result.index, consistency(request), result.known_leader,
                                          result.last_contact_ms)
    if result.filtered:
        resp.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return resp


def consistency(request: web.Request) -> str:
    if "consistent" in request.query:
        return "consistent"
    return "stale" if "stale" in request.query else "leader"


def json_response(request: web.Request, body: Any, *, index: int | None = None, status: int = 200) -> web.Response:
    pretty = "pretty" in request.query
    text = json.dumps(body, indent=4 if pretty else None, separators=None if pretty else (",", ":"))
    resp = web.Response(text=text, content_type="application/json", status=status)
    if index is not None:
        request.app["agent"].set_read_headers(resp, index, consistency(request))
    return resp


async def read_body(request: web.Request, limit: int, message: Callable[[int], str] | None = None) -> bytes:
    """The whole body, refused with 413 past `limit` without reading the rest.
    `message(size)` is the 413's text where Consul's has its own wording."""
    def too_large(size: int) -> web.HTTPRequestEntityTooLarge:
        text = message(size) if message else f"Request body too large (limit {limit} bytes)"
        return web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size, text=text)

    if request.content_length is not None and request.content_length > limit:
        raise too_large(request.content_length)
    chunks: list[bytes] = []
    total = 0
    while chunk := await request.content.read(65536):
        total += len(chunk)
        if total > limit:
            raise too_large(total)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request, *, optional: bool = False) -> Any:
    """The body as JSON, through the one strict reader (mesh.catalog.jsonbody): NaN,
    Infinity, 1e999, integers past 64 bits and deep nesting are 400s naming the field."""
    body = await read_body(request, MAX_BODY)
    if not body.strip():
        if optional:
            return None
        raise InvalidRequest("Request decode failed: empty body")
    return jsonbody.loads(body)
