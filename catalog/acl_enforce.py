"""What a token may do: the permission each write needs, and what each read may show.

One `Access` per request: the token's AccessorID and its authorizer
(catalog.acl_authz). Writes are checked whole before they reach Raft
(`authorize_command`: the permissions Consul's endpoints ask for, e.g. service:write on
the registered service and node:write when the node itself changes); reads are
filtered row by row (`READ_FILTERS`, one per named read in agent/server/queries.py, so
a read without a rule cannot be added). A single object the token may not read is a
403, as in Consul; a list loses the rows and says so (`filtered`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .acl_authz import Authorizer, denied_message
from .acl_rules import Rules, node_identity_rules, parse_rules, service_identity_rules
from .acl_state import ANONYMOUS_ACCESSOR, Resolved
from .commands import Command, DeregisterRequest, KVRequest, MessageType, RegisterRequest
from .config_entries import SERVICE_INTENTIONS
from .errors import PermissionDenied
from .structs import Intention, Node

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Access", "ALLOW_ALL", "compile_access", "authorize_command", "READ_FILTERS", "ACL_NOT_FOUND"]

ACL_NOT_FOUND = "ACL not found"
# config entry kinds that belong to the whole mesh rather than to one service
_MESH_KINDS = frozenset({"proxy-defaults", "mesh"})
# the rule language's unlabeled resources (`operator = "read"`)
_GLOBAL_KINDS = frozenset({"operator", "acl", "mesh", "keyring", "peering"})


@dataclass(frozen=True)
class Access:
    """A resolved token: who (AccessorID, for messages) and what it may do."""

    accessor_id: str
    authz: Authorizer
    anonymous: bool = False

    def can(self, resource: str, name: str, access: str) -> bool:
        if resource in _GLOBAL_KINDS:
            return self.authz.allowed_global(resource, access)
        return self.authz.allowed(resource, name, access)

    def require(self, resource: str, name: str | None, access: str) -> None:
        if not self.can(resource, name or "", access):
            raise PermissionDenied(denied_message(self.accessor_id, resource, access, name))

    def require_intention(self, service: str, access: str) -> None:
        if not self.authz.intention_allowed(service, access):
            raise PermissionDenied(denied_message(self.accessor_id, "intention", access, service))


# ACLs off: everything allowed, ACL management included (Consul resolves to ManageAll)
ALLOW_ALL = Access("", Authorizer.manage())


@lru_cache(maxsize=512)
def _parsed(text: str) -> Rules:
    """Policies are parsed once per text: python-hcl2 takes milliseconds per small
    policy (and a second for a large one), and many tokens share policies."""
    return parse_rules(text)


def compile_access(resolved: Resolved, default_policy: str) -> Access:
    """A resolved token's authorizer: its policies' rules and the templated policies of
    its identities, merged; management tokens may do everything."""
    anonymous = resolved.accessor_id == ANONYMOUS_ACCESSOR
    if resolved.management:
        return Access(resolved.accessor_id, Authorizer.manage(), anonymous)
    rules = [_parsed(text) for text in resolved.rules]
    rules += [service_identity_rules(name) for name in resolved.service_identities]
    rules += [node_identity_rules(name) for name in resolved.node_identities]
    return Access(resolved.accessor_id, Authorizer.from_rules(rules, default_policy), anonymous)


# ---- writes ------------------------------------------------------------------------
def _node_changes(store: Store, node: Node) -> bool:
    current = store.node(node.node)
    return current is None or (current.address, current.tagged_addresses, current.meta) != (
        node.address, node.tagged_addresses, node.meta)


def _register(access: Access, req: RegisterRequest, store: Store) -> None:
    if not req.skip_node_update and _node_changes(store, req.node):
        access.require("node", req.node.node, "write")
    service = req.service
    if service is not None:
        access.require("service", service.service, "write")
        if service.kind == "connect-proxy" and service.proxy:
            destination = str(service.proxy.get("DestinationServiceName") or "")
            if destination:
                access.require("service", destination, "write")
    names = {service.id: service.service} if service else {}
    for check in req.checks:
        if check.service_id:
            owner = names.get(check.service_id) or _service_name(store, req.node.node, check.service_id)
            access.require("service", owner or check.service_id, "write")
        else:
            access.require("node", req.node.node, "write")


def _service_name(store: Store, node: str, service_id: str) -> str:
    row = store.node_services(node).get(service_id)
    return row.service if row else ""


def _deregister(access: Access, req: DeregisterRequest, store: Store) -> None:
    if req.service_id:
        name = _service_name(store, req.node, req.service_id)
        if name:
            access.require("service", name, "write")
        else:
            access.require("node", req.node, "write")
    elif req.check_id:
        check = store.checks.get(req.node.lower(), {}).get(req.check_id)
        if check is not None and check.service_id:
            access.require("service", check.service_name or _service_name(store, req.node, check.service_id), "write")
        else:
            access.require("node", req.node, "write")
    else:
        access.require("node", req.node, "write")


def _config(access: Access, kind: str, name: str) -> None:
    if kind in _MESH_KINDS:
        access.require("mesh", None, "write")
    elif kind == SERVICE_INTENTIONS:
        access.require_intention(name, "write")
    else:
        access.require("service", name, "write")


def _kv(access: Access, req: KVRequest) -> None:
    for op in req.ops:
        if op.verb == "delete-tree":
            if not access.authz.key_write_prefix(op.key):
                raise PermissionDenied(denied_message(access.accessor_id, "key", "write", op.key))
        elif op.verb in ("get", "get-or-empty", "check-index", "check-session", "check-not-exists"):
            access.require("key", op.key, "read")
        elif op.verb == "get-tree":
            access.require("key", op.key, "list")
        else:
            access.require("key", op.key, "write")


def authorize_command(access: Access, cmd: Command, store: Store) -> None:
    """Raise PermissionDenied unless `access` may commit `cmd` against `store` (read
    under the apply lock: what a deregistration removes is looked up in it)."""
    body = cmd.body
    kind = cmd.type
    if kind == MessageType.REGISTER:
        _register(access, body, store)
    elif kind == MessageType.DEREGISTER:
        _deregister(access, body, store)
    elif kind == MessageType.INTENTION_UPSERT:
        intention: Intention = body[0]
        access.require_intention(intention.destination_name, "write")
    elif kind == MessageType.INTENTION_DELETE:
        found = store.intentions.get(str(body))
        if found is not None:
            access.require_intention(found.destination_name, "write")
    elif kind == MessageType.CONFIG_SET:
        _config(access, body.entry.kind, body.entry.name)
    elif kind == MessageType.CONFIG_DELETE:
        _config(access, body.kind, body.name)
    elif kind in (MessageType.KV_APPLY, MessageType.TXN):
        _kv(access, body)
    elif kind == MessageType.SESSION_CREATE:
        access.require("session", body.node, "write")
    elif kind == MessageType.SESSION_DESTROY:
        for session_id in body.ids:
            session = store.sessions.get(session_id)
            if session is not None:
                access.require("session", session.node, "write")
    elif kind == MessageType.ACL:
        if body.op != "bootstrap":  # anyone may try; the state machine allows it once
            access.require("acl", None, "write")
    elif kind != MessageType.BARRIER:
        raise PermissionDenied(f"Permission denied: command type {kind} is the servers' own")


# ---- reads -------------------------------------------------------------------------
Filter = Callable[[Access, dict[str, Any], Any], tuple[Any, bool]]


def _keep(rows: Iterable[Any] | None, ok: Callable[[Any], bool]) -> tuple[Any, bool]:
    if rows is None:
        return None, False
    rows = list(rows)
    kept = [r for r in rows if ok(r)]
    return kept, len(kept) != len(rows)


def _everything(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return value, False


def _requires(resource: str, access_level: str, name_param: str | None = None) -> Filter:
    def check(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
        access.require(resource, str(params.get(name_param, "")) if name_param else None, access_level)
        return value, False
    return check


def _node_row(access: Access, row: dict[str, Any]) -> bool:
    return access.can("node", str(row.get("Node", "")), "read")


def _service_instance(access: Access, row: dict[str, Any]) -> bool:
    return access.can("node", str(row.get("Node", "")), "read") and \
        access.can("service", str(row.get("ServiceName", "")), "read")


def _check_row(access: Access, row: dict[str, Any]) -> bool:
    if not access.can("node", str(row.get("Node", "")), "read"):
        return False
    service = str(row.get("ServiceName") or "")
    return not service or access.can("service", service, "read")


def _health_row(access: Access, row: dict[str, Any]) -> bool:
    node = (row.get("Node") or {}).get("Node", "")
    service = (row.get("Service") or {}).get("Service", "")
    return access.can("node", str(node), "read") and access.can("service", str(service), "read")


def _rows(test: Callable[[Access, dict[str, Any]], bool]) -> Filter:
    def apply(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
        return _keep(value, lambda row: test(access, row))
    return apply


def _health_service(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    if not access.can("service", str(params.get("name", "")), "read"):
        return [], bool(value)
    kept, filtered = _keep(value, lambda row: _health_row(access, row))
    out = []
    for row in kept or []:  # rows are shared with other readers: copied, never changed
        checks = row.get("Checks") or []
        visible = [c for c in checks if _check_row(access, c)]
        filtered = filtered or len(visible) != len(checks)
        out.append(row if len(visible) == len(checks) else dict(row, Checks=visible))
    return out, filtered


def _catalog_services(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    kept = {name: tags for name, tags in (value or {}).items() if access.can("service", name, "read")}
    return kept, len(kept) != len(value or {})


def _catalog_node(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    if value is None:
        return None, False
    if not access.can("node", str(params.get("name", "")), "read"):
        return None, True
    services = value.get("Services")
    if isinstance(services, dict):
        kept: Any = {k: s for k, s in services.items() if access.can("service", s.get("Service", ""), "read")}
    else:
        kept = [s for s in services or [] if access.can("service", s.get("Service", ""), "read")]
    return dict(value, Services=kept), len(kept) != len(services or [])


def _kv_one(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    access.require("key", str(params.get("key", "")), "read")
    return value, False


def _kv_keys(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return _keep(value, lambda key: access.can("key", key, "read"))


def _kv_txn(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    for verb, key, _index, _session in params.get("ops") or []:
        access.require("key", str(key), "list" if verb == "get-tree" else "read")
    return value, False


def _session_rows(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return _keep(value, lambda row: access.can("session", str(row.get("Node", "")), "read"))


def _intention_rows(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return _keep(value, lambda row: access.authz.intention_allowed(str(row.get("DestinationName", "")), "read"))


_DESTINATION = Intention.__slots__.index("destination_name")


def _intention_wire_rows(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return _keep(value, lambda row: access.authz.intention_allowed(str(row[_DESTINATION]), "read"))


def _intention_one(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) and "DestinationName" in value:
        access.require_intention(str(value["DestinationName"]), "read")
    return value, False


def _intention_match(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    if not isinstance(value, dict):
        return value, False
    filtered = False
    out = {}
    for name, rows in value.items():
        kept, dropped = _keep(rows, lambda row: access.authz.intention_allowed(str(row.get("DestinationName", "")),
                                                                               "read"))
        out[name], filtered = kept, filtered or dropped
    return out, filtered


def _config_allowed(access: Access, entry: dict[str, Any]) -> bool:
    kind = str(entry.get("Kind", ""))
    if kind in _MESH_KINDS:
        return True  # read by every sidecar: Consul lets any token read them
    if kind == SERVICE_INTENTIONS:
        return access.authz.intention_allowed(str(entry.get("Name", "")), "read")
    return access.can("service", str(entry.get("Name", "")), "read")


def _config_one(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    if isinstance(value, dict) and "Kind" in value and not _config_allowed(access, value):
        kind = str(value["Kind"])
        resource, name = ("intention", str(value.get("Name", ""))) if kind == SERVICE_INTENTIONS else \
            ("service", str(value.get("Name", "")))
        raise PermissionDenied(denied_message(access.accessor_id, resource, "read", name))
    return value, False


def _config_list(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    return _keep(value, lambda entry: _config_allowed(access, entry))


def _acl_read(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    access.require("acl", None, "read")
    return value, False


def _hide_secret(access: Access, row: Any) -> Any:
    if isinstance(row, dict) and "SecretID" in row and not access.can("acl", "", "write"):
        return dict(row, SecretID="<hidden>")
    return row


def _acl_token(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    access.require("acl", None, "read")
    return _hide_secret(access, value), False


def _acl_tokens(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    access.require("acl", None, "read")
    return [_hide_secret(access, row) for row in value or []], False


def _node_state(access: Access, params: dict[str, Any], value: Any) -> tuple[Any, bool]:
    access.require("node", str(params.get("name", "")), "read")
    return value, False


READ_FILTERS: dict[str, Filter] = {
    "kv.get": _kv_one,
    "kv.list": _rows(lambda a, row: a.can("key", str(row.get("Key", "")), "read")),
    "kv.keys": _kv_keys,
    "kv.txn_read": _kv_txn,
    "session.info": _session_rows,
    "session.node": _session_rows,
    "session.list": _session_rows,
    "acl.token": _acl_token,
    "acl.token_self": _everything,  # whoever holds the secret may read its token
    "acl.tokens": _acl_tokens,
    "acl.policy": _acl_read,
    "acl.policies": _acl_read,
    "acl.role": _acl_read,
    "acl.roles": _acl_read,
    "ca.roots": _everything,  # public: every client verifies against them
    "ca.config": _requires("operator", "read"),
    "intentions.list": _intention_rows,
    "intentions.rows": _intention_wire_rows,
    "intentions.get": _intention_one,
    "intentions.exact": _intention_one,
    "intentions.match": _intention_match,
    "intentions.check": _requires("service", "read", "destination"),
    "config.get": _config_one,
    "config.list": _config_list,
    "discovery_chain": _requires("service", "read", "name"),
    "catalog.nodes": _rows(_node_row),
    "catalog.services": _catalog_services,
    "catalog.service": _rows(_service_instance),
    "catalog.node": _catalog_node,
    "catalog.node_services": _catalog_node,
    "health.node": _rows(_check_row),
    "health.checks": _rows(_check_row),
    "health.service": _health_service,
    "health.state": _rows(_check_row),
    "health.connect": _health_service,
    "internal.node_state": _node_state,
}

