"""/v1/connect/ca/roots, /v1/agent/connect/ca/roots and /v1/agent/connect/ca/leaf/:service."""

from __future__ import annotations

from aiohttp import web

from .query import flag, json_response, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _roots(request: web.Request) -> web.Response:
    result = await read(request, "ca.roots")
    if flag(request, "pem"):
        text = "".join(root["RootCert"] for root in result.value["Roots"])
        return web.Response(text=text, content_type="application/pem-certificate-chain")
    return read_response(request, result)


@routes.get("/v1/connect/ca/roots")
async def roots(request: web.Request) -> web.Response:
    return await _roots(request)


@routes.get("/v1/agent/connect/ca/roots")
async def agent_roots(request: web.Request) -> web.Response:
    return await _roots(request)


@routes.get("/v1/connect/ca/configuration")
async def get_configuration(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "ca.config"))


@routes.put("/v1/connect/ca/configuration")
async def set_configuration(request: web.Request) -> web.Response:
    """Validated (400 with the reason, nothing changed); a new key type, size or root
    lifetime rotates the root with cross-signing."""
    await request.app["agent"].backend.ca_configure(await read_json(request))
    return json_response(request, None)


@routes.get("/v1/agent/connect/ca/leaf/{service}")
async def leaf(request: web.Request) -> web.Response:
    """The key is generated on this agent; only the CSR goes to a server."""
    return json_response(request, await request.app["agent"].leaves.get(request.match_info["service"]))
