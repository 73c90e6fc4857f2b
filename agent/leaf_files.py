"""Leaf certificates and roots kept in a client's data-dir, so an agent restarted
while no server answers still hands its proxies their certificates and trust bundle.

One JSON file per service under `<data-dir>/connect/`, written to a temporary file and
renamed (a crash leaves the old file or the new, never half of one), readable by the
agent's user only: it holds the private key. A file that cannot be read is skipped
and removed; the agent issues a new leaf instead.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .data_dir import make_private_dir, write_private
from .logging import get_logger

__all__ = ["LeafFiles"]

log = get_logger("ca")

_ROOTS = "roots.json"


class LeafFiles:
    def __init__(self, data_dir: str | None) -> None:
        self.directory = os.path.join(data_dir, "connect") if data_dir else None

    def _write(self, name: str, body: Any) -> None:
        if self.directory is None:
            return
        path = os.path.join(self.directory, name)
        try:
            make_private_dir(self.directory)
            write_private(path, json.dumps(body).encode())
        except OSError as exc:
            log.warning("leaf_file_write_failed", path=path, error=exc.strerror)

    def save_leaf(self, service: str, record: dict[str, Any]) -> None:
        self._write(f"leaf-{service}.json", record)

    def delete_leaf(self, service: str) -> None:
        if self.directory is None:
            return
        try:
            os.unlink(os.path.join(self.directory, f"leaf-{service}.json"))
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("leaf_file_delete_failed", service=service, error=exc.strerror)

    def save_roots(self, roots: dict[str, Any], index: int) -> None:
        self._write(_ROOTS, {"roots": roots, "index": index})

    def load(self) -> tuple[dict[str, Any], int, dict[str, dict[str, Any]]]:
        """(roots, roots index, {service: leaf record}) as saved; empty when none."""
        if self.directory is None or not os.path.isdir(self.directory):
            return {}, 0, {}
        roots: dict[str, Any] = {}
        index = 0
        leaves: dict[str, dict[str, Any]] = {}
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path) as f:
                    body = json.load(f)
                if name == _ROOTS:
                    roots, index = dict(body["roots"]), int(body["index"])
                elif name.startswith("leaf-"):
                    leaves[name[len("leaf-"):-len(".json")]] = dict(body)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("leaf_file_unreadable", path=path, error=str(exc))
                try:
                    os.unlink(path)
                except OSError:
                    pass
        return roots, index, leaves
