"""`mesh acl token create|list|read|update|delete|clone`: Consul's `consul acl token`
over /v1/acl/token*, with its flags, output formats and messages.

`update` reads the token and writes it back changed, as Consul's does: -policy-*/
-role-* replace the token's links unless -merge-policies/-merge-roles (or the
-append-* flags) ask to add to them; identities given replace the token's unless
-merge-*-identities (or -append-*-identity). Identities not given are kept (Consul's
own CLI drops them, which loses a token's identities on a description change).
"""

from __future__ import annotations

from typing import Any

from mesh.api.client import Client

from .acl_common import (
    FORMAT_FLAG,
    Fail,
    attempt,
    check_format,
    emit,
    full_id,
    node_identities,
    run_list,
    service_identities,
    ttl_flag,
)
from .acl_format import token_list_text, token_text
from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["run_token"]

USAGE = "usage: mesh acl token create|list|read|update|delete|clone [options]"
_LINK_FLAGS = {"policy-id": "list", "policy-name": "list", "role-id": "list", "role-name": "list",
               "service-identity": "list", "node-identity": "list"}
_ID_FLAGS = {"id": "str", "accessor-id": "str"}


async def _policy_links(c: Client, ids: list[str], names: list[str]) -> list[dict[str, str]]:
    links = [{"Name": n} for n in names]
    for partial in ids:
        links.append({"ID": await full_id(c, "policy", partial, f"Error resolving policy ID {partial}")})
    return links


async def _role_links(c: Client, ids: list[str], names: list[str]) -> list[dict[str, str]]:
    links = [{"Name": n} for n in names]
    for partial in ids:
        links.append({"ID": await full_id(c, "role", partial, f"Error resolving role ID {partial}")})
    return links


def _accessor(flags: dict[str, Any], missing: str) -> str:
    accessor = flags.get("accessor-id") or flags.get("id") or ""
    if not accessor:
        raise Fail(missing)
    return accessor


async def _create(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**_LINK_FLAGS, **FORMAT_FLAG, "description": "str", "local": "bool",
                             "expires-ttl": "str", "accessor": "str", "secret": "str"})
    fmt = check_format(flags)
    if not any(flags.get(k) for k in _LINK_FLAGS):
        raise Fail("Cannot create a token without specifying -policy-name, -policy-id, -role-name, -role-id, "
                   "-service-identity, or -node-identity at least once")
    body: dict[str, Any] = {"Description": flags.get("description", ""), "Local": bool(flags.get("local")),
                            "ServiceIdentities": service_identities(flags.get("service-identity", [])),
                            "NodeIdentities": node_identities(flags.get("node-identity", []))}
    ttl = ttl_flag(flags, "expires-ttl")
    if ttl:
        body["ExpirationTTL"] = ttl
    for flag, key in (("accessor", "AccessorID"), ("secret", "SecretID")):
        if flags.get(flag):
            body[key] = flags[flag]
    async with _client(flags) as c:
        body["Policies"] = await _policy_links(c, flags.get("policy-id", []), flags.get("policy-name", []))
        body["Roles"] = await _role_links(c, flags.get("role-id", []), flags.get("role-name", []))
        token = await attempt("Failed to create new token", c.put("/v1/acl/token", body))
    emit(fmt, token, token_text)
    return 0


async def _list(argv: list[str]) -> int:
    return await run_list(argv, "/v1/acl/tokens", "Failed to retrieve the token list", token_list_text)


async def _read(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**_ID_FLAGS, **FORMAT_FLAG, "self": "bool"})
    fmt = check_format(flags)
    async with _client(flags) as c:
        if flags.get("self"):
            token = await attempt("Error reading token", c.get("/v1/acl/token/self"))
        else:
            accessor = await full_id(c, "token", _accessor(flags, "Must specify the -id parameter"),
                                     "Error determining token ID")
            token = await attempt(f'Error reading token "{accessor}"', c.get(f"/v1/acl/token/{accessor}"))
    emit(fmt, token, token_text)
    return 0


def _merge_links(current: list[dict[str, str]], added: list[dict[str, str]]) -> list[dict[str, str]]:
    """Consul's merge: a link already on the token (same ID, or same name) is not repeated."""
    out = list(current)
    for link in added:
        if not any((link.get("ID") and link["ID"] == c.get("ID")) or
                   (link.get("Name") and link["Name"] == c.get("Name")) for c in out):
            out.append(link)
    return out


def _merge_services(current: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = list(current)
    for ident in given:
        same = [i for i, c in enumerate(out) if c.get("ServiceName") == ident["ServiceName"]]
        if same:
            out[same[0]] = ident
        else:
            out.append(ident)
    return out


def _merge_nodes(current: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return current + [n for n in given if n not in current]


def _one_way(flags: dict[str, Any], plain: tuple[str, ...], append: tuple[str, ...], what: str) -> None:
    if any(flags.get(k) for k in plain) and any(flags.get(k) for k in append):
        raise Fail(f"Cannot combine the use of {'/'.join(plain)} flags with append- variants. To set or "
                   f"overwrite existing {what}, use -{' or -'.join(plain)}. To append to existing {what}, "
                   f"use -{' or -'.join(append)}.")


async def _update(argv: list[str]) -> int:
    merges = {"merge-policies": "bool", "merge-roles": "bool", "merge-service-identities": "bool",
              "merge-node-identities": "bool"}
    appends = {"append-policy-id": "list", "append-policy-name": "list", "append-role-id": "list",
               "append-role-name": "list", "append-service-identity": "list", "append-node-identity": "list"}
    flags, _ = _parse(argv, {**_ID_FLAGS, **_LINK_FLAGS, **FORMAT_FLAG, **merges, **appends, "description": "str"})
    fmt = check_format(flags)
    _one_way(flags, ("policy-id", "policy-name"), ("append-policy-id", "append-policy-name"), "policies")
    _one_way(flags, ("role-id", "role-name"), ("append-role-id", "append-role-name"), "roles")
    _one_way(flags, ("service-identity",), ("append-service-identity",), "service identities")
    _one_way(flags, ("node-identity",), ("append-node-identity",), "node identities")
    services = service_identities(flags.get("service-identity", []) or flags.get("append-service-identity", []))
    nodes = node_identities(flags.get("node-identity", []) or flags.get("append-node-identity", []))
    async with _client(flags) as c:
        accessor = await full_id(c, "token", _accessor(flags, "Cannot update a token without specifying the "
                                                              "-accessor-id parameter"), "Error determining token ID")
        token = await attempt("Error when retrieving current token", c.get(f"/v1/acl/token/{accessor}"))
        if flags.get("description"):
            token["Description"] = flags["description"]
        policies = await _policy_links(c, flags.get("policy-id", []) or flags.get("append-policy-id", []),
                                       flags.get("policy-name", []) or flags.get("append-policy-name", []))
        roles = await _role_links(c, flags.get("role-id", []) or flags.get("append-role-id", []),
                                  flags.get("role-name", []) or flags.get("append-role-name", []))
        _apply(token, "Policies", policies, flags.get("merge-policies") or _given(flags, "append-policy-"),
               _merge_links)
        _apply(token, "Roles", roles, flags.get("merge-roles") or _given(flags, "append-role-"), _merge_links)
        _apply(token, "ServiceIdentities", services,
               flags.get("merge-service-identities") or _given(flags, "append-service-"), _merge_services)
        _apply(token, "NodeIdentities", nodes,
               flags.get("merge-node-identities") or _given(flags, "append-node-"), _merge_nodes)
        # the expiration cannot change and is kept by the servers; sending both fields back is refused
        for key in ("SecretID", "ExpirationTTL", "ExpirationTime", "CreateTime", "Hash", "CreateIndex",
                    "ModifyIndex"):
            token.pop(key, None)
        updated = await attempt(f"Failed to update token {accessor}", c.put(f"/v1/acl/token/{accessor}", token))
    emit(fmt, updated, token_text)
    return 0


def _given(flags: dict[str, Any], prefix: str) -> bool:
    return any(v for k, v in flags.items() if k.startswith(prefix))


def _apply(token: dict[str, Any], key: str, given: list[Any], merge: Any, merger: Any) -> None:
    """Given values replace the token's, or are merged into them; none given keeps them."""
    if not given:
        return
    token[key] = merger(token.get(key) or [], given) if merge else given


async def _delete(argv: list[str]) -> int:
    flags, _ = _parse(argv, dict(_ID_FLAGS))
    async with _client(flags) as c:
        accessor = await full_id(c, "token", _accessor(flags, "Must specify the -id parameter"),
                                 "Error determining token ID")
        await attempt(f'Error deleting token "{accessor}"', c.request("DELETE", f"/v1/acl/token/{accessor}"))
    print(f'Token "{accessor}" deleted successfully')
    return 0


async def _clone(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**_ID_FLAGS, **FORMAT_FLAG, "description": "str"})
    fmt = check_format(flags)
    async with _client(flags) as c:
        accessor = await full_id(c, "token", _accessor(flags, "Cannot update a token without specifying the "
                                                              "-accessor-id parameter"),
                                 "Error determining token Accessor ID")
        token = await attempt("Error cloning token", c.put(f"/v1/acl/token/{accessor}/clone", {"Description": flags.get("description", "")}))
    emit(fmt, token, token_text)
    return 0


_SUB = {"create": _create, "list": _list, "read": _read, "update": _update, "delete": _delete, "clone": _clone}


async def run_token(argv: list[str]) -> int:
    if not argv or argv[0] not in _SUB:
        raise UsageError(USAGE)
    return await _SUB[argv[0]](argv[1:])
