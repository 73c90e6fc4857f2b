"""FakeAgent: the local agent's HTTP API as the sidecar proxy sees it, in memory.

For the proxy's unit tests (and api's own): a real aiohttp server on 127.0.0.1 that
serves exactly the endpoints api.agent calls, from state the test sets, with real
blocking queries (a `?index` or `?hash` request waits until a setter changes what it
reads, or `wait` runs out). Shapes, headers and error texts are copied from our agent's
handlers (agent/http/agent_api.py, connect_ca.py, health.py, intentions.py):

- GET  /v1/agent/services, /v1/agent/service/:id (hash-blocking, X-Consul-ContentHash)
- PUT  /v1/agent/service/register, /v1/agent/service/deregister/:id
- PUT  /v1/agent/check/pass|warn|fail/:id (TTL checks of registered services)
- GET  /v1/agent/connect/ca/leaf/:service, /v1/agent/connect/ca/roots (index-blocking)
- GET  /v1/health/connect/:service (?passing, index-blocking per service)
- GET  /v1/connect/intentions/match?by=&name= (index-blocking), and on every answer
  X-Consul-Default-ACL-Policy
- PUT  /v1/agent/mesh/proxies/:id/ready (a proxy's ready report; 404 unless :id is a
  registered connect-proxy, as our agent answers)

Every request is recorded (`requests`). `inject()` makes a path answer something else
(a 500, a 403, garbage) for the next requests, as a failing or hostile agent would.
`stop()` drops the listener and every open connection, as a killed agent would;
`start()` binds the same port again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, MultiDict

from mesh.catalog.authz import precedence, sort_intentions
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.intentions import Intention, intention_from_api
from mesh.catalog.structs import CRITICAL, PASSING, WARNING, evolve

from .builders import connect_entry, leaf_body, roots_body, sidecar_service

__all__ = ["FakeAgent", "Recorded", "sidecar_service", "connect_entry", "leaf_body", "roots_body"]

MAX_WAIT = 600.0  # Consul's max_query_time


@dataclass(frozen=True)
class Recorded:
    """One request as the fake agent received it."""

    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def _json(body: Any, index: int | None = None) -> web.Response:
    resp = web.Response(text=json.dumps(body, separators=(",", ":")), content_type="application/json")
    if index is not None:
        resp.headers.update({"X-Consul-Index": str(max(1, index)), "X-Consul-KnownLeader": "true",
                             "X-Consul-LastContact": "0"})
    return resp


def _content_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class _BadQuery(Exception):
    pass


class FakeAgent:
    """Use as `async with FakeAgent() as agent:`; `agent.address` is host:port."""

    def __init__(self, *, port: int = 0, datacenter: str = "dc1", node: str = "fake-node") -> None:
        self.port = port
        self.datacenter = datacenter
        self.node = node
        self.requests: list[Recorded] = []
        self.extra_wait = 0.0  # added to every blocking wait, as Consul's wait/16 jitter
        self.default_allow = True
        self.services: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, dict[str, Any]] = {}  # TTL checks: CheckID -> {ServiceID, Status, Output}
        self._leaves: dict[str, dict[str, Any]] = {}
        self._roots: dict[str, Any] = {"ActiveRootID": "", "TrustDomain": "", "Roots": []}
        self._roots_index = 0
        self._connect: dict[str, tuple[int, list[dict[str, Any]]]] = {}
        self._intentions: dict[str, list[Intention]] = {}
        self._intentions_index = 0
        self._config: dict[str, tuple[int, dict[str, dict[str, Any]]]] = {}  # kind -> (index, name -> entry)
        self._index = 0
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._injected: dict[str, list[Any]] = {}  # path -> [response maker, times left or None]

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (on the port of the last start, if any); returns once bound."""
        app = web.Application(middlewares=[self._middleware])
        app.add_routes(self._routes())
        # a killed agent answers nothing more; 0 would mean "wait for every handler" to aiohttp
        self._runner = web.AppRunner(app, shutdown_timeout=0.01, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Close the listener and every connection, blocked requests included."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def requests_to(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def inject(self, path: str, *, status: int = 500, body: str | bytes = "injected failure",
               content_type: str = "text/plain", headers: dict[str, str] | None = None,
               times: int | None = None) -> None:
        """Answer requests to `path` with this instead (the next `times` of them, or
        all until `clear_injections()`)."""
        def make() -> web.Response:
            raw = body.encode() if isinstance(body, str) else body
            resp = web.Response(status=status, body=raw, content_type=content_type)
            resp.headers.update(headers or {})
            return resp

        self._injected[path] = [make, times]

    def clear_injections(self) -> None:
        self._injected.clear()

    # ---- state (each change wakes the blocking requests that read it) --------------------

    def _bump(self) -> int:
        self._index += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return self._index

    def set_service(self, service: dict[str, Any]) -> None:
        """Register or replace a service, given in AgentService shape (ID defaults to
        Service); see `sidecar_service` for a sidecar's."""
        body = dict(service)
        body.setdefault("ID", body.get("Service", ""))
        self.services[body["ID"]] = body
        self._bump()

    def remove_service(self, service_id: str) -> None:
        self.services.pop(service_id, None)
        for check_id in [c for c, v in self.checks.items() if v["ServiceID"] == service_id]:
            del self.checks[check_id]
        self._bump()

    def set_leaf(self, service: str, leaf: dict[str, Any]) -> None:
        """Serve `leaf` (see `leaf_body`) for `service`, with a new ModifyIndex."""
        index = self._bump()
        self._leaves[service] = dict(leaf, CreateIndex=index, ModifyIndex=index)

    def set_roots(self, roots: dict[str, Any]) -> None:
        """Serve `roots` (see `roots_body`)."""
        self._roots, self._roots_index = dict(roots), self._bump()

    def set_connect_endpoints(self, name: str, entries: Iterable[dict[str, Any]]) -> None:
        """The /v1/health/connect/<name> entries (see `connect_entry`)."""
        self._connect[name.lower()] = (self._bump(), [dict(e) for e in entries])

    def connect_endpoints(self, name: str) -> list[dict[str, Any]]:
        """A copy of what `set_connect_endpoints` last set for `name`."""
        return [dict(e) for e in self._connect.get(name.lower(), (0, []))[1]]

    def set_intentions(self, destination: str, intentions: Iterable[Intention | dict[str, Any]],
                       default_allow: bool | None = None) -> None:
        """Replace the intentions grouped under `destination` (rows or API dicts); a
        match answers every stored intention whose destination is the name asked or
        `*`, in precedence order. `default_allow` (kept when None) is the policy sent
        in X-Consul-Default-ACL-Policy."""
        rows = [intention_from_api(i) if isinstance(i, dict) else
                evolve(i, precedence=precedence(i.source_name, i.destination_name)) for i in intentions]
        self._intentions[destination] = rows
        if default_allow is not None:
            self.default_allow = default_allow
        self._intentions_index = self._bump()

    def set_config_entry(self, entry: dict[str, Any]) -> None:
        """Store a config entry (Kind, Name, ...) as `/v1/config` would, with new indexes."""
        kind, name = entry["Kind"], entry["Name"]
        index = self._bump()
        _, entries = self._config.get(kind, (0, {}))
        created = entries.get(name, {}).get("CreateIndex", index)
        entries = {**entries, name: dict(entry, CreateIndex=created, ModifyIndex=index)}
        self._config[kind] = (index, entries)

    def delete_config_entry(self, kind: str, name: str) -> None:
        _, entries = self._config.get(kind, (0, {}))
        self._config[kind] = (self._bump(), {k: v for k, v in entries.items() if k != name})

    # ---- HTTP ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.requests.append(Recorded(request.method, request.path, MultiDict(request.query),
                                      CIMultiDict(request.headers)))
        injected = self._injected.get(request.path)
        try:
            if injected is not None:
                resp = injected[0]()
                if injected[1] is not None:
                    injected[1] -= 1
                    if injected[1] <= 0:
                        del self._injected[request.path]
            else:
                resp = await handler(request)
        except (_BadQuery, InvalidRequest) as exc:
            resp = _text(400, str(exc))
        except ValueError as exc:  # a body that is not JSON
            resp = _text(400, f"Request decode failed: {exc}")
        except web.HTTPException as exc:
            resp = _text(exc.status, exc.text or exc.reason)
        resp.headers["X-Consul-Default-ACL-Policy"] = "allow" if self.default_allow else "deny"
        if "X-Consul-Index" in resp.headers:
            resp.headers["X-Consul-Effective-Consistency"] = "stale" if "stale" in request.query else "leader"
        return resp

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/agent/services", self._services),
            web.get("/v1/agent/service/{id:.+}", self._service),
            web.put("/v1/agent/service/register", self._register),
            web.put("/v1/agent/service/deregister/{id:.+}", self._deregister),
            web.put("/v1/agent/check/{status:pass|warn|fail}/{id:.+}", self._ttl),
            web.get("/v1/agent/connect/ca/leaf/{service}", self._leaf),
            web.get("/v1/agent/connect/ca/roots", self._roots_handler),
            web.get("/v1/health/connect/{service}", self._health_connect),
            web.get("/v1/connect/intentions/match", self._match),
            web.put("/v1/agent/mesh/proxies/{id:.+}/ready", self._ready),
            web.get("/v1/config/{kind}", self._config_list),
            web.get("/v1/config/{kind}/{name}", self._config_get),
        ]

    async def _block(self, request: web.Request, unchanged: Callable[[], bool]) -> None:
        """Wait while `unchanged()`, up to ?wait (Go duration, default 5 min, at most
        10) plus `extra_wait`."""
        raw = request.query.get("wait", "5m")
        if raw and raw[-1].isdigit():
            raise _BadQuery(f"Invalid wait time: {raw!r} (needs a unit, e.g. 10s)")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(parse_duration(raw, what="wait time"), MAX_WAIT) + self.extra_wait
        while unchanged() and (remaining := deadline - loop.time()) > 0:
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                break

    async def _block_on_index(self, request: web.Request, current: Callable[[], int]) -> None:
        raw = request.query.get("index", "")
        if not raw:
            return
        if not (raw.isascii() and raw.isdigit()):
            raise _BadQuery(f"Invalid index: {raw!r}")
        min_index = int(raw)
        if min_index:
            await self._block(request, lambda: current() <= min_index)

    def _agent_service(self, service_id: str) -> dict[str, Any]:
        return dict(self.services[service_id], Datacenter=self.datacenter)

    async def _services(self, request: web.Request) -> web.Response:
        return _json({sid: self._agent_service(sid) for sid in sorted(self.services)})

    def _hash_of(self, service_id: str) -> str:
        return _content_hash(self.services[service_id]) if service_id in self.services else ""

    async def _service(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        wanted = request.query.get("hash", "")
        if wanted:
            await self._block(request, lambda: self._hash_of(sid) == wanted)
        if sid not in self.services:
            return _text(404, f"unknown service ID: {sid}")
        content_hash = self._hash_of(sid)
        resp = _json(dict(self._agent_service(sid), ContentHash=content_hash))
        resp.headers["X-Consul-ContentHash"] = content_hash
        return resp

    async def _register(self, request: web.Request) -> web.Response:
        """Enough of the agent's registration for a proxy that registers itself: the
        service in AgentService shape and its TTL checks (critical until passed)."""
        body = await request.json()
        name = body.get("Name") or body.get("Service") or ""
        if not name:
            return _text(400, "Missing service name")
        sid = body.get("ID") or name
        keys = ("Kind", "Tags", "Address", "Meta", "Port", "Proxy", "Connect")
        self.services[sid] = {"ID": sid, "Service": name, **{k: body[k] for k in keys if k in body}}
        checks = [body["Check"]] if body.get("Check") else list(body.get("Checks") or [])
        for n, check in enumerate(checks, 1):
            default_id = f"service:{sid}" if len(checks) == 1 else f"service:{sid}:{n}"
            check_id = check.get("CheckID") or check.get("ID") or default_id
            self.checks[check_id] = {"ServiceID": sid, "Status": check.get("Status") or CRITICAL, "Output": ""}
        self._bump()
        return _json(None)

    async def _deregister(self, request: web.Request) -> web.Response:
        sid = request.match_info["id"]
        if sid not in self.services:
            return _text(404, f"Unknown service ID {sid!r}. Ensure that the service ID is passed, not the service name.")
        self.remove_service(sid)
        return _json(None)

    async def _ready(self, request: web.Request) -> web.Response:
        proxy_id = request.match_info["id"]
        if self.services.get(proxy_id, {}).get("Kind") != "connect-proxy":
            return _text(404, f"unknown proxy service ID: {proxy_id}")
        return _json({"ProxyServiceID": proxy_id, "State": "ready"})

    async def _ttl(self, request: web.Request) -> web.Response:
        check_id = request.match_info["id"]
        if check_id not in self.checks:
            return _text(404, f"Unknown check ID {check_id!r}")
        status = {"pass": PASSING, "warn": WARNING, "fail": CRITICAL}[request.match_info["status"]]
        self.checks[check_id].update(Status=status, Output=request.query.get("note", ""))
        self._bump()
        return _json(None)

    async def _leaf(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        await self._block_on_index(request, lambda: int(self._leaves.get(service, {}).get("ModifyIndex", 0)))
        leaf = self._leaves.get(service)
        if leaf is None:
            return _text(500, f"fake agent: no leaf set for service {service!r}")
        return _json(leaf, index=leaf["ModifyIndex"])

    async def _roots_handler(self, request: web.Request) -> web.Response:
        await self._block_on_index(request, lambda: self._roots_index)
        return _json(self._roots, index=self._roots_index)

    async def _health_connect(self, request: web.Request) -> web.Response:
        name = request.match_info["service"].lower()

        def current() -> int:
            return self._connect[name][0] if name in self._connect else self._index

        await self._block_on_index(request, current)
        entries = self._connect.get(name, (0, []))[1]
        passing = "passing" in request.query and request.query["passing"].lower() not in ("false", "0", "no")
        if passing:
            entries = [e for e in entries if all(c.get("Status") == PASSING for c in e.get("Checks") or [])]
        return _json(entries, index=current())

    async def _config_list(self, request: web.Request) -> web.Response:
        kind = request.match_info["kind"]

        def current() -> int:
            return self._config[kind][0] if kind in self._config else self._index

        await self._block_on_index(request, current)
        entries = self._config.get(kind, (0, {}))[1]
        return _json([entries[n] for n in sorted(entries)], index=current())

    async def _config_get(self, request: web.Request) -> web.Response:
        kind, name = request.match_info["kind"], request.match_info["name"]

        def current() -> int:
            return self._config[kind][0] if kind in self._config else self._index

        await self._block_on_index(request, current)
        entry = self._config.get(kind, (0, {}))[1].get(name)
        if entry is None:
            return _text(404, f'Config entry not found for "{kind}" / "{name}"')
        return _json(entry, index=current())

    async def _match(self, request: web.Request) -> web.Response:
        by = request.query.get("by", "")
        if by not in ("source", "destination"):
            return _text(400, "required query parameter 'by' must be source or destination")
        names = request.query.getall("name", [])
        if not names:
            return _text(400, "required query parameter 'name' not set")
        await self._block_on_index(request, lambda: self._intentions_index)
        every = [i for rows in self._intentions.values() for i in rows]
        out = {}
        for name in names:
            rows = [i for i in every
                    if (i.destination_name if by == "destination" else i.source_name).lower() in ("*", name.lower())]
            out[name] = [i.to_api() for i in sort_intentions(rows)]
        return _json(out, index=self._intentions_index)
