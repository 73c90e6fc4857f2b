"""/v1/health/*: health of nodes, services and checks from the catalog, all blocking."""

from __future__ import annotations

from aiohttp import web

from mesh.catalog.errors import InvalidRequest

from .query import flag, read, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/v1/health/node/{node}")
async def node(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "health.node", {"name": request.match_info["node"]}))


@routes.get("/v1/health/checks/{service}")
async def checks(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "health.checks", {"name": request.match_info["service"]}))


@routes.get("/v1/health/service/{service}")
async def service(request: web.Request) -> web.Response:
    """`?near=_agent` is accepted; answers keep Consul's deterministic order (no RTT data)."""
    params = {"name": request.match_info["service"], "passing": flag(request, "passing")}
    return read_response(request, await read(request, "health.service", params))


@routes.get("/v1/health/connect/{service}")
async def connect(request: web.Request) -> web.Response:
    """Sidecar proxies and Connect-native instances of a service."""
    params = {"name": request.match_info["service"], "passing": flag(request, "passing")}
    return read_response(request, await read(request, "health.connect", params))


@routes.get("/v1/health/state/{state}")
async def state(request: web.Request) -> web.Response:
    value = request.match_info["state"]
    if value not in ("any", "passing", "warning", "critical"):
        raise InvalidRequest(f"Invalid check state {value!r}: must be any, passing, warning or critical")
    return read_response(request, await read(request, "health.state", {"state": value}))
