"""Wakes blocking queries when the watch keys they read change.

The FSM reports touched keys (`services`, `service.web`, ...) per applied entry; the
Raft adapter hands them to `notify` on the event loop. A waiter registers under every
key its query read, so a watch on one service sleeps through changes to others. The
key "*" (snapshot install or restore) wakes everyone.

In a space of PREFIX_SPACES, a key of the form `<space>*:<prefix>` waits for a whole
prefix: it wakes for every touched key `<space>:<k>` with `k` starting with `<prefix>`
(a KV `?recurse` read registers `kv*:web/`, and a write to `web/a` touches `kv:web/a`).
Spaces are named here, not guessed from the key's shape, so a service or node name
that happens to hold `*:` is an exact key like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["WatchHub", "PREFIX_SPACES"]

PREFIX_SPACES = frozenset({"kv"})  # mesh.catalog.kv's watch keys


class WatchHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # space -> prefix -> waiters
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
            by_prefix = self._prefixed.get(space) if sep else None  # only PREFIX_SPACES are ever here
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
        places = [_place(key) for key in keys]
        for space, name in places:
            table = self._waiters if space is None else self._prefixed.setdefault(space, {})
            table.setdefault(name, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for space, name in places:
                table = self._waiters if space is None else self._prefixed.get(space, {})
                waiters = table.get(name)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del table[name]
                if space is not None and not table:
                    self._prefixed.pop(space, None)

    def waiting(self) -> int:
        tables = [self._waiters, *self._prefixed.values()]
        return len({id(f) for t in tables for ws in t.values() for f in ws})


def _place(key: str) -> tuple[str | None, str]:
    """(prefix space, prefix) for a prefix watch key, (None, key) for an exact one."""
    space, sep, prefix = key.partition("*:")
    if sep and space in PREFIX_SPACES:
        return space, prefix
    return None, key
