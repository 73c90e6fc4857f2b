"""The agent's copy of the config entries its proxy registrations are merged with.

Two blocking queries (every `proxy-defaults` entry, every `service-defaults` entry:
both kinds are small, one per service at most) keep a `CentralConfig` current; each new
answer goes to LocalState, which serves the proxies' rows merged with it (the rows'
content hashes change, so a proxy blocked on its registration wakes at once, and
anti-entropy syncs the merged rows). While servers are unreachable the last answer
stays in force, and its age is a metric.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from mesh.catalog.errors import MeshError

from .backend import Backend
from .local.central import CentralConfig
from .logging import get_logger
from .metrics import CENTRAL
from .reads import ReadOptions

__all__ = ["CentralConfigWatch"]

log = get_logger("central-config")

PROXY_DEFAULTS = "proxy-defaults"
SERVICE_DEFAULTS = "service-defaults"


class CentralConfigWatch:
    def __init__(self, backend: Backend, apply: Callable[[CentralConfig], None]) -> None:
        self._backend = backend
        self._apply = apply
        self._entries: dict[str, list[dict[str, Any]]] = {PROXY_DEFAULTS: [], SERVICE_DEFAULTS: []}
        self.last_ok: dict[str, float] = {}
        self.loaded = asyncio.Event()

    def current(self) -> CentralConfig:
        proxy_defaults = next((e for e in self._entries[PROXY_DEFAULTS] if e.get("Name") == "global"), None)
        service_defaults = {str(e.get("Name")).lower(): e for e in self._entries[SERVICE_DEFAULTS]}
        return CentralConfig(proxy_defaults=proxy_defaults, service_defaults=service_defaults)

    def age(self) -> float:
        now = time.monotonic()
        return max((now - t for t in self.last_ok.values()), default=0.0)

    async def run(self) -> None:
        await asyncio.gather(self._watch(PROXY_DEFAULTS), self._watch(SERVICE_DEFAULTS))

    async def _watch(self, kind: str) -> None:
        index = 0
        backoff = 0.1
        while True:
            try:
                result = await self._backend.read(
                    "config.list", {"kind": kind}, ReadOptions(min_index=index, wait=60.0, stale=True))
            except MeshError as exc:
                log.debug("central_config_refresh_failed", kind=kind, error=str(exc))
                CENTRAL.age.set(self.age())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            await asyncio.sleep(0)  # an in-process backend answers without suspending
            index = max(1, result.index) if result.index >= index else 0
            entries = [e for e in result.value or [] if isinstance(e, dict)]
            self.last_ok[kind] = time.monotonic()
            CENTRAL.age.set(self.age())
            CENTRAL.refreshes.labels(kind).inc()
            if entries != self._entries[kind]:
                self._entries[kind] = entries
                self._apply(self.current())
            if len(self.last_ok) == 2:
                self.loaded.set()
