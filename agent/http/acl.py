"""/v1/acl/*: bootstrap, tokens, policies and roles, in Consul's shapes.

Writes are ACL commands (catalog.acl_state), the IDs and secrets made here so the
state machine makes none; the servers check `acl = "write"` on each. Reads are named
reads the servers filter (`acl = "read"`; SecretIDs hidden without write). A policy's
rules are parsed here (catalog.acl_rules), so a policy the authorizer could not use is
a 400 and never stored. With ACLs off every endpoint answers 401 "ACL support
disabled", as Consul's do; an object that does not exist is Consul's 403 "ACL not
found".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mesh.catalog.acl_enforce import ACL_NOT_FOUND
from mesh.catalog.acl_rules import parse_rules
from mesh.catalog.acl_state import ACLWrite, parse_policy, parse_role, parse_token
from mesh.catalog.commands import MessageType
from mesh.catalog.errors import InvalidRequest, PermissionDenied
from mesh.catalog.fields import Fields

from ..acl import REQUEST_TOKEN
from .query import json_response, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()

ACL_DISABLED = "ACL support disabled"


def _enabled(request: web.Request) -> Any:
    agent = request.app["agent"]
    if not agent.cfg.acl_enabled:
        raise web.HTTPUnauthorized(text=ACL_DISABLED)
    return agent


def _uuid(raw: str, what: str) -> str:
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid {what}: {raw!r} is not a UUID") from None
    return str(parsed)


async def _write(request: web.Request, op: str, body: dict[str, Any]) -> Any:
    agent = _enabled(request)
    result = await agent.apply(MessageType.ACL, ACLWrite(op, body))
    agent.acls.forget()  # this agent sees its own change at once
    return result


async def _found(request: web.Request, name: str, params: dict[str, Any]) -> web.Response:
    _enabled(request)
    result = await read(request, name, params)
    if result.value is None:
        raise PermissionDenied(ACL_NOT_FOUND)
    return read_response(request, result)


# ---- bootstrap ------------------------------------------------------------------------
@routes.put("/v1/acl/bootstrap")
async def bootstrap(request: web.Request) -> web.Response:
    """`{"BootstrapSecret": "<uuid>"}` (Consul 1.15+) chooses the token's secret."""
    _enabled(request)
    body = await read_json(request, optional=True)
    chosen = Fields(body, "bootstrap").str("BootstrapSecret") if body is not None else ""
    secret = _uuid(chosen, "BootstrapSecret") if chosen else str(uuid.uuid4())
    result = await _write(request, "bootstrap", {"accessor_id": str(uuid.uuid4()), "secret_id": secret,
                                                 "description": "Bootstrap Token (Global Management)"})
    return json_response(request, result)


# ---- tokens -----------------------------------------------------------------------------
@routes.put("/v1/acl/token")
async def token_create(request: web.Request) -> web.Response:
    _enabled(request)
    body = await read_json(request)
    f = Fields(body, "token")
    accessor = _uuid(f.str("AccessorID"), "AccessorID") if f.str("AccessorID") else str(uuid.uuid4())
    secret = _uuid(f.str("SecretID"), "SecretID") if f.str("SecretID") else str(uuid.uuid4())
    return json_response(request, await _write(request, "token-create", parse_token(body, accessor, secret)))


@routes.get("/v1/acl/token/self")
async def token_self(request: web.Request) -> web.Response:
    return await _found(request, "acl.token_self", {"secret": REQUEST_TOKEN.get() or ""})


@routes.get("/v1/acl/token/{id}")
async def token_read(request: web.Request) -> web.Response:
    return await _found(request, "acl.token", {"id": request.match_info["id"]})


@routes.put("/v1/acl/token/{id}")
async def token_update(request: web.Request) -> web.Response:
    _enabled(request)
    accessor = request.match_info["id"]
    body = await read_json(request)
    given = Fields(body, "token").str("AccessorID")
    if given and given != accessor:
        raise InvalidRequest("AccessorID in the body does not match the URL's")
    payload = parse_token(body, accessor, "")
    return json_response(request, await _write(request, "token-update", payload))


@routes.put("/v1/acl/token/{id}/clone")
async def token_clone(request: web.Request) -> web.Response:
    _enabled(request)
    source = await read(request, "acl.token", {"id": request.match_info["id"]})
    if source.value is None:
        raise PermissionDenied(ACL_NOT_FOUND)
    body = await read_json(request, optional=True) or {}
    description = Fields(body, "clone").str("Description") or source.value.get("Description", "")
    copy = {k: v for k, v in source.value.items()
            if k in ("Policies", "Roles", "ServiceIdentities", "NodeIdentities", "Local")}
    payload = parse_token(dict(copy, Description=description), str(uuid.uuid4()), str(uuid.uuid4()))
    return json_response(request, await _write(request, "token-create", payload))


@routes.delete("/v1/acl/token/{id}")
async def token_delete(request: web.Request) -> web.Response:
    return json_response(request, await _write(request, "token-delete", {"id": request.match_info["id"]}))


@routes.get("/v1/acl/tokens")
async def token_list(request: web.Request) -> web.Response:
    _enabled(request)
    params = {key: request.query.get(key, "") for key in ("policy", "role", "servicename", "authmethod")}
    return read_response(request, await read(request, "acl.tokens", params))


# ---- policies and roles: the same endpoints, each its own body --------------------------
def _policy_body(body: Any, policy_id: str) -> dict[str, Any]:
    payload = parse_policy(body, policy_id)
    parse_rules(payload["rules"])  # refused here with the parser's message, never stored
    return payload


def _named_objects(kind: str, listing: str, parse: Callable[[Any, str], dict[str, Any]],
                   list_params: tuple[str, ...] = ()) -> None:
    """PUT /v1/acl/<kind>, GET /v1/acl/<kind>/name/:name, GET/PUT/DELETE
    /v1/acl/<kind>/:id and GET /v1/acl/<listing> (Consul's policy and role endpoints)."""
    read_name = f"acl.{kind}"

    async def create(request: web.Request) -> web.Response:
        _enabled(request)
        payload = parse(await read_json(request), str(uuid.uuid4()))
        return json_response(request, await _write(request, f"{kind}-set", payload))

    async def by_name(request: web.Request) -> web.Response:
        return await _found(request, read_name, {"name": request.match_info["name"]})

    async def by_id(request: web.Request) -> web.Response:
        return await _found(request, read_name, {"id": request.match_info["id"]})

    async def update(request: web.Request) -> web.Response:
        _enabled(request)
        payload = parse(await read_json(request), request.match_info["id"])
        return json_response(request, await _write(request, f"{kind}-set", dict(payload, update=True)))

    async def delete(request: web.Request) -> web.Response:
        return json_response(request, await _write(request, f"{kind}-delete", {"id": request.match_info["id"]}))

    async def listed(request: web.Request) -> web.Response:
        _enabled(request)
        params = {key: request.query.get(key, "") for key in list_params}
        return read_response(request, await read(request, f"acl.{listing}", params))

    routes.put(f"/v1/acl/{kind}")(create)
    routes.get(f"/v1/acl/{kind}/name/{{name}}")(by_name)  # before {id}: "name" is no ID
    routes.get(f"/v1/acl/{kind}/{{id}}")(by_id)
    routes.put(f"/v1/acl/{kind}/{{id}}")(update)
    routes.delete(f"/v1/acl/{kind}/{{id}}")(delete)
    routes.get(f"/v1/acl/{listing}")(listed)


_named_objects("policy", "policies", _policy_body)
_named_objects("role", "roles", parse_role, ("policy",))
