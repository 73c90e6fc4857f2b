"""A controllable in-process transport for the in-memory Raft (memory.py).

Messages between node addresses go through one queue. Each link (source, destination)
can be cut (partitions, one-way cuts), made lossy (a drop rate, decided by an injected
RNG) or slow (a delay on the injected clock). A message is handed to its destination
when it is due: at once when the link has no delay (`auto` delivery drains the queue
inside `send`), else on the first `deliver()` after the clock has passed its due time.
Delivery is FIFO per due time and never re-entrant: a handler that sends only queues.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable
from typing import Any

from ..clock import Clock

__all__ = ["MemoryNetwork"]

Handler = Callable[[str, dict[str, Any]], None]


class MemoryNetwork:
    def __init__(self, clock: Clock, rng: random.Random | None = None, auto: bool = True) -> None:
        self.clock = clock
        self.auto = auto
        self._rng = rng or random.Random(0)
        self._handlers: dict[str, Handler] = {}
        self._cut: set[tuple[str, str]] = set()
        self._drop: dict[tuple[str, str], float] = {}
        self._delay: dict[tuple[str, str], float] = {}
        self._queue: list[tuple[float, int, str, str, dict[str, Any]]] = []
        self._seq = 0
        self._draining = False
        self.sent = 0
        self.dropped = 0

    # ---- membership of the network
    def register(self, address: str, handler: Handler) -> None:
        self._handlers[address] = handler

    def unregister(self, address: str) -> None:
        self._handlers.pop(address, None)

    # ---- faults
    def cut(self, src: str, dst: str, both: bool = True) -> None:
        """Lose every message from `src` to `dst` (and back, unless `both` is False)."""
        self._cut.add((src, dst))
        if both:
            self._cut.add((dst, src))

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups; links inside a group stay."""
        sets = [set(g) for g in groups]
        for i, a in enumerate(sets):
            for b in sets[i + 1:]:
                for x in a:
                    for y in b:
                        self.cut(x, y)

    def drop(self, src: str, dst: str, rate: float = 1.0) -> None:
        """Lose each message from `src` to `dst` with probability `rate`."""
        self._drop[(src, dst)] = rate

    def delay(self, src: str, dst: str, seconds: float) -> None:
        """Hold messages from `src` to `dst` for `seconds` of the injected clock."""
        self._delay[(src, dst)] = seconds

    def heal(self) -> None:
        """Remove every cut, drop rate and delay (queued messages stay queued)."""
        self._cut.clear()
        self._drop.clear()
        self._delay.clear()

    def reachable(self, src: str, dst: str) -> bool:
        return (src, dst) not in self._cut and dst in self._handlers

    # ---- traffic
    def send(self, src: str, dst: str, message: dict[str, Any]) -> None:
        self.sent += 1
        link = (src, dst)
        if link in self._cut or self._rng.random() < self._drop.get(link, 0.0):
            self.dropped += 1
            return
        self._seq += 1
        heapq.heappush(self._queue, (self.clock.monotonic() + self._delay.get(link, 0.0), self._seq, src, dst, message))
        if self.auto:
            self.deliver()

    def deliver(self) -> int:
        """Hand every due message to its destination; returns how many were delivered."""
        if self._draining:
            return 0
        self._draining = True
        delivered = 0
        try:
            while self._queue and self._queue[0][0] <= self.clock.monotonic():
                _, _, src, dst, message = heapq.heappop(self._queue)
                handler = self._handlers.get(dst)
                if handler is None or (src, dst) in self._cut:  # cut while in flight
                    self.dropped += 1
                    continue
                delivered += 1
                handler(src, message)
        finally:
            self._draining = False
        return delivered

    @property
    def in_flight(self) -> int:
        return len(self._queue)
