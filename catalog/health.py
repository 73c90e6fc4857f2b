"""Health queries (/v1/health/*): checks and service entries, with their blocking index.

A service entry is one instance with its node and every check that decides its health:
the node-level checks (serfHealth, node maintenance) and the instance's own checks.
`?passing` drops an entry when any of those is not passing (a warning fails it too);
without it every instance is returned, critical ones included, as in Consul.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .filter import Predicate
from .query import node_meta_matches, tags_match
from .store import Store
from .structs import CRITICAL, HEALTH_STATES, PASSING, WARNING, Check, Node, Service

__all__ = [
    "MAINTENANCE",
    "SERF_CHECK_ID",
    "SERF_CHECK_NAME",
    "ALIVE_OUTPUT",
    "DEAD_OUTPUT",
    "serf_check",
    "aggregate_status",
    "health_node",
    "health_checks",
    "health_service",
    "health_service_watch_keys",
    "health_state",
    "health_connect",
    "health_connect_watch_keys",
]

MAINTENANCE = "maintenance"
# The node-level check that says whether the agent on a node is alive (Consul's
# structs.SerfCheckID): written by the leader from heartbeats, kept by anti-entropy.
SERF_CHECK_ID = "serfHealth"
SERF_CHECK_NAME = "Serf Health Status"
ALIVE_OUTPUT = "Agent alive and reachable"
DEAD_OUTPUT = "Agent not live or unreachable"
_NODE_MAINT = "_node_maintenance"


def serf_check(status: str) -> Check:
    """The node-level check that says whether the agent on a node is alive."""
    return Check(check_id=SERF_CHECK_ID, name=SERF_CHECK_NAME, status=status,
                 output=ALIVE_OUTPUT if status == PASSING else DEAD_OUTPUT)
_SERVICE_MAINT = "_service_maintenance:"


def aggregate_status(checks: list[Check] | list[dict[str, Any]]) -> str:
    """Consul's AggregatedStatus: maintenance, then critical, then warning, else passing."""
    statuses, ids = [], []
    for c in checks:
        if isinstance(c, dict):
            statuses.append(c["Status"])
            ids.append(c["CheckID"])
        else:
            statuses.append(c.status)
            ids.append(c.check_id)
    if any(i == _NODE_MAINT or i.startswith(_SERVICE_MAINT) for i in ids):
        return MAINTENANCE
    for state in (CRITICAL, WARNING):
        if state in statuses:
            return state
    return PASSING


def health_node(store: Store, node: str, pred: Predicate | None) -> tuple[int, list[dict[str, Any]]]:
    rows = [c.to_api() for _, c in sorted(store.node_checks(node).items())]
    return store.index("checks", "nodes"), [r for r in rows if pred is None or pred(r)]


def health_checks(
    store: Store, service: str, node_meta: dict[str, str], pred: Predicate | None
) -> tuple[int, list[dict[str, Any]]]:
    out = []
    for node, svc in store.instances(service):
        if node_meta and not node_meta_matches(node, node_meta):
            continue
        for check in sorted(store.service_checks(node.node, svc.id), key=lambda c: c.check_id):
            row = check.to_api()
            if pred is None or pred(row):
                out.append(row)
    fine = store.index("service." + service.lower())
    return (fine or store.index("checks", "services")), out


def health_service_watch_keys(service: str) -> tuple[str, ...]:
    return ("service." + service.lower(), "services")


def health_service(
    store: Store,
    service: str,
    tags: list[str],
    passing: bool,
    node_meta: dict[str, str],
    pred: Predicate | None,
) -> tuple[int, list[dict[str, Any]]]:
    instances: Iterable[tuple[Node, Service]] = store.instances(service)
    if tags:
        instances = ((n, s) for n, s in instances if tags_match(s, tags))
    out = _service_entries(store, instances, passing, node_meta, pred)
    fine = store.index("service." + service.lower())
    return (fine or store.index("services")), out


def _service_entries(
    store: Store,
    instances: Iterable[tuple[Node, Service]],
    passing: bool,
    node_meta: dict[str, str],
    pred: Predicate | None,
) -> list[dict[str, Any]]:
    """ServiceEntry rows (node, service, the node's and the instance's checks)."""
    out = []
    node_checks_cache: dict[str, list[Check]] = {}
    for node, svc in instances:
        if node_meta and not node_meta_matches(node, node_meta):
            continue
        key = node.node.lower()
        if key not in node_checks_cache:
            node_checks_cache[key] = sorted(store.node_level_checks(node.node), key=lambda c: c.check_id)
        checks = node_checks_cache[key] + sorted(store.service_checks(node.node, svc.id), key=lambda c: c.check_id)
        if passing and any(c.status != PASSING for c in checks):
            continue
        entry = {"Node": node.to_api(), "Service": svc.to_api(), "Checks": [c.to_api() for c in checks]}
        if pred is None or pred(entry):
            out.append(entry)
    return out


def health_state(
    store: Store, state: str, node_meta: dict[str, str], pred: Predicate | None
) -> tuple[int, list[dict[str, Any]]]:
    """Checks in one state; `any` is every check. Unknown states are the caller's 400."""
    if state != "any" and state not in HEALTH_STATES:
        raise ValueError(state)
    out = []
    for check in store.all_checks():
        if state != "any" and check.status != state:
            continue
        if node_meta:
            node = store.node(check.node)
            if node is None or not node_meta_matches(node, node_meta):
                continue
        row = check.to_api()
        if pred is None or pred(row):
            out.append(row)
    return store.index("checks"), out


def health_connect_watch_keys(service: str) -> tuple[str, ...]:
    """Only the service's connect view: a sidecar watching its upstream's endpoints
    must not wake for every check in the datacenter (catalog.store, `connect.<name>`)."""
    return ("connect." + service.lower(),)


def health_connect(
    store: Store, service: str, passing: bool, node_meta: dict[str, str], pred: Predicate | None
) -> tuple[int, list[dict[str, Any]]]:
    """Mesh endpoints of a service: its sidecar proxies (connect-proxy services whose
    Proxy.DestinationServiceName is `service`) and Connect-native instances."""
    out = _service_entries(store, store.connect_instances(service), passing, node_meta, pred)
    fine = store.index("connect." + service.lower())
    return (fine or store.index("services")), out
