"""/v1/discovery-chain/:service: a service's compiled discovery chain, as Consul serves it.

`GET` compiles with no overrides; `POST` takes them as a JSON body (`OverrideProtocol`,
`OverrideConnectTimeout`, `OverrideMeshGateway`; mesh.catalog.discovery_chain.
parse_overrides). `?compile-dc` names the datacenter the chain is compiled for (this
agent's by default). A blocking read (the named read `discovery_chain`, so a client
agent forwards it like any other) wakes on any router, splitter, resolver,
service-defaults or proxy-defaults change, and on the CA's (the targets' SNI). A chain
that does not compile answers 500 with the reason, as Consul does.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mesh.catalog.discovery_chain import parse_overrides
from mesh.catalog.errors import InvalidRequest

from .query import read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _chain(request: web.Request, overrides: Any) -> web.Response:
    service = request.match_info["service"]
    if not service:
        raise InvalidRequest("Missing chain name")
    protocol, timeout = parse_overrides(overrides)
    agent = request.app["agent"]
    params = {"name": service, "compile_dc": request.query.get("compile-dc") or agent.cfg.datacenter,
              "override_protocol": protocol, "override_connect_timeout": timeout}
    result = await read(request, "discovery_chain", params)
    if isinstance(result.value, dict) and "Error" in result.value:
        return web.Response(status=500, text=str(result.value["Error"]) + "\n", content_type="text/plain")
    return read_response(request, result)


@routes.get("/v1/discovery-chain/{service:.*}")
async def get_chain(request: web.Request) -> web.Response:
    return await _chain(request, None)


@routes.post("/v1/discovery-chain/{service:.*}")
async def post_chain(request: web.Request) -> web.Response:
    return await _chain(request, await read_json(request, optional=True))
