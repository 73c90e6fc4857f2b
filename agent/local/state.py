"""What this agent owns: its node, the services and checks defined on it, their status.

Sources: `config` (service/check blocks in config files, replaced on reload),
`api` (registered through /v1/agent/*, persisted in the data-dir so a restart keeps
them), `internal` (what the agent defines itself: the `consul` service on servers,
maintenance checks). Every change bumps a version and calls `on_change`, which wakes
anti-entropy and hash-blocking watchers. Pure apart from the persistence files.

Sidecars the agent expanded from a service's `sidecar_service` are services like the
others, marked with the parent's ID (`LocalService.sidecar_for`, `sidecars()`): they
come and go with their parent, as in Consul. The ports the agent assigned them are
remembered (`sidecar_ports`, `local/sidecar-ports.json`) so that a sidecar keeps its
port across re-registration, reload and restart.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.catalog.structs import CRITICAL, Check, Node, Service, evolve, row_to_wire

from ..data_dir import make_private_dir, write_private
from .central import CentralConfig, merge_central

__all__ = ["LocalService", "LocalCheck", "LocalState", "Registration", "NODE_MAINT_ID", "service_maint_id"]

NODE_MAINT_ID = "_node_maintenance"
_NODE_MAINT_DEFAULT = ("Maintenance mode is enabled for this node, but no reason was provided. "
                       "This is a default message.")
_SERVICE_MAINT_DEFAULT = ("Maintenance mode is enabled for this service, but no reason was provided. "
                          "This is a default message.")


def service_maint_id(service_id: str) -> str:
    return "_service_maintenance:" + service_id


@dataclass
class LocalService:
    service: Service
    source: str
    raw: Any = None  # the registration body, for persistence of api-registered services
    # the parent's service ID when the agent made this service from the parent's
    # sidecar_service (Consul's LocallyRegisteredAsSidecar); "" for any other service
    sidecar_for: str = ""
    token: str = ""  # the registration's token (a sidecar's: sidecar_service.token or its parent's)
    port_assigned: bool = False  # a sidecar's port came from the sidecar port range


@dataclass(frozen=True)
class Registration:
    """One service to add with its checks: a definition, or a sidecar expanded from one
    (agent.local.sidecar.expand)."""

    service: Service
    checks: tuple[Any, ...] = ()
    sidecar_for: str = ""
    token: str = ""
    port_assigned: bool = False


@dataclass
class LocalCheck:
    defn: Any  # agent.local.definitions.CheckDefinition
    status: str
    output: str
    source: str
    raw: Any = None

    def row(self, node: str, service: Service | None) -> Check:
        d = self.defn
        return Check(
            check_id=d.check_id, name=d.name, node=node, status=self.status, notes=d.notes, output=self.output,
            service_id=d.service_id, service_name=service.service if service else "",
            service_tags=service.tags if service else (), type=d.type_name(), definition=d.definition_api(),
        )


class LocalState:
    def __init__(self, node: Node, data_dir: str | None, on_change: Callable[[], None] | None = None) -> None:
        self.node = node
        self.services: dict[str, LocalService] = {}
        self.checks: dict[str, LocalCheck] = {}
        self.version = 0
        self._on_change = on_change
        self._path = os.path.join(data_dir, "local", "state.json") if data_dir else None
        self._ports_path = os.path.join(data_dir, "local", "sidecar-ports.json") if data_dir else None
        # sidecar ID -> the port the agent assigned it. Until prune_sidecar_ports (after
        # the restart's registrations are back) it also holds the ports of sidecars not
        # registered yet, so that no other sidecar takes them meanwhile.
        self.sidecar_ports: dict[str, int] = self._load_ports()
        self._ports_pruned = False
        self.central = CentralConfig()  # config entries merged into proxy rows as they are read

    def set_central(self, central: CentralConfig) -> None:
        """New central config: proxy rows (their content hashes too) change, so blocked
        readers of them wake and anti-entropy syncs them."""
        if central != self.central:
            self.central = central
            self._changed()

    # ---- changes -------------------------------------------------------------------
    def _changed(self, persist: bool = False) -> None:
        self.version += 1
        if persist:
            self.persist()
        if self._on_change is not None:
            self._on_change()

    def add_service(self, service: Service, checks: list[Any], source: str, raw: Any = None,
                    replace_checks: bool = False) -> list[str]:
        """Register or replace a service and its checks. Returns check IDs it removed
        (with `replace_checks`, the service's checks that the new definition lacks)."""
        return self.register([Registration(service, tuple(checks))], source, raw, replace_checks)

    def register(self, registrations: Sequence[Registration], source: str, raw: Any = None,
                 replace_checks: bool = False) -> list[str]:
        """A service (first) and the sidecar expanded from its definition, as one change.
        A sidecar the agent made for an earlier definition of the service, and that the
        new one no longer has, goes: the parent's definition is what is persisted and
        restored, so keeping it would only last until the next restart. Returns the
        check IDs removed."""
        parent, *sidecars = registrations
        removed = self._put_service(parent, source, raw, replace_checks)
        keep = {r.service.id for r in sidecars}
        for sid in [sid for sid, s in self.services.items() if s.sidecar_for == parent.service.id]:
            if sid not in keep:
                removed += self._drop_service(sid)
        for sidecar in sidecars:  # its checks are the agent's to decide: always replaced
            removed += self._put_service(sidecar, source, None, replace_checks=True)
        self._sync_ports()
        self._changed(persist=source == "api")
        return removed

    def _put_service(self, reg: Registration, source: str, raw: Any, replace_checks: bool) -> list[str]:
        service = reg.service
        self.services[service.id] = LocalService(service, source, raw, reg.sidecar_for, reg.token, reg.port_assigned)
        removed: list[str] = []
        wanted = {c.check_id for c in reg.checks}
        if replace_checks:
            for cid, existing in list(self.checks.items()):
                if existing.defn.service_id == service.id and cid not in wanted and not cid.startswith("_"):
                    del self.checks[cid]
                    removed.append(cid)
        for defn in reg.checks:
            self._put_check(defn, source, None)
        return removed

    def _drop_service(self, service_id: str) -> list[str]:
        """Remove a service, its checks and the sidecar the agent made for it."""
        self.services.pop(service_id, None)
        removed = [cid for cid, c in self.checks.items() if c.defn.service_id == service_id]
        for cid in removed:
            del self.checks[cid]
        for sid in [sid for sid, s in self.services.items() if s.sidecar_for == service_id]:
            removed += self._drop_service(sid)
        return removed

    def remove_service(self, service_id: str) -> list[str] | None:
        """Remove a service, its checks, and its sidecar (Consul's removeServiceSidecars);
        None when unknown. Returns the check IDs removed."""
        if service_id not in self.services:
            return None
        removed = self._drop_service(service_id)
        self._sync_ports()
        self._changed(persist=True)
        return removed

    def sidecars(self) -> dict[str, str]:
        """Sidecar service ID -> parent service ID, for the sidecars this agent made from
        a sidecar_service (not connect-proxies registered on their own)."""
        return {sid: s.sidecar_for for sid, s in self.services.items() if s.sidecar_for}

    def _put_check(self, defn: Any, source: str, raw: Any) -> None:
        existing = self.checks.get(defn.check_id)
        if existing is not None and existing.defn == defn:
            existing.source, existing.raw = source, raw
            return
        # a re-registered check keeps its current status unless the definition sets one
        status = defn.status
        output = ""
        self.checks[defn.check_id] = LocalCheck(defn, status, output, source, raw)

    def add_check(self, defn: Any, source: str, raw: Any = None) -> None:
        self._put_check(defn, source, raw)
        self._changed(persist=source == "api")

    def remove_check(self, check_id: str) -> bool:
        if self.checks.pop(check_id, None) is None:
            return False
        self._changed(persist=True)
        return True

    def update_check(self, check_id: str, status: str, output: str) -> bool:
        check = self.checks.get(check_id)
        if check is None:
            return False
        if (check.status, check.output) == (status, output):
            return True
        check.status, check.output = status, output
        self._changed()
        return True

    def replace_config(self, services: Sequence[Registration], checks: list[Any]) -> None:
        """Reload: config-defined services (with their sidecars) and checks become
        exactly these."""
        for sid in [sid for sid, s in self.services.items() if s.source == "config"]:
            del self.services[sid]
        for cid in [cid for cid, c in self.checks.items() if c.source == "config"]:
            del self.checks[cid]
        for reg in services:
            self._put_service(reg, "config", None, replace_checks=False)
        for defn in checks:
            self._put_check(defn, "config", None)
        self._sync_ports()
        self._changed()

    # ---- maintenance ----------------------------------------------------------------
    def node_maintenance(self, enable: bool, reason: str, maint_defn: Callable[..., Any]) -> None:
        if enable:
            self._put_check(maint_defn(NODE_MAINT_ID, "Node Maintenance Mode", reason or _NODE_MAINT_DEFAULT, ""),
                            "internal", None)
            self.checks[NODE_MAINT_ID].status = CRITICAL
        else:
            self.checks.pop(NODE_MAINT_ID, None)
        self._changed()

    def service_maintenance(self, service_id: str, enable: bool, reason: str, maint_defn: Callable[..., Any]) -> bool:
        if service_id not in self.services:
            return False
        cid = service_maint_id(service_id)
        if enable:
            self._put_check(maint_defn(cid, "Service Maintenance Mode", reason or _SERVICE_MAINT_DEFAULT, service_id),
                            "internal", None)
            self.checks[cid].status = CRITICAL
        else:
            self.checks.pop(cid, None)
        self._changed()
        return True

    # ---- views ------------------------------------------------------------------------
    def service_rows(self) -> dict[str, Service]:
        central = self.central
        return {sid: merge_central(evolve(s.service, node=self.node.node), central) for sid, s in self.services.items()}

    def service_row(self, service_id: str) -> Service | None:
        svc = self.services.get(service_id)
        return merge_central(evolve(svc.service, node=self.node.node), self.central) if svc is not None else None

    def check_rows(self) -> dict[str, Check]:
        return {cid: c.row(self.node.node, self.services[c.defn.service_id].service
                           if c.defn.service_id in self.services else None)
                for cid, c in self.checks.items()}

    def service_checks(self, service_id: str) -> list[Check]:
        rows = self.check_rows()
        node_level = [c for c in rows.values() if not c.service_id]
        return node_level + [c for c in rows.values() if c.service_id == service_id]

    def content_hash(self, service_id: str) -> str:
        svc = self.services.get(service_id)
        if svc is None:
            return ""
        data = json.dumps(row_to_wire(merge_central(svc.service, self.central)), sort_keys=True, default=str).encode()
        return hashlib.sha256(data).hexdigest()[:16]

    # ---- sidecar ports -------------------------------------------------------------------
    def prune_sidecar_ports(self) -> None:
        """Forget the ports of sidecars that did not come back (call once the config
        files and the persisted registrations are loaded)."""
        self._ports_pruned = True
        self._sync_ports()

    def _sync_ports(self) -> None:
        live = {sid: s.service.port for sid, s in self.services.items() if s.sidecar_for and s.port_assigned}
        ports = live if self._ports_pruned else {**self.sidecar_ports, **live}
        if ports == self.sidecar_ports:
            return
        self.sidecar_ports = ports
        if self._ports_path is not None:
            make_private_dir(os.path.dirname(self._ports_path))
            write_private(self._ports_path, json.dumps(ports, sort_keys=True).encode())

    def _load_ports(self) -> dict[str, int]:
        if self._ports_path is None:
            return {}
        try:
            with open(self._ports_path) as f:
                body = json.load(f)
        except (OSError, ValueError):  # none yet, or unreadable: ports are assigned afresh
            return {}
        if not isinstance(body, dict):
            return {}
        return {k: v for k, v in body.items() if isinstance(k, str) and isinstance(v, int) and 0 < v <= 65535}

    # ---- persistence -------------------------------------------------------------------
    def persist(self) -> None:
        if self._path is None:
            return
        body = {
            "services": [s.raw for s in self.services.values() if s.source == "api" and s.raw is not None],
            "checks": [c.raw for c in self.checks.values() if c.source == "api" and c.raw is not None],
        }
        # tokens and check headers (Authorization) live here: owner-only (agent/data_dir.py)
        make_private_dir(os.path.dirname(self._path))
        write_private(self._path, json.dumps(body).encode())

    def load_persisted(self) -> dict[str, list[Any]]:
        """The persisted registration bodies; the agent parses and re-adds them."""
        if self._path is None:
            return {"services": [], "checks": []}
        try:
            with open(self._path) as f:
                body = json.load(f)
        except FileNotFoundError:
            return {"services": [], "checks": []}
        except (OSError, ValueError):
            return {"services": [], "checks": []}
        return {"services": list(body.get("services", [])), "checks": list(body.get("checks", []))}
