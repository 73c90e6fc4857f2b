"""One blocking-query loop for everything long-running: `Watch`.

`async for value in Watch(fetch, ...)` yields the value of each answer whose index
(or content hash) differs from the last one's, following Consul's rules for blocking
clients (../shared/reference/consul.md §2, and the "Implementation details" of its
blocking-queries page):

- the first request carries index 0 (no hash), so it answers at once;
- an index below 1 from the server counts as 1 (0 never blocks, so it would spin);
- an index lower than the last one (agent restarted, snapshot restored) is new data:
  it is yielded and the next request starts over from index 0;
- a blocking request that returns quickly (under `min_block` seconds) with nothing
  new backs off, growing per repeat, instead of asking again at once; an answer after
  a real wait asks again at once;
- an APIError is kept in `last_error` and retried after a capped exponential backoff
  with jitter; `age()` says how long ago the last answer came, so a caller can report
  how stale its cached value is while the agent is away.

`fetch` is a typed call of api.agent (or any coroutine function) taking keyword
arguments `index=` (mode "index") or `hash=` (mode "hash"), and `wait=`, and returning
an api.client.Result. Time, sleeping and randomness are injected, so the rules are
unit-tested without real sleeps.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Literal, TypeVar

import structlog

from .client import Result
from .errors import APIError, DecodeError

__all__ = ["Watch"]

T = TypeVar("T")

log = structlog.get_logger(component="api")


class Watch(Generic[T]):
    """A blocking watch of one endpoint; an async iterator of its changed values.
    One iteration at a time: the watch is a cursor, not a broadcaster."""

    def __init__(self, fetch: Callable[..., Awaitable[Result[T]]], *, mode: Literal["index", "hash"] = "index",
                 wait: float = 300.0, name: str = "", clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, rng: random.Random | None = None,
                 min_backoff: float = 0.5, max_backoff: float = 30.0, min_block: float = 1.0) -> None:
        if mode not in ("index", "hash"):
            raise ValueError(f"mode must be 'index' or 'hash', got {mode!r}")
        self._fetch = fetch
        self.mode = mode
        self.wait = wait
        self.name = name or getattr(getattr(fetch, "func", fetch), "__name__", "watch")  # partials too
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.min_block = min(min_block, wait)
        self.index = 0  # what the next request sends (mode "index")
        self.hash = ""  # what the next request sends (mode "hash")
        self.last_result: Result[T] | None = None
        self.last_error: APIError | None = None
        self.last_success: float | None = None
        self.failures = 0  # consecutive errors
        self._quick = 0  # consecutive quick answers with nothing new
        self._seen: int | str | None = None  # index or hash of the last value yielded
        self._delay = 0.0

    def age(self) -> float:
        """Seconds since the last successful answer (inf before the first)."""
        return math.inf if self.last_success is None else self._clock() - self.last_success

    def backoff(self, attempt: int) -> float:
        """Capped exponential, with jitter in its upper half: retries of many proxies
        spread out, and none retries sooner than half the nominal delay."""
        nominal = min(self.max_backoff, self.min_backoff * 2 ** min(attempt - 1, 32))
        return nominal * (0.5 + self._rng.random() / 2)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return (await self.next_result()).value

    async def next_result(self) -> Result[T]:
        """The next answer with a new index or hash (the whole Result, headers too)."""
        while True:
            if self._delay > 0:
                await self._sleep(self._delay)
                self._delay = 0.0
            result = await self._attempt()
            if result is not None:
                return result

    async def _attempt(self) -> Result[T] | None:
        """One request: the Result when it is new, else None with the delay set."""
        blocking = bool(self.index) if self.mode == "index" else bool(self.hash)
        cursor: dict[str, Any] = {"index": self.index} if self.mode == "index" else {"hash": self.hash or None}
        started = self._clock()
        try:
            result = await self._fetch(**cursor, wait=self.wait)
            if self.mode == "hash" and not result.content_hash:
                raise DecodeError("the answer has no X-Consul-ContentHash to block on", result.status)
        except APIError as exc:
            self._failed(exc)
            return None
        quick = blocking and self._clock() - started < self.min_block
        if self.failures:
            log.info("watch_recovered", watch=self.name, after_failures=self.failures)
        self.failures, self.last_error, self.last_success = 0, None, self._clock()
        self.last_result = result
        change = self._advance(result)
        if change == "new":
            self._quick = 0
        elif change == "reset" or quick:
            # nothing new yet answered at once, or the index went back: either way the
            # next request waits, longer each time in a row (a server that keeps
            # doing it must not make us spin)
            self._quick += 1
            self._delay = self.backoff(self._quick)
        else:
            self._quick = 0  # a full wait with no change: ask again at once
        return None if change == "same" else result

    def _advance(self, result: Result[T]) -> Literal["new", "same", "reset"]:
        """Move the cursor past `result` and say what it carried."""
        if self.mode == "hash":
            new = result.content_hash != self._seen
            self.hash = self._seen = result.content_hash
            return "new" if new else "same"
        index = max(1, result.index)
        if isinstance(self._seen, int) and index < self._seen:
            # new data, but the next request must not block on an index the server
            # may take long to reach again: start over from 0
            log.info("watch_index_reset", watch=self.name, index=index, previous=self._seen)
            self._seen, self.index = index, 0
            return "reset"
        new = index != self._seen
        self._seen = self.index = index
        return "new" if new else "same"

    def _failed(self, exc: APIError) -> None:
        self.failures += 1
        self.last_error = exc
        self._delay = self.backoff(self.failures)
        if self.failures == 1:
            log.warning("watch_failed", watch=self.name, status=exc.status, error=exc.message)
        else:
            log.debug("watch_retry", watch=self.name, failures=self.failures, status=exc.status,
                      error=exc.message, retry_in=round(self._delay, 3))
