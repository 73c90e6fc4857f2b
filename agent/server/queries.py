"""Named read queries: the same table serves a server's own HTTP handlers and the
`Read` RPC that client agents call, so a query means the same thing everywhere.

Parameters are plain msgpack-able values (names, tag lists, meta maps, the filter
text); the filter is compiled where the query runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.ca.manager import config_api, roots_api
from mesh.catalog import health, query
from mesh.catalog.acl_state import ANONYMOUS_SECRET
from mesh.catalog.commands import KVOp
from mesh.catalog.config_entries import (
    PROXY_DEFAULTS,
    SERVICE_DEFAULTS,
    SERVICE_INTENTIONS,
    check_kind,
    entry_to_api,
    watch_key,
)
from mesh.catalog.config_intentions import intentions_entries, intentions_entry
from mesh.catalog.discovery_chain import CHAIN_KINDS, chain_to_api, compile_chain
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.filter import compile_filter
from mesh.catalog.intentions import decide, sort_intentions
from mesh.catalog.kv import KV_WRITE_VERBS, KVOverlay, kv_prefix_watch_key, kv_watch_key, run_txn
from mesh.catalog.store import Store
from mesh.catalog.structs import row_to_wire

__all__ = ["ReadQuery", "QUERIES", "node_state"]

Params = dict[str, Any]


@dataclass(frozen=True)
class ReadQuery:
    keys: Callable[[Params], list[str]]
    run: Callable[[Store, Params], tuple[int, Any]]


def _meta(p: Params) -> dict[str, str]:
    return dict(p.get("node_meta") or {})


def node_state(store: Store, name: str) -> tuple[int, dict[str, Any] | None]:
    """One node's catalog entries as anti-entropy compares them: positional rows (they
    cross the RPC as msgpack), plus the cluster size that scales the sync period."""
    node = store.node(name)
    index = store.index("nodes", "services", "checks")
    if node is None:
        return index, {"node": None, "cluster_size": len(store.nodes)}
    return index, {
        "node": row_to_wire(node),
        "services": {k: row_to_wire(v) for k, v in store.node_services(name).items()},
        "checks": {k: row_to_wire(v) for k, v in store.node_checks(name).items()},
        "cluster_size": len(store.nodes),
    }


def _health_state(store: Store, p: Params) -> tuple[int, Any]:
    try:
        return health.health_state(store, p["state"], _meta(p), compile_filter(p.get("filter")))
    except ValueError:
        raise InvalidRequest(f"Invalid check state {p['state']!r}: must be any, passing, warning or critical") from None


def _intentions_sorted(store: Store) -> list[Any]:
    return sort_intentions(store.intentions.values())


def _intention_list(store: Store, p: Params) -> tuple[int, Any]:
    rows = [i.to_api() for i in _intentions_sorted(store)]
    pred = compile_filter(p.get("filter"))
    return store.index("intentions"), [r for r in rows if pred is None or pred(r)]


def _intention_rows(store: Store, p: Params) -> tuple[int, Any]:
    """Positional rows for agents' caches (they rebuild Intention objects)."""
    return store.index("intentions"), [row_to_wire(i) for i in store.intentions.values()]


def _intention_get(store: Store, p: Params) -> tuple[int, Any]:
    row = store.intentions.get(p["id"])
    return store.index("intentions"), row.to_api() if row else None


def _intention_exact(store: Store, p: Params) -> tuple[int, Any]:
    row = store.intention_by_pair(p["source"], p["destination"])
    return store.index("intentions"), row.to_api() if row else None


def _intention_match(store: Store, p: Params) -> tuple[int, Any]:
    by = p["by"]
    out: dict[str, list[dict[str, Any]]] = {}
    for name in p["names"]:
        rows = []
        for i in _intentions_sorted(store):
            pattern = i.source_name if by == "source" else i.destination_name
            if pattern == "*" or pattern.lower() == name.lower():
                rows.append(i.to_api())
        out[name] = rows
    return store.index("intentions"), out


def _intention_check(store: Store, p: Params) -> tuple[int, Any]:
    decision = decide(_intentions_sorted(store), p["source"], p["destination"], bool(p.get("default_allow", True)))
    return store.index("intentions"), {
        "Allowed": decision.allowed, "Reason": decision.reason,
        "Intention": decision.intention.to_api() if decision.intention else None,
    }


def _config_get(store: Store, p: Params) -> tuple[int, Any]:
    """One config entry in Consul's JSON, or None; a service-intentions entry is made
    from its intention rows."""
    kind, name = p["kind"], p["name"]
    check_kind(kind)
    index = store.index(watch_key(kind, name))
    if kind == SERVICE_INTENTIONS:
        return index, intentions_entry(store.config_entry(kind, name), store.intentions_to(name))
    row = store.config_entry(kind, name)
    return index, entry_to_api(row) if row else None


def _config_list(store: Store, p: Params) -> tuple[int, Any]:
    """Every entry of one kind, by name, `?filter` applied."""
    kind = p["kind"]
    check_kind(kind)
    if kind == SERVICE_INTENTIONS:
        records = {name: row for (k, name), row in store.config.items() if k == kind}
        entries = intentions_entries(records, store.intentions.values())
    else:
        entries = [entry_to_api(row) for row in store.config_entries_of(kind)]
    pred = compile_filter(p.get("filter"))
    return store.index(watch_key(kind)), [e for e in entries if pred is None or pred(e)]


# what a compiled chain reads: its entries, the protocols under them, the CA's trust domain (SNI)
_CHAIN_KEYS = [*(watch_key(kind) for kind in (*CHAIN_KINDS, SERVICE_DEFAULTS, PROXY_DEFAULTS)), "ca"]


def _discovery_chain(store: Store, p: Params) -> tuple[int, Any]:
    """The compiled chain of `name` as `compile_dc` sees it, in Consul's JSON; a chain
    that does not compile is `{"Error": message}` (the endpoint's 500), an answer like
    any other so a blocked reader wakes when the entries are fixed."""
    index = store.index(*_CHAIN_KEYS)
    try:
        chain = compile_chain(p["name"], p["compile_dc"], store, override_protocol=p.get("override_protocol") or "",
                              override_connect_timeout=p.get("override_connect_timeout"))
    except InvalidRequest as exc:
        return index, {"Error": str(exc)}
    return index, chain_to_api(chain, str(store.ca.get("trust_domain") or ""))


def _kv_get(store: Store, p: Params) -> tuple[int, Any]:
    entry = store.kv.get(p["key"])
    return store.kv.key_index(p["key"], store.index("kvs")), [entry.to_api()] if entry else None


def _kv_list(store: Store, p: Params) -> tuple[int, Any]:
    entries = [e.to_api() for e in store.kv.under(p["prefix"])]
    return store.kv.prefix_index(p["prefix"], store.index("kvs")), entries or None


def _kv_keys(store: Store, p: Params) -> tuple[int, Any]:
    return (store.kv.prefix_index(p["prefix"], store.index("kvs")),
            store.kv.keys_under(p["prefix"], p.get("separator") or ""))


def _kv_txn_read(store: Store, p: Params) -> tuple[int, Any]:
    """A transaction of reads only: served like a read, through the same loop as a
    write (catalog.kv.run_txn) over a view that is never committed."""
    ops = [KVOp(verb, key, index=index, session=session) for verb, key, index, session in p["ops"]]
    if any(op.verb in KV_WRITE_VERBS for op in ops):
        raise InvalidRequest("kv.txn_read: a transaction with writes goes through Raft")
    results, errors = run_txn(KVOverlay(store.kv, 0, 0.0, lambda session: False), ops)
    if errors:
        return store.index("kvs"), {"Results": None, "Errors": errors}
    return store.index("kvs"), {"Results": results, "Errors": None}


def _acl_token(store: Store, p: Params) -> tuple[int, Any]:
    table = store.acl
    token = table.tokens.get(p["id"]) if "id" in p else table.token_by_secret(p.get("secret") or ANONYMOUS_SECRET)
    return store.index("acl"), token.to_api(table) if token else None


def _acl_tokens(store: Store, p: Params) -> tuple[int, Any]:
    table = store.acl
    policy, role, service = p.get("policy") or "", p.get("role") or "", p.get("servicename") or ""
    if p.get("authmethod"):
        return store.index("acl"), []  # no auth methods in mesh: no token came from one
    rows = [t.to_api(table) for t in sorted(table.tokens.values(), key=lambda t: (t.create_index, t.accessor_id))
            if (not policy or policy in t.policies) and (not role or role in t.roles)
            and (not service or any(name == service for name, _ in t.service_identities))]
    return store.index("acl"), rows


def _acl_policy(store: Store, p: Params) -> tuple[int, Any]:
    table = store.acl
    policy_id = p["id"] if "id" in p else table.policy_names.get(p["name"], "")
    row = table.policies.get(policy_id)
    return store.index("acl"), row.to_api() if row else None


def _acl_role(store: Store, p: Params) -> tuple[int, Any]:
    table = store.acl
    role_id = p["id"] if "id" in p else table.role_names.get(p["name"], "")
    row = table.roles.get(role_id)
    return store.index("acl"), row.to_api(table) if row else None


def _acl_policies(store: Store, p: Params) -> tuple[int, Any]:
    rows = sorted(store.acl.policies.values(), key=lambda r: (r.create_index, r.id))
    return store.index("acl"), [r.to_list_api() for r in rows]


def _acl_roles(store: Store, p: Params) -> tuple[int, Any]:
    policy = p.get("policy") or ""
    rows = sorted(store.acl.roles.values(), key=lambda r: (r.create_index, r.id))
    return store.index("acl"), [r.to_api(store.acl) for r in rows if not policy or policy in r.policies]


def _sessions(rows: Any) -> list[dict[str, Any]]:
    return [s.to_api() for s in sorted(rows, key=lambda s: (s.create_index, s.id))]


def _session_info(store: Store, p: Params) -> tuple[int, Any]:
    row = store.sessions.get(p["id"])
    return store.index("session:" + p["id"]), _sessions([row] if row else [])


def _session_node(store: Store, p: Params) -> tuple[int, Any]:
    node = p["node"].lower()
    return (store.index("session-node:" + node),
            _sessions(s for s in store.sessions.values() if s.node.lower() == node))


QUERIES: dict[str, ReadQuery] = {
    # KV: a key's read wakes for that key only, a prefix read for changes under it
    "kv.get": ReadQuery(lambda p: [kv_watch_key(p["key"])], _kv_get),
    "kv.list": ReadQuery(lambda p: [kv_prefix_watch_key(p["prefix"])], _kv_list),
    "kv.keys": ReadQuery(lambda p: [kv_prefix_watch_key(p["prefix"])], _kv_keys),
    "kv.txn_read": ReadQuery(lambda p: ["kvs"], _kv_txn_read),
    "session.info": ReadQuery(lambda p: ["session:" + p["id"]], _session_info),
    "session.node": ReadQuery(lambda p: ["session-node:" + p["node"].lower()], _session_node),
    "session.list": ReadQuery(lambda p: ["sessions"],
                              lambda s, p: (s.index("sessions"), _sessions(s.sessions.values()))),
    # ACLs: one watch key, the table (writes are rare); agent/http/acl.py serves them
    "acl.token": ReadQuery(lambda p: ["acl"], _acl_token),
    "acl.token_self": ReadQuery(lambda p: ["acl"], _acl_token),
    "acl.tokens": ReadQuery(lambda p: ["acl"], _acl_tokens),
    "acl.policy": ReadQuery(lambda p: ["acl"], _acl_policy),
    "acl.policies": ReadQuery(lambda p: ["acl"], _acl_policies),
    "acl.role": ReadQuery(lambda p: ["acl"], _acl_role),
    "acl.roles": ReadQuery(lambda p: ["acl"], _acl_roles),
    "ca.roots": ReadQuery(lambda p: ["ca"], lambda s, p: (s.index("ca"), roots_api(s.ca, s.index("ca")))),
    "ca.config": ReadQuery(lambda p: ["ca"], lambda s, p: (s.index("ca"), config_api(s.ca))),
    "intentions.list": ReadQuery(lambda p: ["intentions"], _intention_list),
    "intentions.rows": ReadQuery(lambda p: ["intentions"], _intention_rows),
    "intentions.get": ReadQuery(lambda p: ["intentions"], _intention_get),
    "intentions.exact": ReadQuery(lambda p: ["intentions"], _intention_exact),
    "intentions.match": ReadQuery(lambda p: ["intentions"], _intention_match),
    "intentions.check": ReadQuery(lambda p: ["intentions"], _intention_check),
    # config entries: the agent-side merge and the proxies read these (mesh.catalog.
    # config_entries.resolve_protocol takes their results)
    "config.get": ReadQuery(lambda p: [watch_key(p["kind"], p["name"])], _config_get),
    "config.list": ReadQuery(lambda p: [watch_key(p["kind"])], _config_list),
    "discovery_chain": ReadQuery(lambda p: list(_CHAIN_KEYS), _discovery_chain),
    "catalog.nodes": ReadQuery(
        lambda p: ["nodes"], lambda s, p: query.catalog_nodes(s, _meta(p), compile_filter(p.get("filter")))
    ),
    "catalog.services": ReadQuery(
        lambda p: ["services", "nodes"],
        lambda s, p: query.catalog_services(s, _meta(p), compile_filter(p.get("filter"))),
    ),
    "catalog.service": ReadQuery(
        lambda p: list(query.catalog_service_watch_keys(p["name"])),
        lambda s, p: query.catalog_service(s, p["name"], list(p.get("tags") or []), _meta(p), compile_filter(p.get("filter"))),
    ),
    "catalog.node": ReadQuery(
        lambda p: ["nodes", "services"], lambda s, p: query.catalog_node(s, p["name"], compile_filter(p.get("filter")))
    ),
    "catalog.node_services": ReadQuery(
        lambda p: ["nodes", "services"],
        lambda s, p: query.catalog_node_services(s, p["name"], compile_filter(p.get("filter"))),
    ),
    "health.node": ReadQuery(
        lambda p: ["node." + p["name"].lower(), "checks"],
        lambda s, p: health.health_node(s, p["name"], compile_filter(p.get("filter"))),
    ),
    "health.checks": ReadQuery(
        lambda p: list(health.health_service_watch_keys(p["name"])),
        lambda s, p: health.health_checks(s, p["name"], _meta(p), compile_filter(p.get("filter"))),
    ),
    "health.service": ReadQuery(
        lambda p: list(health.health_service_watch_keys(p["name"])),
        lambda s, p: health.health_service(
            s, p["name"], list(p.get("tags") or []), bool(p.get("passing")), _meta(p), compile_filter(p.get("filter"))
        ),
    ),
    "health.state": ReadQuery(lambda p: ["checks"], _health_state),
    "health.connect": ReadQuery(
        lambda p: list(health.health_connect_watch_keys(p["name"])),
        lambda s, p: health.health_connect(s, p["name"], bool(p.get("passing")), _meta(p), compile_filter(p.get("filter"))),
    ),
    "internal.node_state": ReadQuery(
        lambda p: ["node." + p["name"].lower()], lambda s, p: node_state(s, p["name"])
    ),
}
