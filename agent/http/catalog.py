"""/v1/catalog/*: Raft-backed registrations and blocking reads."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from mesh.catalog import query
from mesh.catalog.commands import MessageType
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.requests import parse_deregister, parse_register

from .query import blocking_read, json_response, parse_options, read_json

__all__ = ["routes"]

routes = web.RouteTableDef()


def _write_result(result: object) -> None:
    if isinstance(result, dict) and "Error" in result:
        raise InvalidRequest(str(result["Error"]))


@routes.put("/v1/catalog/register")
async def register(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    req = parse_register(await read_json(request))
    dc = req.node.datacenter or agent.cfg.datacenter
    agent.check_datacenter(dc)
    req = replace(req, node=replace(req.node, datacenter=dc))
    result = await agent.server.raft.apply(MessageType.REGISTER, req)
    _write_result(result)
    return json_response(request, True)


@routes.put("/v1/catalog/deregister")
async def deregister(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    body = await read_json(request)
    req = parse_deregister(body)
    if isinstance(body, dict):
        agent.check_datacenter(str(body.get("Datacenter") or body.get("datacenter") or ""))
    result = await agent.server.raft.apply(MessageType.DEREGISTER, req)
    _write_result(result)
    return json_response(request, True)


@routes.get("/v1/catalog/datacenters")
async def datacenters(request: web.Request) -> web.Response:
    return json_response(request, [request.app["agent"].cfg.datacenter])


@routes.get("/v1/catalog/nodes")
async def nodes(request: web.Request) -> web.Response:
    opts = parse_options(request)
    index, result = await blocking_read(
        request, opts, ["nodes"], lambda s: query.catalog_nodes(s, opts.node_meta or {}, opts.filter)
    )
    return json_response(request, result, index=index)


@routes.get("/v1/catalog/services")
async def services(request: web.Request) -> web.Response:
    opts = parse_options(request)
    index, result = await blocking_read(
        request, opts, ["services", "nodes"], lambda s: query.catalog_services(s, opts.node_meta or {}, opts.filter)
    )
    return json_response(request, result, index=index)


@routes.get("/v1/catalog/service/{name}")
async def service(request: web.Request) -> web.Response:
    opts = parse_options(request)
    name = request.match_info["name"]
    index, result = await blocking_read(
        request, opts, query.catalog_service_watch_keys(name),
        lambda s: query.catalog_service(s, name, list(opts.tags), opts.node_meta or {}, opts.filter),
    )
    return json_response(request, result, index=index)


@routes.get("/v1/catalog/node/{node}")
async def node(request: web.Request) -> web.Response:
    opts = parse_options(request)
    name = request.match_info["node"]
    index, result = await blocking_read(
        request, opts, ["nodes", "services"], lambda s: query.catalog_node(s, name, opts.filter)
    )
    return json_response(request, result, index=index)


@routes.get("/v1/catalog/node-services/{node}")
async def node_services(request: web.Request) -> web.Response:
    opts = parse_options(request)
    name = request.match_info["node"]
    index, result = await blocking_read(
        request, opts, ["nodes", "services"], lambda s: query.catalog_node_services(s, name, opts.filter)
    )
    if result is None:
        return web.Response(status=404, text=f"Node {name!r} not found", headers=_index_headers(request, index))
    return json_response(request, result, index=index)


def _index_headers(request: web.Request, index: int) -> dict[str, str]:
    resp = web.Response()
    request.app["agent"].set_read_headers(resp, index)
    return dict(resp.headers)
