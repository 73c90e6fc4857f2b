"""/v1/session/*, as Consul answers them.

Create and destroy are commands (the ID is made here, so the state machine makes
none); renew goes to the leader, which alone keeps the TTL clocks
(agent/server/sessions.py); info, node and list are blocking reads.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from mesh.catalog.commands import MessageType, SessionDestroyRequest
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.sessions import parse_session

from ..acl import REQUEST_TOKEN
from .query import json_response, read, read_json, read_response

__all__ = ["routes", "session_id"]

routes = web.RouteTableDef()


def session_id(request: web.Request) -> str:
    """The {id} of the path, which must be a UUID (Consul's sessions table is indexed
    by one: anything else can name no session)."""
    raw = request.match_info["id"]
    if not raw:
        raise InvalidRequest("Missing session")
    try:
        uuid.UUID(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid session ID {raw!r}: must be a UUID") from None
    if len(raw) != 36:
        raise InvalidRequest(f"Invalid session ID {raw!r}: UUID must be 36 characters")
    return raw


@routes.put("/v1/session/create")
async def create(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    body = await read_json(request, optional=True)
    session = parse_session(body, str(uuid.uuid4()), agent.cfg.node_name, agent.cfg.session_ttl_min)
    result = await agent.apply(MessageType.SESSION_CREATE, session)
    return json_response(request, {"ID": result["ID"]})


@routes.put("/v1/session/destroy/{id:.*}")
async def destroy(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    await agent.apply(MessageType.SESSION_DESTROY, SessionDestroyRequest((session_id(request),), 0.0, "destroyed"))
    return json_response(request, True)


@routes.put("/v1/session/renew/{id:.*}")
async def renew(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    sid = session_id(request)
    entry = await agent.backend.session_renew(sid, REQUEST_TOKEN.get())
    if entry is None:
        return web.Response(status=404, text=f"Session id '{sid}' not found", content_type="text/plain")
    return json_response(request, [entry])


@routes.get("/v1/session/info/{id:.*}")
async def info(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "session.info", {"id": session_id(request)}))


@routes.get("/v1/session/node/{node:.*}")
async def node_sessions(request: web.Request) -> web.Response:
    node = request.match_info["node"]
    if not node:
        raise InvalidRequest("Missing node name")
    return read_response(request, await read(request, "session.node", {"node": node}))


@routes.get("/v1/session/list")
async def list_sessions(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "session.list"))
