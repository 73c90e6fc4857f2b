"""Service and check definitions from config files, validated as one set.

A bad definition is a ConfigError naming the file and field: at start the agent exits 1
with it; on reload the agent keeps its previous definitions and reports the error.
Sidecars are drafted here (agent.local.sidecar), so a bad sidecar_service is such an
error too; their ports are assigned by the agent, which knows its other services.
"""

from __future__ import annotations

from typing import Any

from mesh.catalog.errors import InvalidRequest

from ..config import ConfigError
from .definitions import (
    CheckDefinition,
    ServiceDefinition,
    checks_from_config,
    services_from_config,
)
from .sidecar import SidecarDraft, draft

__all__ = ["parse_config_definitions"]


def parse_config_definitions(
    definitions: tuple[tuple[str, dict[str, Any]], ...],
) -> tuple[list[tuple[ServiceDefinition, SidecarDraft | None]], list[CheckDefinition]]:
    """(each service with its sidecar's draft, the node-level checks)."""
    services: list[tuple[ServiceDefinition, SidecarDraft | None]] = []
    checks: list[CheckDefinition] = []
    seen: set[str] = set()
    for path, block in definitions:
        try:
            for defn in services_from_config(block, path):
                sidecar = draft(defn, f"service {defn.service.id!r}")
                for sid in (defn.service.id, sidecar.definition.service.id if sidecar else None):
                    if sid is None:
                        continue
                    if sid in seen:
                        raise ConfigError(f"{path}: service ID {sid!r} is defined twice")
                    seen.add(sid)
                services.append((defn, sidecar))
            checks.extend(checks_from_config(block, path))
        except InvalidRequest as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return services, checks
