"""/v1/connect/ca/roots, /v1/agent/connect/ca/roots and /v1/agent/connect/ca/leaf/:service."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mesh.catalog.errors import MeshError

from ..acl import REQUEST_TOKEN
from .query import flag, json_response, parse_options, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()


def _pem_bundle(roots: dict[str, Any]) -> web.Response:
    """`?pem=true`: every root, concatenated (clients must trust them all)."""
    return web.Response(text="".join(root["RootCert"] for root in roots["Roots"]),
                        content_type="application/pem-certificate-chain")


async def _roots(request: web.Request) -> web.Response:
    result = await read(request, "ca.roots")
    if flag(request, "pem"):
        return _pem_bundle(result.value)
    return read_response(request, result)


@routes.get("/v1/connect/ca/roots")
async def roots(request: web.Request) -> web.Response:
    return await _roots(request)


@routes.get("/v1/agent/connect/ca/roots")
async def agent_roots(request: web.Request) -> web.Response:
    """Like Consul's agent cache: when no server answers, the roots this agent last
    saw (its roots watch), marked `X-Cache: HIT`, so sidecars keep their trust bundle."""
    try:
        return await _roots(request)
    except MeshError:
        leaves = request.app["agent"].leaves
        if not leaves.roots.get("Roots"):
            raise
        if flag(request, "pem"):
            resp = _pem_bundle(leaves.roots)
        else:
            resp = json_response(request, leaves.roots, index=max(1, leaves.roots_index))
        resp.headers["X-Cache"] = "HIT"
        return resp


@routes.get("/v1/connect/ca/configuration")
async def get_configuration(request: web.Request) -> web.Response:
    return read_response(request, await read(request, "ca.config"))


@routes.put("/v1/connect/ca/configuration")
async def set_configuration(request: web.Request) -> web.Response:
    """Validated (400 with the reason, nothing changed); a new key type, size or root
    lifetime rotates the root with cross-signing."""
    await request.app["agent"].backend.ca_configure(await read_json(request), REQUEST_TOKEN.get())
    return json_response(request, None)


@routes.get("/v1/agent/connect/ca/leaf/{service}")
async def leaf(request: web.Request) -> web.Response:
    """The key is generated on this agent; only the CSR goes to a server. `?index`
    blocks until the agent has renewed the leaf (X-Consul-Index is its ModifyIndex)."""
    opts = parse_options(request)
    body, index = await request.app["agent"].leaves.get(request.match_info["service"], opts.min_index, opts.wait,
                                                        REQUEST_TOKEN.get())
    return json_response(request, body, index=max(1, index))


@routes.get("/v1/agent/mesh/leaves")
async def cached_leaves(request: web.Request) -> web.Response:
    """mesh's own: the leaves this agent caches and renews (no keys), for
    `mesh connect ca status`; answers without any server."""
    leaves = request.app["agent"].leaves
    return json_response(request, {"Leaves": leaves.describe(), "RootsError": leaves.roots_error})
