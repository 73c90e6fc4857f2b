"""Read queries over the store, shaped as Consul's JSON, each with its blocking index.

Every function returns ``(index, result)`` where index is the max index of the watch
keys the query read, as Consul's endpoints do (a query on one service answers with
that service's index, or the services table's when the service does not exist).
Ordering is deterministic (by node, then ID), as in Consul's HTTP answers.
"""

from __future__ import annotations

from typing import Any

from .filter import Predicate
from .store import Store
from .structs import Node, Service

__all__ = [
    "catalog_nodes",
    "catalog_services",
    "catalog_service",
    "catalog_node",
    "catalog_node_services",
    "catalog_service_watch_keys",
    "node_meta_matches",
    "tags_match",
]


def node_meta_matches(node: Node, node_meta: dict[str, str]) -> bool:
    return all(node.meta.get(k) == v for k, v in node_meta.items())


def tags_match(service: Service, tags: list[str]) -> bool:
    have = {t.lower() for t in service.tags}
    return all(t.lower() in have for t in tags)


def catalog_nodes(store: Store, node_meta: dict[str, str], pred: Predicate | None) -> tuple[int, list[dict[str, Any]]]:
    out = []
    for key in sorted(store.nodes):
        node = store.nodes[key]
        if node_meta and not node_meta_matches(node, node_meta):
            continue
        row = node.to_api()
        if pred is None or pred(row):
            out.append(row)
    return store.index("nodes"), out


def catalog_services(store: Store, node_meta: dict[str, str], pred: Predicate | None) -> tuple[int, dict[str, list[str]]]:
    """Service name -> union of tags. With a filter, rows are ServiceNode-shaped (Consul)."""
    out: dict[str, list[str]] = {}
    for node_key in sorted(store.services):
        node = store.nodes.get(node_key)
        if node is None or (node_meta and not node_meta_matches(node, node_meta)):
            continue
        for service in store.services[node_key].values():
            if pred is not None and not pred(catalog_service_row(node, service)):
                continue
            tags = out.setdefault(service.service, [])
            for tag in service.tags:
                if tag not in tags:
                    tags.append(tag)
    return store.index("services"), dict(sorted(out.items()))


def catalog_service_row(node: Node, service: Service) -> dict[str, Any]:
    """CatalogService: one instance with its node, flattened as Consul does."""
    return {
        "ID": node.id,
        "Node": node.node,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": dict(node.tagged_addresses),
        "NodeMeta": dict(node.meta),
        "ServiceKind": service.kind,
        "ServiceID": service.id,
        "ServiceName": service.service,
        "ServiceTags": list(service.tags),
        "ServiceAddress": service.address,
        "ServiceTaggedAddresses": dict(service.tagged_addresses),
        "ServiceWeights": dict(service.weights),
        "ServiceMeta": dict(service.meta),
        "ServicePort": service.port,
        "ServiceEnableTagOverride": service.enable_tag_override,
        "ServiceProxy": dict(service.proxy) if service.proxy else {},
        "ServiceConnect": dict(service.connect) if service.connect else {},
        "CreateIndex": service.create_index,
        "ModifyIndex": service.modify_index,
    }


def catalog_service_watch_keys(name: str) -> tuple[str, ...]:
    return ("service." + name.lower(), "services")


def catalog_service(
    store: Store, name: str, tags: list[str], node_meta: dict[str, str], pred: Predicate | None
) -> tuple[int, list[dict[str, Any]]]:
    out = []
    for node, service in store.instances(name):
        if tags and not tags_match(service, tags):
            continue
        if node_meta and not node_meta_matches(node, node_meta):
            continue
        row = catalog_service_row(node, service)
        if pred is None or pred(row):
            out.append(row)
    fine = store.index("service." + name.lower())
    return (fine or store.index("services")), out


def catalog_node(store: Store, name: str, pred: Predicate | None) -> tuple[int, dict[str, Any] | None]:
    index = store.index("nodes", "services")
    node = store.node(name)
    if node is None:
        return index, None
    services = {}
    for sid, service in sorted(store.node_services(name).items()):
        row = service.to_api()
        if pred is None or pred(row):
            services[sid] = row
    return index, {"Node": node.to_api(), "Services": services}


def catalog_node_services(store: Store, name: str, pred: Predicate | None) -> tuple[int, dict[str, Any] | None]:
    index = store.index("nodes", "services")
    node = store.node(name)
    if node is None:
        return index, None
    services = []
    for _, service in sorted(store.node_services(name).items()):
        row = service.to_api()
        if pred is None or pred(row):
            services.append(row)
    return index, {"Node": node.to_api(), "Services": services}
