"""The agent's copy of the intentions, for authorizing connections without a server.

A blocking query on the intentions table keeps it current (a change reaches every
agent in well under a second); decisions come from an IntentionIndex grouped by
destination, so `authorize` is a dictionary lookup and a short walk, whatever the
number of intentions. While servers are unreachable the agent keeps deciding from
what it has, and says how old that is in a metric.
"""

from __future__ import annotations

import asyncio
import time

from mesh.catalog.errors import MeshError
from mesh.catalog.intentions import Decision, Intention, IntentionIndex
from mesh.catalog.structs import row_from_wire

from .backend import Backend
from .logging import get_logger
from .metrics import INTENTIONS
from .reads import ReadOptions

__all__ = ["IntentionCache"]

log = get_logger("intentions")


class IntentionCache:
    def __init__(self, backend: Backend, default_allow: bool) -> None:
        self._backend = backend
        self.default_allow = default_allow
        self._index = IntentionIndex(())
        self._raft_index = 0
        self.loaded = asyncio.Event()
        self.last_ok = 0.0
        self.count = 0

    def decide(self, source: str, destination: str) -> Decision:
        decision = self._index.decide(source, destination, self.default_allow)
        INTENTIONS.decisions.labels("allow" if decision.allowed else "deny").inc()
        return decision

    def age(self) -> float:
        return time.monotonic() - self.last_ok if self.last_ok else 0.0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                result = await self._backend.read(
                    "intentions.rows", {}, ReadOptions(min_index=self._raft_index, wait=60.0, stale=True))
            except MeshError as exc:
                log.debug("intentions_refresh_failed", error=str(exc))
                INTENTIONS.cache_age.set(self.age())
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            await asyncio.sleep(0)  # an in-process backend answers without suspending
            self._raft_index = max(1, result.index) if result.index >= self._raft_index else 0
            rows = [row_from_wire(Intention, r) for r in result.value or []]
            self._index = IntentionIndex(rows)
            self.count = len(rows)
            self.last_ok = time.monotonic()
            INTENTIONS.cache_age.set(0)
            INTENTIONS.cached.set(len(rows))
            self.loaded.set()
