"""`mesh acl policy ...` and `mesh acl role ...`: Consul's `consul acl policy|role`
commands over /v1/acl/policy* and /v1/acl/role*, with its flags, formats and messages.

Both `update`s merge into the current object by default, as Consul's do (-no-merge
writes only what was given); a policy is found by -id (or a unique prefix) or by
-name, and with -id, -name is its new name.
"""

from __future__ import annotations

from typing import Any

from mesh.api.client import APIError, Client

from .acl_common import (
    FORMAT_FLAG,
    Fail,
    attempt,
    check_format,
    emit,
    full_id,
    load_source,
    node_identities,
    run_list,
    service_identities,
)
from .acl_format import policy_list_text, policy_text, role_list_text, role_text
from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["run_policy", "run_role"]

_NOT_FOUND = "ACL not found"


async def _policy_id(c: Client, flags: dict[str, Any]) -> str:
    """The policy named by -id (a prefix will do) or else -name."""
    if flags.get("id"):
        return await full_id(c, "policy", flags["id"], "Error determining policy ID")
    name = flags.get("name") or ""
    policy = await attempt(f"Error determining policy ID: Failed to find policy with name {name}", c.get(f"/v1/acl/policy/name/{name}"))
    return str(policy["ID"])


async def _policy_create(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, "name": "str", "description": "str", "rules": "str",
                             "valid-datacenter": "list"})
    fmt = check_format(flags)
    if not flags.get("name"):
        raise Fail("Missing required '-name' flag")
    rules = load_source(flags.get("rules", ""))
    body = {"Name": flags["name"], "Description": flags.get("description", ""), "Rules": rules,
            "Datacenters": flags.get("valid-datacenter", [])}
    async with _client(flags) as c:
        policy = await attempt("Failed to create new policy", c.put("/v1/acl/policy", body))
    emit(fmt, policy, policy_text)
    return 0


async def _policy_list(argv: list[str]) -> int:
    return await run_list(argv, "/v1/acl/policies", "Failed to retrieve the policy list", policy_list_text)


async def _policy_read(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, "id": "str", "name": "str"})
    fmt = check_format(flags)
    if not flags.get("id") and not flags.get("name"):
        raise Fail("Must specify either the -id or -name parameters")
    async with _client(flags) as c:
        policy_id = await _policy_id(c, flags)
        policy = await attempt(f'Error reading policy "{policy_id}"', c.get(f"/v1/acl/policy/{policy_id}"))
    emit(fmt, policy, policy_text)
    return 0


async def _policy_update(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, "id": "str", "name": "str", "description": "str", "rules": "str",
                             "valid-datacenter": "list", "no-merge": "bool"})
    fmt = check_format(flags)
    if not flags.get("id") and not flags.get("name"):
        raise Fail("Must specify either the -id or -name parameters")
    rules = load_source(flags["rules"]) if "rules" in flags else None
    async with _client(flags) as c:
        policy_id = await _policy_id(c, flags)
        if flags.get("no-merge"):
            body = {"Name": flags.get("name", ""), "Description": flags.get("description", ""),
                    "Rules": rules or "", "Datacenters": flags.get("valid-datacenter", [])}
        else:
            current = await attempt(f'Error reading policy "{policy_id}"', c.get(f"/v1/acl/policy/{policy_id}"))
            body = {"Name": flags.get("name") or current["Name"],
                    "Description": flags["description"] if "description" in flags else current.get("Description", ""),
                    "Rules": rules if rules is not None else current.get("Rules", ""),
                    "Datacenters": flags.get("valid-datacenter") or current.get("Datacenters") or []}
        policy = await attempt(f'Error updating policy "{policy_id}"', c.put(f"/v1/acl/policy/{policy_id}", dict(body, ID=policy_id)))
    emit(fmt, policy, policy_text)
    return 0


async def _policy_delete(argv: list[str]) -> int:
    flags, _ = _parse(argv, {"id": "str", "name": "str"})
    if not flags.get("id") and not flags.get("name"):
        raise Fail("Must specify either the -id or -name parameters")
    async with _client(flags) as c:
        policy_id = await _policy_id(c, flags)
        await attempt(f'Error deleting policy "{policy_id}"', c.request("DELETE", f"/v1/acl/policy/{policy_id}"))
    print(f'Policy "{policy_id}" deleted successfully')
    return 0


# ---- roles ------------------------------------------------------------------------------
_ROLE_LINKS = {"policy-id": "list", "policy-name": "list", "service-identity": "list", "node-identity": "list"}


async def _role_id(c: Client, flags: dict[str, Any]) -> str:
    if flags.get("id"):
        return await full_id(c, "role", flags["id"], "Error determining role ID")
    name = flags.get("name") or ""
    try:
        role = await c.get(f"/v1/acl/role/name/{name}")
    except APIError as exc:
        if exc.status == 403 and _NOT_FOUND in exc.message:
            raise Fail(f"Error determining role ID: No such role with name {name}") from None
        raise Fail(f"Error determining role ID: {exc.message}") from None
    return str(role["ID"])


async def _policy_links(c: Client, flags: dict[str, Any]) -> list[dict[str, str]]:
    links = [{"Name": n} for n in flags.get("policy-name", [])]
    for partial in flags.get("policy-id", []):
        links.append({"ID": await full_id(c, "policy", partial, f"Error resolving policy ID {partial}")})
    return links


async def _role_create(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, **_ROLE_LINKS, "name": "str", "description": "str"})
    fmt = check_format(flags)
    if not flags.get("name"):
        raise Fail("Missing required '-name' flag")
    if not any(flags.get(k) for k in _ROLE_LINKS):
        raise Fail("Cannot create a role without specifying -policy-name, -policy-id, -service-identity, "
                   "or -node-identity at least once")
    body: dict[str, Any] = {"Name": flags["name"], "Description": flags.get("description", ""),
                            "ServiceIdentities": service_identities(flags.get("service-identity", [])),
                            "NodeIdentities": node_identities(flags.get("node-identity", []))}
    async with _client(flags) as c:
        body["Policies"] = await _policy_links(c, flags)
        role = await attempt("Failed to create new role", c.put("/v1/acl/role", body))
    emit(fmt, role, role_text)
    return 0


async def _role_list(argv: list[str]) -> int:
    return await run_list(argv, "/v1/acl/roles", "Failed to retrieve the role list", role_list_text)


async def _role_read(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, "id": "str", "name": "str"})
    fmt = check_format(flags)
    if not flags.get("id") and not flags.get("name"):
        raise Fail("Must specify either the -id or -name parameters")
    async with _client(flags) as c:
        role_id = await _role_id(c, flags)
        role = await attempt(f'Error reading role "{role_id}"', c.get(f"/v1/acl/role/{role_id}"))
    emit(fmt, role, role_text)
    return 0


def _merge(current: list[dict[str, Any]], added: list[dict[str, Any]], same: Any) -> list[dict[str, Any]]:
    out = list(current)
    for item in added:
        hits = [i for i, c in enumerate(out) if same(c, item)]
        if hits:
            out[hits[0]] = item
        else:
            out.append(item)
    return out


def _same_link(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return bool((b.get("ID") and a.get("ID") == b["ID"]) or (b.get("Name") and a.get("Name") == b["Name"]))


async def _role_update(argv: list[str]) -> int:
    flags, _ = _parse(argv, {**FORMAT_FLAG, **_ROLE_LINKS, "id": "str", "name": "str", "description": "str",
                             "no-merge": "bool"})
    fmt = check_format(flags)
    if not flags.get("id"):
        raise Fail("Cannot update a role without specifying the -id parameter")
    services = service_identities(flags.get("service-identity", []))
    nodes = node_identities(flags.get("node-identity", []))
    async with _client(flags) as c:
        role_id = await full_id(c, "role", flags["id"], "Error determining role ID")
        current = await attempt("Error when retrieving current role", c.get(f"/v1/acl/role/{role_id}"))
        policies = await _policy_links(c, flags)
        if flags.get("no-merge"):
            body: dict[str, Any] = {"Name": flags.get("name", ""), "Description": flags.get("description", ""),
                                    "Policies": policies, "ServiceIdentities": services, "NodeIdentities": nodes}
        else:
            body = {"Name": flags.get("name") or current["Name"],
                    "Description": flags.get("description") or current.get("Description", ""),
                    "Policies": _merge(current.get("Policies") or [], policies, _same_link),
                    "ServiceIdentities": _merge(current.get("ServiceIdentities") or [], services,
                                                lambda a, b: a.get("ServiceName") == b["ServiceName"]),
                    "NodeIdentities": _merge(current.get("NodeIdentities") or [], nodes, lambda a, b: a == b)}
        role = await attempt(f'Error updating role "{role_id}"', c.put(f"/v1/acl/role/{role_id}", dict(body, ID=role_id)))
    emit(fmt, role, role_text)
    return 0


async def _role_delete(argv: list[str]) -> int:
    flags, _ = _parse(argv, {"id": "str", "name": "str"})
    if not flags.get("id") and not flags.get("name"):
        raise Fail("Must specify either the -id or -name parameters")
    async with _client(flags) as c:
        role_id = await _role_id(c, flags)
        await attempt(f'Error deleting role "{role_id}"', c.request("DELETE", f"/v1/acl/role/{role_id}"))
    print(f'Role "{role_id}" deleted successfully')
    return 0


_POLICY = {"create": _policy_create, "list": _policy_list, "read": _policy_read, "update": _policy_update,
           "delete": _policy_delete}
_ROLE = {"create": _role_create, "list": _role_list, "read": _role_read, "update": _role_update,
         "delete": _role_delete}


async def run_policy(argv: list[str]) -> int:
    if not argv or argv[0] not in _POLICY:
        raise UsageError("usage: mesh acl policy create|list|read|update|delete [options]")
    return await _POLICY[argv[0]](argv[1:])


async def run_role(argv: list[str]) -> int:
    if not argv or argv[0] not in _ROLE:
        raise UsageError("usage: mesh acl role create|list|read|update|delete [options]")
    return await _ROLE[argv[0]](argv[1:])
