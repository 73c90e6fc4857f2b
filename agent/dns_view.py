"""The agent's local view of the catalog for DNS, kept current by blocking queries.

The first query for a service starts a watcher: one blocking `health.service` read
after another (stale, so any server answers), each returning when that service
changes. Later queries are answered from memory and never wait on a server. Node and
PTR lookups read a watched node list the same way. When servers are unreachable the
view keeps answering from what it has for up to `max_stale`, then says it cannot
(SERVFAIL). Watchers of names nobody asked for in 10 minutes are stopped.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.errors import MeshError
from mesh.dns.parse import Lookup

from .backend import Backend
from .logging import get_logger
from .reads import ReadOptions

__all__ = ["CatalogDNSView"]

log = get_logger("dns")

IDLE_AFTER = 600.0


@dataclass
class _Slot:
    query: str
    params: dict[str, Any]
    value: Any = None
    index: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    last_ok: float = 0.0
    last_used: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    version: int = 0


class CatalogDNSView:
    def __init__(self, backend: Backend, max_stale: float, first_load_timeout: float = 2.0,
                 token: str | None = None) -> None:
        """`token`: what DNS answers may show (Consul: acl.tokens.dns, else the default
        token; None is the agent's own)."""
        self._backend = backend
        self._token = token
        self._max_stale = max_stale
        self._first_load_timeout = first_load_timeout
        self._slots: dict[tuple[str, str], _Slot] = {}
        self.generation = 0  # bumped on every change: the DNS server's wire cache keys on it

    # ---- what the DNS server calls -----------------------------------------------------
    def _keys(self, lookup: Lookup) -> list[tuple[str, str]]:
        if lookup.kind == "service":
            return [("health.service", lookup.name.lower())]
        if lookup.kind == "connect":
            return [("health.connect", lookup.name.lower())]
        if lookup.kind in ("node", "ptr"):
            return [("catalog.nodes", "")] + ([("health.service", "consul")] if lookup.kind == "ptr" else [])
        if lookup.kind == "apex":
            return [("health.service", "consul")]
        return []

    def token(self, lookup: Lookup) -> Any:
        """What a cached answer for `lookup` depends on: the versions of the names it read
        (PTR answers may read any name, so they depend on everything)."""
        if lookup.kind == "ptr":
            return ("generation", self.generation)
        slots = tuple(self._slots.get(k) for k in self._keys(lookup))
        if any(s is None for s in slots):
            return None
        return tuple((s, s.version) for s in slots)  # type: ignore[union-attr]

    def token_valid(self, token: Any) -> bool:
        if token is None:
            return False
        if token[0] == "generation":
            return bool(token[1] == self.generation)
        return all(slot.version == version and self._slots.get((slot.query, slot.params.get("name", ""))) is slot
                   for slot, version in token)

    def ready(self, lookup: Lookup) -> bool:
        return all((k in self._slots and self._slots[k].loaded.is_set()) for k in self._keys(lookup))

    async def prepare(self, lookup: Lookup) -> None:
        for key in self._keys(lookup):
            slot = self._slot(key)
            if not slot.loaded.is_set():
                try:
                    await asyncio.wait_for(slot.loaded.wait(), self._first_load_timeout)
                except TimeoutError:
                    pass

    def _slot(self, key: tuple[str, str]) -> _Slot:
        slot = self._slots.get(key)
        if slot is None:
            query, name = key
            slot = _Slot(query, {"name": name} if name else {})
            slot.task = asyncio.get_running_loop().create_task(self._watch(key, slot), name=f"dns-view:{key}")
            self._slots[key] = slot
        slot.last_used = time.monotonic()
        return slot

    def _value(self, key: tuple[str, str]) -> Any:
        """Raises LookupError (SERVFAIL) when the name is not loaded or too stale; the
        wire cache is also bypassed then, since the generation moves when a slot loads."""
        slot = self._slots.get(key)
        if slot is None or not slot.loaded.is_set():
            raise LookupError("catalog view not loaded (servers unreachable?)")
        slot.last_used = time.monotonic()
        if time.monotonic() - slot.last_ok > self._max_stale:
            raise LookupError("catalog view older than max_stale")
        return slot.value

    def service_entries(self, name: str) -> list[dict[str, Any]] | None:
        return list(self._value(("health.service", name.lower())) or []) or None

    def connect_entries(self, name: str) -> list[dict[str, Any]] | None:
        return list(self._value(("health.connect", name.lower())) or []) or None

    def node(self, name: str) -> dict[str, Any] | None:
        for node in self._value(("catalog.nodes", "")) or []:
            if node["Node"].lower() == name.lower():
                return node  # type: ignore[no-any-return]
        return None

    def ptr(self, address: str) -> tuple[str, str] | None:
        for node in self._value(("catalog.nodes", "")) or []:
            if node["Address"] == address:
                return "node", node["Node"]
        for (query, _name), slot in self._slots.items():
            if query == "health.service" and slot.loaded.is_set():
                for entry in slot.value or []:
                    if entry["Service"].get("Address") == address:
                        return "service", entry["Service"]["Service"]
        return None

    def server_nodes(self) -> list[dict[str, Any]]:
        return [e["Node"] for e in self._value(("health.service", "consul")) or []]

    def age(self) -> float:
        """Seconds since the oldest watched name was last confirmed by a server."""
        oks = [s.last_ok for s in self._slots.values() if s.loaded.is_set()]
        return time.monotonic() - min(oks) if oks else 0.0

    # ---- watchers ------------------------------------------------------------------------
    async def _watch(self, key: tuple[str, str], slot: _Slot) -> None:
        backoff = 0.1
        while True:
            if time.monotonic() - slot.last_used > IDLE_AFTER:
                del self._slots[key]
                return
            try:
                result = await self._backend.read(
                    slot.query, slot.params, ReadOptions(min_index=slot.index, wait=60.0, stale=True), self._token)
            except MeshError as exc:
                log.debug("dns_view_refresh_failed", query=slot.query, error=str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            if result.index < slot.index:
                slot.index = 0  # the index went backwards (restore): start over
            else:
                # never 0 (Consul's rule): a read at index 0 returns at once, and an
                # in-process backend would spin here without ever yielding the loop
                slot.index = max(1, result.index)
            await asyncio.sleep(0)  # a blocking read answered at once must still yield
            if result.value != slot.value or not slot.loaded.is_set():
                self.generation += 1
                slot.version += 1
            slot.value = result.value
            slot.last_ok = time.monotonic()
            slot.loaded.set()

    async def stop(self) -> None:
        tasks = [s.task for s in self._slots.values() if s.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
