"""/v1/connect/intentions* and /v1/agent/connect/authorize.

Writes are stamped here (ID, CreatedAt, UpdatedAt) and replicated as commands, so
the state machine never reads a clock. Authorize answers from the agent's own cache.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from mesh.ca.spiffe import parse_service_id
from mesh.catalog.commands import MessageType
from mesh.catalog.errors import InvalidRequest, NotFound
from mesh.catalog.intentions import parse_intention
from mesh.catalog.requests import Fields

from .permissions import access_of
from .query import json_response, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _query(request: web.Request, *names: str) -> list[str]:
    values = []
    for name in names:
        value = request.query.get(name, "")
        if not value:
            raise InvalidRequest(f"required query parameter '{name}' not set")
        values.append(value)
    return values


def _stamped(intention: Any) -> Any:
    """A new ID and both times, set here so the state machine never reads a clock."""
    now = _now()
    return replace(intention, id=str(uuid.uuid4()), created_at=now, updated_at=now)


async def _find_exact(request: web.Request) -> Any:
    """The read of ?source=&destination=, or 404."""
    source, destination = _query(request, "source", "destination")
    result = await read(request, "intentions.exact", {"source": source, "destination": destination})
    if result.value is None:
        raise NotFound(f"Intention not found: {source} => {destination}")
    return result


async def _write(request: web.Request, intention: Any, mode: str) -> Any:
    return await request.app["agent"].apply(MessageType.INTENTION_UPSERT, (intention, mode))


@routes.get("/v1/connect/intentions")
async def list_intentions(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "intentions.list"))


@routes.post("/v1/connect/intentions")
async def create(request: web.Request) -> web.Response:
    intention = parse_intention(await read_json(request))
    if intention.id:
        raise InvalidRequest("ID must be empty when creating a new intention")
    result = await _write(request, _stamped(intention), "create")
    return json_response(request, {"ID": result["ID"]})


@routes.get("/v1/connect/intentions/exact")
async def get_exact(request: web.Request) -> web.Response:
    return read_response(request, await _find_exact(request))


@routes.put("/v1/connect/intentions/exact")
async def put_exact(request: web.Request) -> web.Response:
    source, destination = _query(request, "source", "destination")
    body = await read_json(request)
    intention = parse_intention(body, source=source, destination=destination)
    await _write(request, _stamped(intention), "upsert")
    return json_response(request, True)


@routes.delete("/v1/connect/intentions/exact")
async def delete_exact(request: web.Request) -> web.Response:
    found = await _find_exact(request)
    await request.app["agent"].apply(MessageType.INTENTION_DELETE, found.value["ID"])
    return json_response(request, True)


@routes.get("/v1/connect/intentions/match")
async def match(request: web.Request) -> web.Response:
    by = request.query.get("by", "")
    if by not in ("source", "destination"):
        raise InvalidRequest("required query parameter 'by' must be source or destination")
    names = request.query.getall("name", [])
    if not names:
        raise InvalidRequest("required query parameter 'name' not set")
    return read_response(request, await read(request, "intentions.match", {"by": by, "names": names}))


@routes.get("/v1/connect/intentions/check")
async def check(request: web.Request) -> web.Response:
    source, destination = _query(request, "source", "destination")
    agent = request.app["agent"]
    result = await read(request, "intentions.check", {"source": source, "destination": destination,
                                                      "default_allow": agent.intentions.default_allow})
    body = {"Allowed": result.value["Allowed"]}
    if "explain" in request.query:  # mesh extension used by `mesh intention check`
        body.update(Reason=result.value["Reason"], Intention=result.value["Intention"])
    return json_response(request, body)


@routes.get("/v1/connect/intentions/{id}")
async def get_by_id(request: web.Request) -> web.Response:
    result = await read(request, "intentions.get", {"id": request.match_info["id"]})
    if result.value is None:
        raise NotFound(f"Intention not found: {request.match_info['id']}")
    return read_response(request, result)


@routes.put("/v1/connect/intentions/{id}")
async def update_by_id(request: web.Request) -> web.Response:
    intention_id = request.match_info["id"]
    body = await read_json(request)
    intention = replace(parse_intention(body), id=intention_id, updated_at=_now())
    await _write(request, intention, "update")
    return json_response(request, None)


@routes.delete("/v1/connect/intentions/{id}")
async def delete_by_id(request: web.Request) -> web.Response:
    await request.app["agent"].apply(MessageType.INTENTION_DELETE, request.match_info["id"])
    return json_response(request, None)


@routes.put("/v1/agent/connect/authorize")  # py-consul's Agent.Connect.authorize sends PUT
@routes.post("/v1/agent/connect/authorize")
async def authorize(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    f = Fields(await read_json(request), "body")
    target = f.str("Target")
    if not target:
        raise InvalidRequest("Target service must be specified")
    uri = f.str("ClientCertURI")
    if not uri:
        raise InvalidRequest("ClientCertURI must be specified")
    source = parse_service_id(uri)  # 400 with the reason for anything malformed
    access_of(request).require("service", target, "write")  # Consul: the target's service:write
    decision = agent.intentions.decide(source.service, target)
    return json_response(request, {"Authorized": decision.allowed, "Reason": decision.reason})
