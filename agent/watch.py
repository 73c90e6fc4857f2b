"""Wakes blocking queries when the watch keys they read change.

The FSM reports touched keys (`services`, `service.web`, ...) per applied entry; the
Raft adapter hands them to `notify` on the event loop. A waiter registers under every
key its query read, so a watch on one service sleeps through changes to others. The
key "*" (snapshot install or restore) wakes everyone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["WatchHub"]


class WatchHub:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    def notify(self, keys: Iterable[str], index: int = 0) -> None:
        keys = set(keys)
        if "*" in keys:
            targets = [w for ws in self._waiters.values() for w in ws]
        else:
            targets = [w for k in keys for w in self._waiters.get(k, ())]
        for fut in targets:
            if not fut.done():
                fut.set_result(None)

    async def wait(self, keys: Iterable[str], timeout: float) -> bool:
        """True when one of `keys` changed before `timeout` seconds passed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        keys = list(keys)
        for key in keys:
            self._waiters.setdefault(key, set()).add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for key in keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(fut)
                    if not waiters:
                        del self._waiters[key]

    def waiting(self) -> int:
        return len({id(f) for ws in self._waiters.values() for f in ws})
