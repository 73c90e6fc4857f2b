"""The catalog state store: tables of nodes, services, checks and servers, with indexes.

Pure and single-threaded: the caller (the Raft adapter) serializes access. Every
mutation takes the Raft index it is applied at and records which watch keys it touched:

- table keys ``nodes``, ``services``, ``checks``, ``servers``: the max index of the table;
- fine keys ``service.<name>`` and ``node.<name>`` (lower-case), so a blocking query on
  one service wakes only for changes that touch that service: its instances, their
  checks, and the node-level checks of the nodes it runs on;
- ``connect.<name>``: the same for the service's connect view (the connect-proxies whose
  destination it is, and its Connect-native instances; catalog.connect.connect_names),
  so a sidecar watching its upstream's endpoints sleeps through every other change. A
  proxy that changes its destination touches both the old and the new name.

- ``config.<kind>`` and ``config.<kind>.<name>`` (catalog.config_entries.watch_key): a
  kind's config entries and one entry, so a proxy watching its router sleeps through
  every other entry. A change to the intention rows of destination D touches the
  service-intentions keys of D: those rows are that entry (catalog.config_intentions).

- ``kvs``, ``kv:<key>`` (catalog.kv): the KV table and one key; a prefix read waits on
  ``kv*:<prefix>``, which the watch hub matches against the touched ``kv:`` keys.
- ``sessions``, ``session:<id>``, ``session-node:<node>`` (lower-case): the sessions
  table, one session, one node's sessions.
- ``acl``: tokens, policies and roles (catalog.acl_state), one key: ACL writes are rare.

Names match case-insensitively, as in Consul (memdb lower-cases its indexes); rows keep
the case they were registered with.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .acl_state import ACLTable
from .config_entries import SERVICE_INTENTIONS, watch_key
from .connect import connect_names
from .errors import InvalidRequest
from .kv import KVTable
from .structs import (
    HEALTH_STATES,
    Check,
    ConfigEntry,
    Node,
    ServerInfo,
    Service,
    evolve,
    same_content,
    with_index,
)

__all__ = ["Store"]


class Store:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.services: dict[str, dict[str, Service]] = {}  # node key -> service id -> row
        self.checks: dict[str, dict[str, Check]] = {}  # node key -> check id -> row
        self.service_names: dict[str, dict[tuple[str, str], None]] = {}  # name -> instances
        # name -> its connect view's instances (its proxies, its native instances)
        self.connect_names: dict[str, dict[tuple[str, str], None]] = {}
        self.servers: dict[str, ServerInfo] = {}  # raft address -> row
        self.intentions: dict[str, Any] = {}  # ID -> catalog.structs.Intention
        self._pairs: dict[tuple[str, str], str] = {}  # (source, destination) lower-cased -> ID
        # Connect CA: {"cluster_id", "trust_domain", "active_root_id", "roots": [...], "config": {...}};
        # plain msgpack-able data, written whole by the leader (catalog/ never builds certificates)
        self.ca: dict[str, Any] = {}
        self.config: dict[tuple[str, str], ConfigEntry] = {}  # (kind, lower-cased name) -> row
        self.kv = KVTable()
        self.acl = ACLTable()
        self.sessions: dict[str, Any] = {}  # ID -> catalog.sessions.Session
        self.indexes: dict[str, int] = {}
        self.touched: set[str] = set()

    # ---- indexes -------------------------------------------------------------
    def index(self, *keys: str) -> int:
        """Max index over the given watch keys (0 when none has changed yet)."""
        return max((self.indexes.get(k, 0) for k in keys), default=0)

    def _touch(self, index: int, *keys: str) -> None:
        for key in keys:
            if self.indexes.get(key, 0) < index:
                self.indexes[key] = index
            self.touched.add(key)

    def touch_key(self, index: int, key: str) -> None:
        self._touch(index, key)

    def touch(self, index: int, *keys: str) -> None:
        self._touch(index, *keys)

    def drain_touched(self) -> set[str]:
        touched, self.touched = self.touched, set()
        return touched

    # ---- reads ---------------------------------------------------------------
    def node(self, name: str) -> Node | None:
        return self.nodes.get(name.lower())

    def node_services(self, name: str) -> dict[str, Service]:
        return self.services.get(name.lower(), {})

    def node_checks(self, name: str) -> dict[str, Check]:
        return self.checks.get(name.lower(), {})

    def instances(self, service_name: str) -> Iterator[tuple[Node, Service]]:
        """(node, service) pairs of one service name, in node then ID order."""
        return self._rows(self.service_names.get(service_name.lower(), {}))

    def connect_instances(self, service_name: str) -> Iterator[tuple[Node, Service]]:
        """(node, service) pairs of one service's connect view, in node then ID order."""
        return self._rows(self.connect_names.get(service_name.lower(), {}))

    def _rows(self, keys: dict[tuple[str, str], None]) -> Iterator[tuple[Node, Service]]:
        for node_key, service_id in sorted(keys):
            node = self.nodes.get(node_key)
            service = self.services.get(node_key, {}).get(service_id)
            if node is not None and service is not None:
                yield node, service

    def service_checks(self, node_name: str, service_id: str) -> list[Check]:
        return [c for c in self.node_checks(node_name).values() if c.service_id == service_id]

    def node_level_checks(self, node_name: str) -> list[Check]:
        return [c for c in self.node_checks(node_name).values() if not c.service_id]

    def all_checks(self) -> Iterator[Check]:
        for node_key in sorted(self.checks):
            yield from self.checks[node_key].values()

    # ---- writes --------------------------------------------------------------
    @staticmethod
    def _service_keys(service: Service) -> list[str]:
        """The fine keys a change to this row (or to its checks) touches."""
        return ["service." + service.service.lower(), *("connect." + n for n in connect_names(service))]

    def _services_on_node_keys(self, node_key: str) -> list[str]:
        return sorted({k for s in self.services.get(node_key, {}).values() for k in self._service_keys(s)})

    def index_service(self, node_key: str, service: Service) -> None:
        """Enter a row in the by-name indexes (also used when a snapshot is read)."""
        self.service_names.setdefault(service.service.lower(), {})[(node_key, service.id)] = None
        for name in connect_names(service):
            self.connect_names.setdefault(name, {})[(node_key, service.id)] = None

    def _unindex_connect(self, node_key: str, service: Service) -> list[str]:
        keys = []
        for name in connect_names(service):
            members = self.connect_names.get(name)
            if members is not None:
                members.pop((node_key, service.id), None)
                if not members:
                    del self.connect_names[name]
            keys.append("connect." + name)
        return keys

    def ensure_node(self, index: int, node: Node) -> None:
        key = node.node.lower()
        if node.id:
            for other_key, other in self.nodes.items():
                if other.id == node.id and other_key != key:
                    raise InvalidRequest(
                        f"Error updating node: node ID {node.id!r} conflicts with node {other.node!r}"
                    )
        existing = self.nodes.get(key)
        if existing is not None:
            if same_content(node, existing):
                return
            row = with_index(node, existing.create_index, index)
        else:
            row = with_index(node, index, index)
        self.nodes[key] = row
        self._touch(index, "nodes", "node." + key, *self._services_on_node_keys(key))

    def ensure_service(self, index: int, node_name: str, service: Service) -> None:
        key = node_name.lower()
        if key not in self.nodes:
            raise InvalidRequest(f"Missing node registration for {node_name!r}")
        per_node = self.services.setdefault(key, {})
        existing = per_node.get(service.id)
        if service.node != self.nodes[key].node:
            service = evolve(service, node=self.nodes[key].node)
        old_connect: list[str] = []
        if existing is not None:
            if same_content(service, existing):
                return
            row = with_index(service, existing.create_index, index)
            if existing.service.lower() != service.service.lower():
                self._unlink_name(existing, key, index)
            old_connect = self._unindex_connect(key, existing)
        else:
            row = with_index(service, index, index)
        per_node[service.id] = row
        self.index_service(key, row)
        self._touch(index, "services", "node." + key, *self._service_keys(row), *old_connect)
        # checks carry the service name and tags: keep them current
        for check in list(self.checks.get(key, {}).values()):
            if check.service_id == row.id and (
                check.service_name != row.service or check.service_tags != row.tags
            ):
                self.checks[key][check.check_id] = evolve(
                    check, service_name=row.service, service_tags=row.tags, modify_index=index
                )
                self._touch(index, "checks")

    def _unlink_name(self, service: Service, node_key: str, index: int) -> None:
        name = service.service.lower()
        members = self.service_names.get(name)
        if members is not None:
            members.pop((node_key, service.id), None)
            if not members:
                del self.service_names[name]
        self._touch(index, "service." + name)

    def ensure_check(self, index: int, node_name: str, check: Check) -> None:
        key = node_name.lower()
        if key not in self.nodes:
            raise InvalidRequest(f"Missing node registration for {node_name!r}")
        if check.status not in HEALTH_STATES:
            raise InvalidRequest(f"Invalid check status: {check.status!r}")
        service_keys: list[str]
        if check.service_id:
            service = self.services.get(key, {}).get(check.service_id)
            if service is None:
                raise InvalidRequest(
                    f"Missing service registration for check {check.check_id!r}: "
                    f"service {check.service_id!r} is not on node {node_name!r}"
                )
            check = evolve(check, service_name=service.service, service_tags=service.tags,
                           node=self.nodes[key].node)
            service_keys = self._service_keys(service)
        else:
            check = evolve(check, service_name="", service_tags=(), node=self.nodes[key].node)
            service_keys = self._services_on_node_keys(key)
        per_node = self.checks.setdefault(key, {})
        existing = per_node.get(check.check_id)
        if existing is not None:
            if same_content(check, existing):
                return
            row = with_index(check, existing.create_index, index)
        else:
            row = with_index(check, index, index)
        per_node[check.check_id] = row
        self._touch(index, "checks", "node." + key, *service_keys)

    def delete_check(self, index: int, node_name: str, check_id: str) -> None:
        key = node_name.lower()
        check = self.checks.get(key, {}).pop(check_id, None)
        if check is None:
            return
        if check.service_id:
            service = self.services.get(key, {}).get(check.service_id)
            # when the service itself is being deleted, delete_service touches its keys
            keys = self._service_keys(service) if service else ["service." + check.service_name.lower()]
        else:
            keys = self._services_on_node_keys(key)
        self._touch(index, "checks", "node." + key, *keys)

    def delete_service(self, index: int, node_name: str, service_id: str) -> None:
        key = node_name.lower()
        service = self.services.get(key, {}).pop(service_id, None)
        if service is None:
            return
        for check in [c for c in self.checks.get(key, {}).values() if c.service_id == service_id]:
            self.delete_check(index, node_name, check.check_id)
        self._unlink_name(service, key, index)
        self._touch(index, "services", "node." + key, *self._unindex_connect(key, service))

    def delete_node(self, index: int, node_name: str) -> None:
        key = node_name.lower()
        if key not in self.nodes:
            return
        for service_id in list(self.services.get(key, {})):
            self.delete_service(index, node_name, service_id)
        for check_id in list(self.checks.get(key, {})):
            self.delete_check(index, node_name, check_id)
        self.services.pop(key, None)
        self.checks.pop(key, None)
        del self.nodes[key]
        self._touch(index, "nodes", "node." + key)

    def upsert_server(self, index: int, info: ServerInfo) -> None:
        existing = self.servers.get(info.raft_address)
        if existing is not None and same_content(info, existing):
            return
        create = existing.create_index if existing else index
        self.servers[info.raft_address] = with_index(info, create, index)
        self._touch(index, "servers")

    def remove_server(self, index: int, raft_address: str) -> None:
        if self.servers.pop(raft_address, None) is not None:
            self._touch(index, "servers")

    def upsert_intention(self, index: int, intention: Any, mode: str) -> Any:
        """mode: `create` (the pair must be new), `update` (by ID), `upsert` (by pair).
        Returns the stored row; raises InvalidRequest for conflicts."""
        pair = (intention.source_name.lower(), intention.destination_name.lower())
        by_pair = self.intentions.get(self._intention_pairs().get(pair, ""))
        existing = self.intentions.get(intention.id) if intention.id else None
        if mode == "create":
            if by_pair is not None:
                raise InvalidRequest(f"duplicate intention found: {by_pair.label()}")
            if existing is not None:
                raise InvalidRequest(f"intention with ID {intention.id!r} already exists")
        elif mode == "update":
            if existing is None:
                raise InvalidRequest(f"Cannot modify non-existent intention: {intention.id!r}")
            if by_pair is not None and by_pair.id != intention.id:
                raise InvalidRequest(f"duplicate intention found: {by_pair.label()}")
        else:  # upsert by pair
            existing = by_pair
            if existing is not None:
                intention = evolve(intention, id=existing.id)
        if existing is not None:
            intention = evolve(intention, created_at=existing.created_at)
            row = with_index(intention, existing.create_index, index)
        else:
            row = with_index(intention, index, index)
        if existing is not None:
            self._pairs.pop((existing.source_name.lower(), existing.destination_name.lower()), None)
        self.intentions[row.id] = row
        self._pairs[pair] = row.id
        self._touch(index, "intentions")
        self._intention_set_changed(index, row.destination_name)
        if existing is not None and existing.destination_name.lower() != row.destination_name.lower():
            self._intention_set_changed(index, existing.destination_name)
        return row

    def intention_by_pair(self, source: str, destination: str) -> Any:
        return self.intentions.get(self._intention_pairs().get((source.lower(), destination.lower()), ""))

    def _intention_pairs(self) -> dict[tuple[str, str], str]:
        """(source, destination) -> ID, rebuilt lazily after a restore or copy."""
        if len(self._pairs) != len(self.intentions):
            self._pairs = {(i.source_name.lower(), i.destination_name.lower()): i.id for i in self.intentions.values()}
        return self._pairs

    def delete_intention(self, index: int, intention_id: str) -> bool:
        removed = self.intentions.pop(intention_id, None)
        if removed is None:
            return False
        self._pairs.pop((removed.source_name.lower(), removed.destination_name.lower()), None)
        self._touch(index, "intentions")
        self._intention_set_changed(index, removed.destination_name)
        return True

    def intentions_to(self, destination: str) -> list[Any]:
        """The intention rows whose destination is `destination` (a service-intentions entry)."""
        key = destination.lower()
        return [i for i in self.intentions.values() if i.destination_name.lower() == key]

    def _intention_set_changed(self, index: int, destination: str) -> None:
        """Keep the service-intentions record of `destination` in step with its rows:
        it exists while they do, and its ModifyIndex is their last change."""
        key = (SERVICE_INTENTIONS, destination.lower())
        record = self.config.get(key)
        if self.intentions_to(destination):
            if record is None:
                record = ConfigEntry(SERVICE_INTENTIONS, destination, {}, index, index)
            self.config[key] = with_index(record, record.create_index, index)
        else:
            self.config.pop(key, None)
        self._touch(index, watch_key(SERVICE_INTENTIONS), watch_key(SERVICE_INTENTIONS, destination))

    def replace_intentions(self, index: int, destination: str, rows: list[Any], meta: dict[str, str]) -> None:
        """A service-intentions write: `destination`'s rows become `rows` (validated by
        the caller, unique sources), keeping the ID and CreateIndex of a pair that
        already had a row; `meta` is the entry's. No rows: the entry is deleted."""
        wanted = {r.source_name.lower() for r in rows}
        for old in self.intentions_to(destination):
            if old.source_name.lower() not in wanted:
                self.intentions.pop(old.id, None)
                self._pairs.pop((old.source_name.lower(), old.destination_name.lower()), None)
        for row in rows:
            existing = self.intention_by_pair(row.source_name, row.destination_name)
            if existing is not None:
                if existing.id != row.id:
                    row = evolve(row, id=existing.id)
                row = with_index(row, existing.create_index, index)
            else:
                row = with_index(row, index, index)
            self.intentions[row.id] = row
            self._pairs[(row.source_name.lower(), row.destination_name.lower())] = row.id
        self._touch(index, "intentions")
        self._intention_set_changed(index, destination)
        record = self.config.get((SERVICE_INTENTIONS, destination.lower()))
        if record is not None:
            body = {"Meta": dict(meta)} if meta else {}
            self.config[(SERVICE_INTENTIONS, destination.lower())] = ConfigEntry(
                SERVICE_INTENTIONS, destination, body, record.create_index, index)

    # ---- config entries -------------------------------------------------------
    def config_entry(self, kind: str, name: str) -> ConfigEntry | None:
        return self.config.get((kind, name.lower()))

    def config_entries_of(self, kind: str) -> list[ConfigEntry]:
        """One kind's rows, by name."""
        return [row for (k, _), row in sorted(self.config.items()) if k == kind]

    def set_config_entry(self, index: int, entry: ConfigEntry) -> ConfigEntry:
        """Create or replace an entry (its CreateIndex kept); the caller checked CAS and
        the rules between entries."""
        key = (entry.kind, entry.name.lower())
        existing = self.config.get(key)
        row = with_index(entry, existing.create_index if existing else index, index)
        self.config[key] = row
        self._touch(index, watch_key(entry.kind), watch_key(entry.kind, entry.name))
        return row

    def delete_config_entry(self, index: int, kind: str, name: str) -> bool:
        if self.config.pop((kind, name.lower()), None) is None:
            return False
        self._touch(index, watch_key(kind), watch_key(kind, name))
        return True

    # ---- whole-state ---------------------------------------------------------
    def copy(self) -> Store:
        """A consistent copy sharing the (immutable) rows: cheap enough for the Raft thread."""
        other = Store()
        other.nodes = dict(self.nodes)
        other.services = {k: dict(v) for k, v in self.services.items()}
        other.checks = {k: dict(v) for k, v in self.checks.items()}
        other.service_names = {k: dict(v) for k, v in self.service_names.items()}
        other.connect_names = {k: dict(v) for k, v in self.connect_names.items()}
        other.servers = dict(self.servers)
        other.intentions = dict(self.intentions)
        other.ca = self.ca
        other.config = dict(self.config)
        other.kv = self.kv.copy()
        other.acl = self.acl.copy()
        other.sessions = dict(self.sessions)
        other.indexes = dict(self.indexes)
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Store):
            return NotImplemented
        return (
            self.nodes == other.nodes
            and {k: v for k, v in self.services.items() if v} == {k: v for k, v in other.services.items() if v}
            and {k: v for k, v in self.checks.items() if v} == {k: v for k, v in other.checks.items() if v}
            and self.servers == other.servers
            and self.intentions == other.intentions
            and self.ca == other.ca
            and self.config == other.config
            and self.kv == other.kv
            and self.sessions == other.sessions
            and self.indexes == other.indexes
        )

    __hash__ = None  # type: ignore[assignment]
