"""/v1/catalog/*: Raft-backed registrations and blocking reads."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from mesh.catalog.commands import MessageType
from mesh.catalog.requests import parse_deregister, parse_register

from .query import json_response, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.put("/v1/catalog/register")
async def register(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    req = parse_register(await read_json(request))
    dc = req.node.datacenter or agent.cfg.datacenter
    agent.check_datacenter(dc)
    req = replace(req, node=replace(req.node, datacenter=dc))
    await agent.apply(MessageType.REGISTER, req)
    return json_response(request, True)


@routes.put("/v1/catalog/deregister")
async def deregister(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    body = await read_json(request)
    req = parse_deregister(body)
    if isinstance(body, dict):
        agent.check_datacenter(str(body.get("Datacenter") or body.get("datacenter") or ""))
    await agent.apply(MessageType.DEREGISTER, req)
    return json_response(request, True)


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    return json_response(request, [request.app["agent"].cfg.datacenter])


@routes.get("/v1/catalog/nodes")
async def nodes(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "catalog.nodes"))


@routes.get("/v1/catalog/services")
async def services(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "catalog.services"))


@routes.get("/v1/catalog/service/{name}")
async def service(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "catalog.service", {"name": request.match_info["name"]}))


@routes.get("/v1/catalog/node/{node}")
async def node(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "catalog.node", {"name": request.match_info["node"]}))


@routes.get("/v1/catalog/node-services/{node}")
async def node_services(request: web.Request) -> web.Response:
    name = request.match_info["node"]
    result = await read(request, "catalog.node_services", {"name": name})
    if result.value is None:
        resp = web.Response(status=404, text=f"Node {name!r} not found")
        request.app["agent"].set_read_headers(resp, result.index, "", result.known_leader, result.last_contact_ms)
        return resp
    return read_response(request, result)
