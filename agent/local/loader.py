"""Service and check definitions from config files, validated as one set.

A bad definition is a ConfigError naming the file and field: at start the agent exits 1
with it; on reload the agent keeps its previous definitions and reports the error.
"""

from __future__ import annotations

from typing import Any

from mesh.catalog.errors import InvalidRequest
from mesh.catalog.structs import Service

from ..config import ConfigError
from .definitions import CheckDefinition, checks_from_config, services_from_config

__all__ = ["parse_config_definitions"]


def parse_config_definitions(
    definitions: tuple[tuple[str, dict[str, Any]], ...],
) -> tuple[list[tuple[Service, list[CheckDefinition]]], list[CheckDefinition]]:
    services: list[tuple[Service, list[CheckDefinition]]] = []
    checks: list[CheckDefinition] = []
    seen: set[str] = set()
    for path, block in definitions:
        try:
            for defn in services_from_config(block, path):
                if defn.service.id in seen:
                    raise ConfigError(f"{path}: service ID {defn.service.id!r} is defined twice")
                seen.add(defn.service.id)
                services.append((defn.service, list(defn.checks)))
            checks.extend(checks_from_config(block, path))
        except InvalidRequest as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return services, checks
