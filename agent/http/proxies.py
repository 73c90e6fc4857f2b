"""/v1/agent/mesh/proxies: this agent's sidecar proxy processes (mesh's own endpoints).

GET lists every sidecar proxy the agent runs or would run, keyed by proxy service ID,
with what the supervisor knows (pid, state, restarts, last exit) and what the proxy
last reported (listeners, leaf expiry, config age). A proxy reads it at start: when
its sidecar is `Supervised` and it was not started by the agent, it refuses to run.

PUT .../<id>/ready is the proxy saying its listeners are open (the body is optional;
see agent/proxies/readiness.py). The agent records it and runs the sidecar's checks at
once, so "Connect Sidecar Listening" passes now rather than up to 10 s later. Proxies
repeat it to refresh what they report.
"""

from __future__ import annotations

from aiohttp import web

from mesh.catalog.errors import NotFound

from ..proxies.readiness import parse_ready_report
from ..proxies.supervisor import ReportRejected
from .query import json_response, read_json

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/agent/mesh/proxies")
async def proxies(request: web.Request) -> web.Response:
    return json_response(request, request.app["agent"].proxies.describe())


@routes.put("/v1/agent/mesh/proxies/{id:.+}/ready")
async def ready(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    proxy_id = request.match_info["id"]
    report = parse_ready_report(await read_json(request, optional=True))
    local = agent.local.services.get(proxy_id)
    if local is None or local.service.kind != "connect-proxy":
        raise NotFound(f"unknown proxy service ID: {proxy_id}")
    try:
        agent.proxies.report_ready(proxy_id, report)
    except ReportRejected as exc:
        raise web.HTTPConflict(text=str(exc)) from None
    agent.checks.run_now(proxy_id)
    return json_response(request, agent.proxies.describe().get(proxy_id))
