"""Who may call each HTTP route: one rule per route, applied by one middleware.

Every route of the app has an entry in ROUTES (a test walks the router and fails for a
route without one; the middleware answers 403 for such a route rather than let it
through). A rule is one of:

- OPEN: no token needed (status, version, the CA roots, bootstrap), as in Consul;
- SERVERS: the servers decide with the request's token (every read and write of
  replicated state: catalog, health, KV, sessions, intentions, config entries...);
  reads there come back filtered, and say so in `X-Consul-Results-Filtered-By-ACLs`;
- a check function run here before the handler: this agent's own endpoints;
- IN_HANDLER: the handler checks, because what it needs depends on the body (a service
  registration needs service:write on every service the body registers).

Whatever the rule, a token that names nothing is refused with 403 "ACL not found".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from aiohttp import web

from mesh.catalog.acl_enforce import ALLOW_ALL, Access
from mesh.catalog.errors import PermissionDenied

from ..acl import REQUEST_TOKEN

__all__ = ["Rule", "ROUTES", "OPEN", "SERVERS", "IN_HANDLER", "acl_guard", "access_of", "require"]

Check = Callable[[web.Request, Access], None]


@dataclass(frozen=True)
class Rule:
    kind: str  # "open", "servers", "handler", "check"
    check: Check | None = None
    doc: str = ""  # what the rule asks for, as docs/api.md states it


OPEN = Rule("open", doc="none")
SERVERS = Rule("servers", doc="checked by the servers")
IN_HANDLER = Rule("handler", doc="depends on the body")


def require(resource: str, access: str, name: Callable[[web.Request], str] | None = None) -> Rule:
    def check(request: web.Request, who: Access) -> None:
        who.require(resource, name(request) if name else None, access)
    return Rule("check", check, f"{resource}:{access}")


ACCESS = web.RequestKey("acl", Access)


def access_of(request: web.Request) -> Access:
    """The request's resolved token (everything allowed with ACLs off)."""
    return request.get(ACCESS, ALLOW_ALL)


def _node(request: web.Request) -> str:
    return str(request.app["agent"].cfg.node_name)


def _local_service_name(request: web.Request) -> str:
    """The name of the local service in the path's {id}; the ID itself when unknown
    (the handler then answers 404, to a token that may write a service of that name)."""
    sid = request.match_info.get("id", "")
    local = request.app["agent"].local.services.get(sid)
    return local.service.service if local is not None else sid


def _local_check(request: web.Request, who: Access) -> None:
    """A check's owner decides: its service (service:write) or the node (node:write)."""
    agent = request.app["agent"]
    check = agent.local.checks.get(request.match_info.get("id", ""))
    service_id = check.defn.service_id if check is not None else ""
    local = agent.local.services.get(service_id) if service_id else None
    if local is not None:
        who.require("service", local.service.service, "write")
    else:
        who.require("node", agent.cfg.node_name, "write")


def _path(name: str) -> Callable[[web.Request], str]:
    return lambda request: request.match_info.get(name, "")


_AGENT_READ = require("agent", "read", _node)
_AGENT_WRITE = require("agent", "write", _node)
_LOCAL_CHECK = Rule("check", _local_check, "service:write on the check's service, else node:write")
_SERVICE_WRITE_BY_ID = require("service", "write", _local_service_name)

ROUTES: dict[tuple[str, str], Rule] = {
    # ---- this agent -----------------------------------------------------------------
    ("GET", "/v1/agent/services"): Rule("check", None, "service:read, filtered"),
    ("GET", "/v1/agent/service/{id}"): require("service", "read", _local_service_name),
    ("PUT", "/v1/agent/service/register"): IN_HANDLER,
    ("PUT", "/v1/agent/service/deregister/{id}"): _SERVICE_WRITE_BY_ID,
    ("PUT", "/v1/agent/service/maintenance/{id}"): _SERVICE_WRITE_BY_ID,
    ("PUT", "/v1/agent/maintenance"): require("node", "write", _node),
    ("GET", "/v1/agent/checks"): Rule("check", None, "node:read / service:read, filtered"),
    ("PUT", "/v1/agent/check/register"): IN_HANDLER,
    ("PUT", "/v1/agent/check/deregister/{id}"): _LOCAL_CHECK,
    ("PUT", "/v1/agent/check/pass/{id}"): _LOCAL_CHECK,
    ("PUT", "/v1/agent/check/warn/{id}"): _LOCAL_CHECK,
    ("PUT", "/v1/agent/check/fail/{id}"): _LOCAL_CHECK,
    ("PUT", "/v1/agent/check/update/{id}"): _LOCAL_CHECK,
    ("GET", "/v1/agent/health/service/name/{name}"): require("service", "read", _path("name")),
    ("GET", "/v1/agent/health/service/id/{id}"): require("service", "read", _local_service_name),
    ("PUT", "/v1/agent/join/{address}"): _AGENT_WRITE,
    ("PUT", "/v1/agent/reload"): _AGENT_WRITE,
    ("PUT", "/v1/agent/leave"): _AGENT_WRITE,
    ("GET", "/v1/agent/self"): _AGENT_READ,
    ("GET", "/v1/agent/members"): Rule("check", None, "node:read, filtered"),
    ("GET", "/v1/agent/metrics"): _AGENT_READ,
    ("GET", "/v1/agent/version"): OPEN,
    ("PUT", "/v1/agent/token/{kind}"): require("acl", "write"),
    ("GET", "/v1/agent/connect/ca/roots"): OPEN,
    ("GET", "/v1/agent/connect/ca/leaf/{service}"): require("service", "write", _path("service")),
    ("PUT", "/v1/agent/connect/authorize"): IN_HANDLER,
    ("POST", "/v1/agent/connect/authorize"): IN_HANDLER,
    ("GET", "/v1/agent/mesh/leaves"): _AGENT_READ,
    ("GET", "/v1/agent/mesh/proxies"): _AGENT_READ,
    ("PUT", "/v1/agent/mesh/proxies/{id}/ready"): _SERVICE_WRITE_BY_ID,
    # ---- replicated state: the servers decide --------------------------------------
    ("PUT", "/v1/catalog/register"): SERVERS,
    ("PUT", "/v1/catalog/deregister"): SERVERS,
    ("GET", "/v1/catalog/datacenters"): OPEN,
    ("GET", "/v1/catalog/nodes"): SERVERS,
    ("GET", "/v1/catalog/services"): SERVERS,
    ("GET", "/v1/catalog/service/{name}"): SERVERS,
    ("GET", "/v1/catalog/node/{node}"): SERVERS,
    ("GET", "/v1/catalog/node-services/{node}"): SERVERS,
    ("GET", "/v1/health/node/{node}"): SERVERS,
    ("GET", "/v1/health/checks/{service}"): SERVERS,
    ("GET", "/v1/health/service/{service}"): SERVERS,
    ("GET", "/v1/health/connect/{service}"): SERVERS,
    ("GET", "/v1/health/state/{state}"): SERVERS,
    ("PUT", "/v1/config"): SERVERS,
    ("GET", "/v1/config/{kind}"): SERVERS,
    ("GET", "/v1/config/{kind}/{name}"): SERVERS,
    ("DELETE", "/v1/config/{kind}/{name}"): SERVERS,
    ("GET", "/v1/discovery-chain/{service}"): SERVERS,
    ("POST", "/v1/discovery-chain/{service}"): SERVERS,
    ("GET", "/v1/connect/ca/roots"): OPEN,
    ("GET", "/v1/connect/ca/configuration"): SERVERS,
    ("PUT", "/v1/connect/ca/configuration"): SERVERS,
    ("GET", "/v1/connect/intentions"): SERVERS,
    ("POST", "/v1/connect/intentions"): SERVERS,
    ("GET", "/v1/connect/intentions/exact"): SERVERS,
    ("PUT", "/v1/connect/intentions/exact"): SERVERS,
    ("DELETE", "/v1/connect/intentions/exact"): SERVERS,
    ("GET", "/v1/connect/intentions/match"): SERVERS,
    ("GET", "/v1/connect/intentions/check"): SERVERS,
    ("GET", "/v1/connect/intentions/{id}"): SERVERS,
    ("PUT", "/v1/connect/intentions/{id}"): SERVERS,
    ("DELETE", "/v1/connect/intentions/{id}"): SERVERS,
    ("GET", "/v1/kv/{key}"): SERVERS,
    ("PUT", "/v1/kv/{key}"): SERVERS,
    ("DELETE", "/v1/kv/{key}"): SERVERS,
    ("PUT", "/v1/txn"): SERVERS,
    ("PUT", "/v1/session/create"): SERVERS,
    ("PUT", "/v1/session/destroy/{id}"): SERVERS,
    ("PUT", "/v1/session/renew/{id}"): SERVERS,
    ("GET", "/v1/session/info/{id}"): SERVERS,
    ("GET", "/v1/session/node/{node}"): SERVERS,
    ("GET", "/v1/session/list"): SERVERS,
    ("GET", "/v1/status/leader"): OPEN,
    ("GET", "/v1/status/peers"): OPEN,
    ("GET", "/v1/operator/raft/configuration"): SERVERS,
    ("GET", "/v1/operator/raft/state"): require("operator", "read"),
    ("DELETE", "/v1/operator/raft/peer"): require("operator", "write"),
    # a snapshot holds every secret: management only, as in Consul
    ("GET", "/v1/snapshot"): require("acl", "write"),
    ("PUT", "/v1/snapshot"): require("acl", "write"),
    ("GET", "/"): OPEN,
    # ---- ACLs: each handler checks (acl:read, acl:write, or the token itself) -------
    ("PUT", "/v1/acl/bootstrap"): OPEN,
    ("PUT", "/v1/acl/token"): IN_HANDLER,
    ("GET", "/v1/acl/token/self"): IN_HANDLER,
    ("GET", "/v1/acl/token/{id}"): IN_HANDLER,
    ("PUT", "/v1/acl/token/{id}"): IN_HANDLER,
    ("DELETE", "/v1/acl/token/{id}"): IN_HANDLER,
    ("PUT", "/v1/acl/token/{id}/clone"): IN_HANDLER,
    ("GET", "/v1/acl/tokens"): IN_HANDLER,
    ("PUT", "/v1/acl/policy"): IN_HANDLER,
    ("GET", "/v1/acl/policy/name/{name}"): IN_HANDLER,
    ("GET", "/v1/acl/policy/{id}"): IN_HANDLER,
    ("PUT", "/v1/acl/policy/{id}"): IN_HANDLER,
    ("DELETE", "/v1/acl/policy/{id}"): IN_HANDLER,
    ("GET", "/v1/acl/policies"): IN_HANDLER,
    ("PUT", "/v1/acl/role"): IN_HANDLER,
    ("GET", "/v1/acl/role/name/{name}"): IN_HANDLER,
    ("GET", "/v1/acl/role/{id}"): IN_HANDLER,
    ("PUT", "/v1/acl/role/{id}"): IN_HANDLER,
    ("DELETE", "/v1/acl/role/{id}"): IN_HANDLER,
    ("GET", "/v1/acl/roles"): IN_HANDLER,
}


def route_key(request: web.Request) -> tuple[str, str] | None:
    """(method, path template) with the templates' regular expressions removed, e.g.
    `/v1/agent/service/{id:.+}` -> `/v1/agent/service/{id}`; None for no route."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    # aiohttp answers HEAD for every GET route: the GET's rule applies
    return "GET" if request.method == "HEAD" else request.method, template(resource.canonical)


@lru_cache(maxsize=256)
def template(canonical: str) -> str:
    """A route's path with its placeholders' regular expressions dropped."""
    out, depth, skipping = [], 0, False
    for ch in canonical:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                skipping = False
        elif ch == ":" and depth == 1:
            skipping = True
            continue
        if not skipping or ch == "}":
            out.append(ch)
    return "".join(out)


@web.middleware
async def acl_guard(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    agent = request.app["agent"]
    acls = agent.acls
    token = acls.request_token(request.headers, request.query)
    REQUEST_TOKEN.set(token)
    if not acls.enabled:
        return await handler(request)
    key = route_key(request)
    if key is None or request.match_info.http_exception is not None:
        return await handler(request)  # 404 or 405: no route to guard
    rule = ROUTES.get(key)
    if rule is None:
        raise PermissionDenied("Permission denied: this endpoint has no ACL rule")
    if rule.kind == "open":
        return await handler(request)
    access = await acls.access(token)
    request[ACCESS] = access
    if rule.check is not None:
        rule.check(request, access)
    return await handler(request)
