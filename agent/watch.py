"""Wakes blocking queries when the watch keys they read change.

The FSM reports touched keys (`services`, `service.web`, ...) per applied entry; the
Raft adapter hands them to `notify` on the event loop. A waiter registers under every
key its query read, so a watch on one service sleeps through changes to others. The
key "*" (snapshot install or restore) wakes everyone.

A key of the form `<space>*:<prefix>` waits for a whole prefix: it wakes for every
touched key `<space>:<k>` with `k` starting with `<prefix>` (a KV `?recurse` read
registers `kv*:web/`, and a write to `web/a` touches `kv:web/a`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["WatchHub"]


class WatchHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # space -> prefix -> waiters, and the prefix lengths in use per space
        self._prefixed: dict[str, dict[str, set[asyncio.Future[None]]]] = {}

    def notify(self, keys: Iterable[str], index: int = 0) -> None:
        keys = set(keys)
        if "*" in keys:
            targets = [w for ws in self._waiters.values() for w in ws]
            targets.extend(w for t in self._prefixed.values() for ws in t.values() for w in ws)
        else:
            targets = [w for k in keys for w in self._waiters.get(k, ())]
            if self._prefixed:
                targets.extend(self._prefix_targets(keys))
        for fut in targets:
            if not fut.done():
                fut.set_result(None)

    def _prefix_targets(self, keys: set[str]) -> list[asyncio.Future[None]]:
        out: list[asyncio.Future[None]] = []
        for key in keys:
            space, sep, rest = key.partition(":")
            by_prefix = self._prefixed.get(space) if sep else None
            if not by_prefix:
                continue
            if len(by_prefix) <= 64:
                for prefix, waiters in by_prefix.items():
                    if rest.startswith(prefix):
                        out.extend(waiters)
            else:  # many prefixes: look up each of the key's own prefixes instead
                for end in range(len(rest) + 1):
                    out.extend(by_prefix.get(rest[:end], ()))
        return out

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """True when one of `keys` changed before `timeout` seconds passed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = list(keys)
        for key in keys:
            self._table(key).setdefault(self._name(key), set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for key in keys:
                table, name = self._table(key), self._name(key)
                waiters = table.get(name)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del table[name]
                if table is not self._waiters and not table:
                    self._prefixed.pop(key.partition("*:")[0], None)

    def _table(self, key: str) -> dict[str, set[asyncio.Future[None]]]:
        space, sep, _ = key.partition("*:")
        if not sep or ":" in space:
            return self._waiters
        return self._prefixed.setdefault(space, {})

    @staticmethod
    def _name(key: str) -> str:
        space, sep, prefix = key.partition("*:")
        return prefix if sep and ":" not in space else key

    def waiting(self) -> int:
        tables = [self._waiters, *self._prefixed.values()]
        return len({id(f) for t in tables for ws in t.values() for f in ws})
