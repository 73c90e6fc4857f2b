"""/v1/agent/*: this agent's own services and checks (local state, no Raft index).

Registrations take effect locally at once and reach the catalog through anti-entropy.
IDs may contain `/` and `:` (routes match the rest of the path).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mesh.catalog.acl_enforce import Access
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest, NotFound
from mesh.catalog.filter import compile_filter
from mesh.catalog.health import MAINTENANCE, aggregate_status
from mesh.catalog.requests import Fields
from mesh.catalog.structs import CRITICAL, HEALTH_STATES, PASSING, WARNING

from ..acl import REQUEST_TOKEN
from .permissions import access_of
from .query import flag, json_response, read_json

__all__ = ["routes"]

routes = web.RouteTableDef()


def _agent_service(agent: Any, service_id: str) -> dict[str, Any]:
    row = agent.local.service_row(service_id).to_api()
    row.pop("CreateIndex", None)
    row.pop("ModifyIndex", None)
    row["Datacenter"] = agent.cfg.datacenter
    return row


def _agent_check(row: Any) -> dict[str, Any]:
    out = row.to_api()
    out.pop("CreateIndex", None)
    out.pop("ModifyIndex", None)
    return out


def _filtered(request: web.Request, rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pred = compile_filter(request.query.get("filter"))
    return {k: v for k, v in rows.items() if pred is None or pred(v)}


def _visible(request: web.Request, rows: dict[str, dict[str, Any]],
             allowed: Callable[[Access, dict[str, Any]], bool]) -> web.Response:
    """The rows the request's token may read (ACLs), then `?filter`; says when ACLs
    left some out, as Consul does."""
    access = access_of(request)
    kept = {k: v for k, v in rows.items() if allowed(access, v)}
    resp = json_response(request, _filtered(request, kept))
    if len(kept) != len(rows) and not access.anonymous:
        resp.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return resp


@routes.get("/v1/agent/services")
async def services(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    rows = {sid: _agent_service(agent, sid) for sid in sorted(agent.local.services)}
    return _visible(request, rows, lambda access, row: access.can("service", row["Service"], "read"))


@routes.get("/v1/agent/service/{id:.+}")
async def service(request: web.Request) -> web.Response:
    """Hash-blocking: with ?hash, waits until the service's content hash differs."""
    agent = request.app["agent"]
    sid = request.match_info["id"]
    wanted = request.query.get("hash", "")
    if wanted:
        wait = min(parse_duration(request.query.get("wait", "5m"), what="wait time"), agent.cfg.max_query_time)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while agent.local.content_hash(sid) == wanted and loop.time() < deadline:
            event = agent.local_changed
            try:
                await asyncio.wait_for(event.wait(), deadline - loop.time())
            except TimeoutError:
                break
    if sid not in agent.local.services:
        raise NotFound(f"unknown service ID: {sid}")
    body = _agent_service(agent, sid)
    content_hash = agent.local.content_hash(sid)
    body["ContentHash"] = content_hash
    resp = json_response(request, body)
    resp.headers["X-Consul-ContentHash"] = content_hash
    return resp


@routes.put("/v1/agent/service/register")
async def service_register(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    body = await read_json(request)
    token = REQUEST_TOKEN.get()
    if isinstance(body, dict) and token and not Fields(body, "service").has("Token"):
        body = dict(body, Token=token)  # Consul: the service syncs with its registration's token
    access = access_of(request)

    def authorize(registrations: list[Any]) -> None:
        for reg in registrations:
            access.require("service", reg.service.service, "write")
            destination = str((reg.service.proxy or {}).get("DestinationServiceName") or "")
            if reg.service.kind == "connect-proxy" and destination:
                access.require("service", destination, "write")
    agent.register_service(body, source="api", replace_checks=flag(request, "replace-existing-checks"),
                           authorize=authorize)
    return json_response(request, None)


@routes.put("/v1/agent/service/deregister/{id:.+}")
async def service_deregister(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    sid = request.match_info["id"]
    if agent.local.remove_service(sid) is None:
        raise NotFound(f"Unknown service ID {sid!r}. Ensure that the service ID is passed, not the service name.")
    agent.checks.sync()
    return json_response(request, None)


def _enable(request: web.Request) -> bool:
    raw = request.query.get("enable")
    if raw is None:
        raise InvalidRequest("Missing value for enable")
    if raw.lower() not in ("true", "false"):
        raise InvalidRequest(f"Invalid value for enable: {raw!r}")
    return raw.lower() == "true"


@routes.put("/v1/agent/service/maintenance/{id:.+}")
async def service_maintenance(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    sid = request.match_info["id"]
    if not agent.local.service_maintenance(sid, _enable(request), request.query.get("reason", ""), agent.checks.maintenance_definition):
        raise NotFound(f"Unknown service ID {sid!r}")
    return json_response(request, None)


@routes.put("/v1/agent/maintenance")
async def node_maintenance(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.local.node_maintenance(_enable(request), request.query.get("reason", ""), agent.checks.maintenance_definition)
    return json_response(request, None)


@routes.get("/v1/agent/checks")
async def checks(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    rows = {cid: _agent_check(row) for cid, row in sorted(agent.local.check_rows().items())}

    def allowed(access: Access, row: dict[str, Any]) -> bool:
        service = row.get("ServiceName") or ""
        return access.can("service", service, "read") if service else access.can("node", row["Node"], "read")
    return _visible(request, rows, allowed)


@routes.put("/v1/agent/check/register")
async def check_register(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    access = access_of(request)

    def authorize(defn: Any) -> None:
        local = agent.local.services.get(defn.service_id) if defn.service_id else None
        if local is not None:
            access.require("service", local.service.service, "write")
        else:
            access.require("node", agent.cfg.node_name, "write")
    agent.register_check(await read_json(request), source="api", authorize=authorize)
    return json_response(request, None)


@routes.put("/v1/agent/check/deregister/{id:.+}")
async def check_deregister(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.local.remove_check(request.match_info["id"])  # no-op when absent, as in Consul
    agent.checks.sync()
    return json_response(request, None)


async def _ttl(request: web.Request, status: str, output: str) -> web.Response:
    agent = request.app["agent"]
    agent.checks.ttl_update(request.match_info["id"], status, output)
    return json_response(request, None)


@routes.put("/v1/agent/check/pass/{id:.+}")
async def check_pass(request: web.Request) -> web.Response:
    return await _ttl(request, PASSING, request.query.get("note", ""))


@routes.put("/v1/agent/check/warn/{id:.+}")
async def check_warn(request: web.Request) -> web.Response:
    return await _ttl(request, WARNING, request.query.get("note", ""))


@routes.put("/v1/agent/check/fail/{id:.+}")
async def check_fail(request: web.Request) -> web.Response:
    return await _ttl(request, CRITICAL, request.query.get("note", ""))


@routes.put("/v1/agent/check/update/{id:.+}")
async def check_update(request: web.Request) -> web.Response:
    f = Fields(await read_json(request), "body")
    status = f.str("Status")
    if status not in HEALTH_STATES:
        raise InvalidRequest(f"Invalid status {status!r}: must be passing, warning or critical")
    return await _ttl(request, status, f.str("Output"))


_HEALTH_CODES = {PASSING: 200, WARNING: 429, CRITICAL: 503, MAINTENANCE: 503}


def _health_answer(request: web.Request, entries: list[dict[str, Any]], single: bool) -> web.Response:
    status = aggregate_status([c for e in entries for c in e["Checks"]]) if entries else CRITICAL
    code = _HEALTH_CODES[status]
    if request.query.get("format") == "text" or request.headers.get("Accept", "").startswith("text/plain"):
        return web.Response(status=code, text=status, content_type="text/plain")
    body: Any = entries[0] if single else entries
    return json_response(request, body, status=code)


def _entries(agent: Any, service_ids: list[str]) -> list[dict[str, Any]]:
    out = []
    for sid in service_ids:
        checks = [_agent_check(c) for c in agent.local.service_checks(sid)]
        out.append({"AggregatedStatus": aggregate_status(checks), "Service": _agent_service(agent, sid),
                    "Checks": checks})
    return out


@routes.get("/v1/agent/health/service/name/{name}")
async def health_by_name(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    name = request.match_info["name"]
    ids = [sid for sid, s in sorted(agent.local.services.items()) if s.service.service.lower() == name.lower()]
    if not ids:
        return web.Response(status=404, text=f"ServiceName {name} Not Found", content_type="text/plain")
    return _health_answer(request, _entries(agent, ids), single=False)


@routes.get("/v1/agent/health/service/id/{id:.+}")
async def health_by_id(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    sid = request.match_info["id"]
    if sid not in agent.local.services:
        return web.Response(status=404, text=f"ServiceId {sid} not found", content_type="text/plain")
    return _health_answer(request, _entries(agent, [sid]), single=True)


@routes.put("/v1/agent/join/{address}")
async def join(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    await agent.join(request.match_info["address"])
    return json_response(request, None)


@routes.put("/v1/agent/token/{kind}")
async def set_token(request: web.Request) -> web.Response:
    """Consul's `consul acl set-agent-token`: replace one of this agent's tokens."""
    agent = request.app["agent"]
    if not agent.cfg.acl_enabled:
        raise web.HTTPUnauthorized(text="ACL support disabled")
    f = Fields(await read_json(request), "body")
    agent.set_token(request.match_info["kind"], f.str("Token"))
    return json_response(request, None)


@routes.put("/v1/agent/reload")
async def reload(request: web.Request) -> web.Response:
    request.app["agent"].reload()
    return json_response(request, None)
