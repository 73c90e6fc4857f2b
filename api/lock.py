"""Distributed locks and semaphores on the agent's KV store and sessions.

The key layout, flags and algorithm are Consul's (its Go api's Lock and Semaphore), so
a `mesh lock`, a `consul lock` and any Consul client library on the same prefix
exclude each other:

- Lock: one key (`<prefix>/.lock` for `mesh lock`) acquired with a session
  (`PUT /v1/kv/<key>?acquire=<session>`), flags LOCK_FLAG. A key there with other
  flags is someone else's data: ErrLockConflict, never overwritten.
- Semaphore: every contender holds `<prefix>/<session>` (flags SEMAPHORE_FLAG, its
  session's Behavior "delete", so the key goes with the session), and the key
  `<prefix>/.lock` holds `{"Limit": N, "Holders": {"<session>": true}}`, changed only
  by check-and-set. A holder whose session holds no key under the prefix any more is
  dead and pruned by the next contender.

A lock creates its own session unless given one: TTL 15s (renewed every TTL/2 on a
task, following a larger TTL the server hands back), the server's default LockDelay
(15s) unless `lock_delay` is set, destroyed on release. Waiting is done by blocking
queries (index + wait), so a free lock is taken within one round trip of its release.
`lost` is an asyncio.Event set once the lock is no longer ours: a blocking watch of the
key (of the prefix, for a semaphore) sees another session or none, the session's renew
answers 404, or release() was called.

The decisions (is the lock ours, free or someone else's; can the semaphore take us;
which holders are dead) are the pure functions at the top, unit-tested without an
agent; the classes are the I/O around them. Time and sleeping are injected.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import posixpath
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Self

import structlog

from mesh.catalog.durations import format_duration, parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.kv import KVEntry

from .client import Client
from .errors import APIError, DecodeError

__all__ = [
    "LOCK_FLAG", "SEMAPHORE_FLAG", "LOCK_KEY", "Lock", "Semaphore", "LockError", "LockConflict",
    "LockInUse", "parse_pairs", "kv_path", "join_key", "lock_step", "SemaphoreStep", "semaphore_step",
    "decode_semaphore", "encode_semaphore", "prune_holders", "semaphore_holds", "find_pair",
]

log = structlog.get_logger(component="api")

LOCK_FLAG = 0x2DDCCBC058A50C18
SEMAPHORE_FLAG = 0xE0F69A2BAA414DE0
LOCK_KEY = ".lock"  # Consul's DefaultSemaphoreKey; `consul lock` puts its lock there too
LOCK_SESSION_NAME = "Consul API Lock"
SEMAPHORE_SESSION_NAME = "Consul API Semaphore"
SESSION_TTL = 15.0
WAIT = 15.0  # one blocking query while waiting for the lock: bounds how late a timeout is seen
RETRY = 5.0  # after an acquire refused with the key free: a lock-delay is running
MONITOR_WAIT = 300.0


class LockError(Exception):
    """The lock cannot be used as asked (conflicting key, limit disagreement, session
    gone, not held). Errors of the agent itself stay APIError."""


class LockConflict(LockError):
    """The key (or prefix) holds something that is not this kind of lock."""


class LockInUse(LockError):
    """destroy() of a lock or semaphore someone holds."""


# ---------------------------------------------------------------------------- pure


def _int(entry: dict[str, Any], name: str) -> int:
    value = entry.get(name, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecodeError(f"KV entry {name} must be a non-negative integer, got {value!r}")
    return value


def parse_pairs(body: Any) -> list[KVEntry]:
    """The JSON of GET /v1/kv/<key>[?recurse] as KVEntry rows (a 404 is no pairs: the caller's)."""
    if body is None:
        return []
    if not isinstance(body, list):
        raise DecodeError(f"KV answer must be a list, got {type(body).__name__}")
    out = []
    for entry in body:
        if not isinstance(entry, dict) or not isinstance(entry.get("Key"), str):
            raise DecodeError("KV entry must be an object with a string Key")
        raw = entry.get("Value")
        if raw is None:
            value = b""
        elif isinstance(raw, str):
            try:
                value = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError):
                raise DecodeError(f"KV entry {entry['Key']!r} has a Value that is not base64") from None
        else:
            raise DecodeError(f"KV entry {entry['Key']!r} has a Value that is not a string")
        session = entry.get("Session") or ""
        if not isinstance(session, str):
            raise DecodeError(f"KV entry {entry['Key']!r} has a Session that is not a string")
        out.append(KVEntry(entry["Key"], value, _int(entry, "Flags"), session, lock_index=_int(entry, "LockIndex"),
                           create_index=_int(entry, "CreateIndex"), modify_index=_int(entry, "ModifyIndex")))
    return out


def kv_path(key: str) -> str:
    """The URL path of a key: every byte but `/` percent-encoded, so `?`, `#`, `%` and
    spaces in a key reach the agent as part of the key."""
    return "/v1/kv/" + urllib.parse.quote(key, safe="/")


def join_key(prefix: str, name: str) -> str:
    """Go's path.Join for KV keys ("a/b/" + ".lock" = "a/b/.lock", "" + x = x), with
    no leading slash (the agent refuses keys that start with one)."""
    joined = posixpath.normpath(posixpath.join(prefix, name)) if prefix else posixpath.normpath(name)
    return joined.lstrip("/")


def find_pair(pairs: Iterable[KVEntry], key: str) -> KVEntry | None:
    return next((p for p in pairs if p.key == key), None)


def lock_step(pair: KVEntry | None, session: str) -> Literal["conflict", "held", "wait", "acquire"]:
    """What a contender does on reading the lock key: `conflict` (a key that is not a
    lock), `held` (ours already), `wait` (another session holds it: block on the key),
    `acquire` (free or absent: try to take it)."""
    if pair is None:
        return "acquire"
    if pair.flags != LOCK_FLAG:
        return "conflict"
    if pair.session == session:
        return "held"
    if pair.session:
        return "wait"
    return "acquire"


def decode_semaphore(pair: KVEntry | None, limit: int) -> tuple[int, frozenset[str]]:
    """(Limit, Holders) of the `.lock` key; an absent or empty key is a fresh
    semaphore with our limit and no holders."""
    if pair is None or not pair.value:
        return limit, frozenset()
    try:
        data = json.loads(pair.value)
    except (ValueError, RecursionError):
        raise LockError("lock decoding failed: the semaphore key is not JSON") from None
    if not isinstance(data, dict):
        raise LockError("lock decoding failed: the semaphore key is not a JSON object")
    got_limit = data.get("Limit", 0)
    holders = data.get("Holders")
    holders = {} if holders is None else holders
    if isinstance(got_limit, bool) or not isinstance(got_limit, int) or not isinstance(holders, dict):
        raise LockError("lock decoding failed: the semaphore key is not {Limit, Holders}")
    return got_limit, frozenset(h for h, on in holders.items() if on)


def encode_semaphore(limit: int, holders: Iterable[str]) -> bytes:
    """The `.lock` value as Go's json.Marshal writes it (compact, map keys sorted)."""
    return json.dumps({"Limit": limit, "Holders": {h: True for h in sorted(holders)}},
                      separators=(",", ":")).encode()


def prune_holders(holders: Iterable[str], pairs: Iterable[KVEntry]) -> frozenset[str]:
    """The holders still alive: those whose session holds some key under the prefix
    (its contender key; a session that is gone holds nothing)."""
    alive = {p.session for p in pairs if p.session}
    return frozenset(h for h in holders if h in alive)


@dataclass(frozen=True)
class SemaphoreStep:
    """What a contender does on reading the prefix: `conflict`, `limit` (contenders
    disagree on N), `full` (block on the prefix), `held` (we are a holder already) or
    `acquire` (write `value` to the `.lock` key with ?cas=`cas`)."""

    kind: Literal["conflict", "limit", "full", "held", "acquire"]
    limit: int = 0
    holders: frozenset[str] = frozenset()
    value: bytes = b""
    cas: int = 0


def semaphore_step(pairs: list[KVEntry], prefix: str, limit: int, session: str) -> SemaphoreStep:
    lock_pair = find_pair(pairs, join_key(prefix, LOCK_KEY))
    if lock_pair is not None and lock_pair.flags != SEMAPHORE_FLAG:
        return SemaphoreStep("conflict")
    got_limit, holders = decode_semaphore(lock_pair, limit)
    if got_limit != limit:
        return SemaphoreStep("limit", limit=got_limit)
    holders = prune_holders(holders, pairs)
    if session in holders:
        return SemaphoreStep("held", limit, holders)
    if len(holders) >= limit:
        return SemaphoreStep("full", limit, holders)
    new = holders | {session}
    return SemaphoreStep("acquire", limit, new, encode_semaphore(limit, new),
                         lock_pair.modify_index if lock_pair is not None else 0)


def semaphore_holds(pairs: list[KVEntry], prefix: str, session: str) -> bool:
    """Whether `session` is a live holder of the semaphore at `prefix` (the monitor's test)."""
    lock_pair = find_pair(pairs, join_key(prefix, LOCK_KEY))
    try:
        _, holders = decode_semaphore(lock_pair, 0)
    except LockError:
        return False
    return session in prune_holders(holders, pairs)


def _retryable(exc: APIError) -> bool:
    return exc.status == 0 or exc.status >= 500


# ---------------------------------------------------------------------------- I/O


async def _kv_read(client: Client, key: str, *, recurse: bool = False, index: int = 0, wait: float = WAIT,
                   consistent: bool = False) -> tuple[list[KVEntry], int]:
    """The pairs at `key` (under it, with recurse) and the X-Consul-Index; a 404 is no
    pairs and index 0 (the client keeps no headers of an error answer)."""
    params: list[tuple[str, str]] = []
    if recurse:
        params.append(("recurse", ""))
    if consistent:
        params.append(("consistent", ""))
    try:
        result = await client.blocking_get(kv_path(key), params, index=index or None, wait=wait)
    except APIError as exc:
        if exc.status == 404 and not isinstance(exc, DecodeError):
            return [], 0
        raise
    return parse_pairs(result.value), result.index


async def _kv_write(client: Client, method: str, key: str, value: bytes | None = None, **params: Any) -> bool:
    """A PUT or DELETE answering `true`/`false`."""
    answer, _ = await client.request(method, kv_path(key), params=params, data=value)
    if isinstance(answer, bytes):
        answer = answer.strip() == b"true"
    return answer is True


class _Holder:
    """The session, its renewal and the `lost` event shared by Lock and Semaphore."""

    _session_name = LOCK_SESSION_NAME
    _behavior = "release"

    def __init__(self, client: Client, *, session: str = "", session_name: str = "", session_ttl: float = SESSION_TTL,
                 lock_delay: float | None = None, wait: float = WAIT, retry: float = RETRY,
                 monitor_retries: int = 0, monitor_retry_time: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if not session and not 10 <= session_ttl <= 86400:
            raise ValueError("session_ttl must be between 10s and 86400s (Consul's bounds)")
        self.client = client
        self.session = session
        self.session_name = session_name or self._session_name
        self.session_ttl = session_ttl
        self.lock_delay = lock_delay
        self.wait = wait
        self.retry = retry
        self.monitor_retries = monitor_retries
        self.monitor_retry_time = monitor_retry_time
        self._clock = clock
        self._sleep = sleep
        self._given_session = bool(session)
        self.held = False
        self.lost = asyncio.Event()
        self.session_gone = False  # the renew answered 404 (or never succeeded within the TTL)
        self._renew_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self.held:
                await self.release()
        finally:
            with contextlib.suppress(LockError, APIError):
                await self.destroy()

    async def acquire(self, timeout: float | None = None) -> bool:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError

    async def destroy(self) -> None:
        raise NotImplementedError

    async def wait_lost(self) -> None:
        await self.lost.wait()

    async def _start_session(self) -> None:
        self.lost.clear()
        self.session_gone = False
        if self._given_session:
            return
        body: dict[str, Any] = {"Name": self.session_name, "TTL": format_duration(self.session_ttl),
                                "Behavior": self._behavior}
        if self.lock_delay is not None:
            body["LockDelay"] = format_duration(self.lock_delay)
        answer = await self.client.put("/v1/session/create", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("ID"), str) or not answer["ID"]:
            raise DecodeError("session create answered without an ID")
        self.session = answer["ID"]
        self._renew_task = asyncio.create_task(self._renew(self.session), name=f"session-renew-{self.session}")

    async def _renew(self, session: str) -> None:
        """Renew every TTL/2; a 404 means the session is gone. Errors retry every
        second until a TTL has passed without a renewal (the server has dropped the
        session by then)."""
        ttl = self.session_ttl
        delay = ttl / 2
        last_ok = self._clock()
        while True:
            await self._sleep(delay)
            try:
                answer = await self.client.put(f"/v1/session/renew/{urllib.parse.quote(session, safe='')}")
            except APIError as exc:
                if exc.status == 404:
                    log.info("lock_session_gone", session=session)
                    break
                if self._clock() - last_ok > ttl:
                    log.warning("lock_session_renew_failed", session=session, error=exc.message)
                    break
                delay = 1.0
                continue
            if not answer:
                break
            with contextlib.suppress(InvalidRequest, TypeError, KeyError, IndexError):
                ttl = max(1.0, parse_duration(answer[0]["TTL"]))
            delay, last_ok = ttl / 2, self._clock()
        self.session_gone = True
        self.lost.set()

    async def _end_session(self) -> None:
        """Stop renewing and destroy the session we created (best effort)."""
        task, self._renew_task = self._renew_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if self.session:
                with contextlib.suppress(APIError):
                    await self.client.put(f"/v1/session/destroy/{urllib.parse.quote(self.session, safe='')}")

    async def _stop_monitor(self) -> None:
        task, self._monitor_task = self._monitor_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _start_monitor(self) -> None:
        self._monitor_task = asyncio.create_task(self._monitor(), name=f"lock-monitor-{self.session}")

    async def _monitor(self) -> None:
        """Block on our key (prefix) until it is no longer ours, then set `lost`.
        APIErrors of a passing outage are ridden out `monitor_retries` times."""
        index, retries = 0, self.monitor_retries
        try:
            while True:
                try:
                    ours, new_index = await self._still_ours(index)
                except APIError as exc:
                    if retries > 0 and _retryable(exc):
                        retries -= 1
                        index = 0
                        await self._sleep(self.monitor_retry_time)
                        continue
                    log.warning("lock_monitor_failed", session=self.session, error=exc.message)
                    return
                retries = self.monitor_retries
                if not ours:
                    return
                if new_index <= index and new_index < 1:
                    await self._sleep(1.0)  # an agent without X-Consul-Index: do not spin
                index = new_index
        finally:
            self.lost.set()

    async def _still_ours(self, index: int) -> tuple[bool, int]:
        raise NotImplementedError

    def _deadline(self, timeout: float | None) -> float | None:
        return None if timeout is None else self._clock() + max(0.0, timeout)

    def _query_wait(self, deadline: float | None, attempts: int) -> float | None:
        """The wait of the next blocking query; None once the deadline has passed
        (after at least one attempt: a zero timeout still tries once)."""
        if deadline is None or attempts == 0:
            return self.wait
        remaining = deadline - self._clock()
        if remaining <= 0:
            return None
        return min(self.wait, remaining)

    async def _pause(self, deadline: float | None, seconds: float) -> None:
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - self._clock()))
        await self._sleep(seconds)

    def _check_session(self) -> None:
        if self.session_gone:
            raise LockError("session invalidated while waiting for the lock")


class Lock(_Holder):
    """A mutual-exclusion lock on `key` (Consul's Lock). Use:

        lock = Lock(client, "service/leader/.lock")
        if await lock.acquire(timeout=30):
            ...            # watch lock.lost
            await lock.release()

    or `async with Lock(...) as lock:` (acquires without a timeout; releases and
    removes the key if nobody else holds it on exit)."""

    def __init__(self, client: Client, key: str, *, value: bytes = b"", **kw: Any) -> None:
        super().__init__(client, **kw)
        key = key.lstrip("/")
        if not key:
            raise ValueError("missing key")
        self.key = key
        self.value = value

    async def acquire(self, timeout: float | None = None) -> bool:
        """Wait until the lock is ours (True) or `timeout` seconds have passed (False;
        None waits for ever, 0 tries once). Raises LockConflict if the key is not a
        lock, LockError if the session is invalidated meanwhile, APIError if the agent fails."""
        if self.held:
            raise LockError("Lock already held")
        await self._start_session()
        try:
            if await self._acquire(self._deadline(timeout)):
                self.held = True
                self._start_monitor()
                return True
            return False
        finally:
            if not self.held:
                await self._end_session()

    async def _acquire(self, deadline: float | None) -> bool:
        index, attempts = 0, 0
        while True:
            self._check_session()
            wait = self._query_wait(deadline, attempts)
            if wait is None:
                return False
            attempts += 1
            pairs, meta = await _kv_read(self.client, self.key, index=index, wait=wait)
            step = lock_step(find_pair(pairs, self.key), self.session)
            if step == "conflict":
                raise LockConflict("Existing key does not match lock use")
            if step == "held":
                return True
            if step == "wait":
                if meta < 1:
                    await self._pause(deadline, 1.0)
                index = meta
                continue
            if await _kv_write(self.client, "PUT", self.key, self.value, acquire=self.session, flags=LOCK_FLAG):
                return True
            # refused: held by someone since our read (block on it), or a lock-delay
            # after an invalidated holder (the key is free: retry after a pause)
            pairs, meta = await _kv_read(self.client, self.key)
            pair = find_pair(pairs, self.key)
            if pair is not None and pair.session:
                index = meta
                continue
            index = 0
            await self._pause(deadline, self.retry)

    async def _still_ours(self, index: int) -> tuple[bool, int]:
        pairs, meta = await _kv_read(self.client, self.key, index=index, wait=MONITOR_WAIT, consistent=True)
        pair = find_pair(pairs, self.key)
        return pair is not None and pair.session == self.session, meta

    async def release(self) -> None:
        """Give the lock up and destroy the session we created; sets `lost`. An error
        releasing a lock already lost is no error (there is nothing of ours to release)."""
        if not self.held:
            raise LockError("Lock not held")
        self.held = False
        was_lost = self.lost.is_set()
        await self._stop_monitor()
        try:
            await _kv_write(self.client, "PUT", self.key, self.value, release=self.session, flags=LOCK_FLAG)
        except APIError:
            if not was_lost:
                raise
        finally:
            self.lost.set()
            await self._end_session()

    async def destroy(self) -> None:
        """Delete the lock key if nobody holds it (LockInUse otherwise); not needed,
        only tidy. A key that is not a lock raises LockConflict."""
        if self.held:
            raise LockError("Lock already held")
        pairs, _ = await _kv_read(self.client, self.key)
        pair = find_pair(pairs, self.key)
        if pair is None:
            return
        if pair.flags != LOCK_FLAG:
            raise LockConflict("Existing key does not match lock use")
        if pair.session:
            raise LockInUse("Lock in use")
        if not await _kv_write(self.client, "DELETE", self.key, cas=pair.modify_index):
            raise LockInUse("Lock in use")


class Semaphore(_Holder):
    """A semaphore of `limit` holders at `prefix` (Consul's Semaphore); the same
    interface as Lock. Every contender must agree on `limit`."""

    _session_name = SEMAPHORE_SESSION_NAME
    _behavior = "delete"

    def __init__(self, client: Client, prefix: str, limit: int, *, value: bytes = b"", **kw: Any) -> None:
        super().__init__(client, **kw)
        prefix = prefix.lstrip("/")
        if not prefix:
            raise ValueError("missing prefix")
        if limit <= 0:
            raise ValueError("semaphore limit must be positive")
        self.prefix = prefix
        self.limit = limit
        self.value = value
        self.lock_key = join_key(prefix, LOCK_KEY)

    @property
    def contender_key(self) -> str:
        return join_key(self.prefix, self.session)

    async def acquire(self, timeout: float | None = None) -> bool:
        """Wait for a slot (True) or until `timeout` (False); errors as Lock.acquire,
        plus LockError when the contenders disagree on the limit."""
        if self.held:
            raise LockError("Semaphore already held")
        await self._start_session()
        contender = False
        try:
            contender = await _kv_write(self.client, "PUT", self.contender_key, self.value, acquire=self.session,
                                        flags=SEMAPHORE_FLAG)
            if not contender:
                raise LockError("failed to make contender entry")
            if await self._acquire(self._deadline(timeout)):
                self.held = True
                self._start_monitor()
                return True
            return False
        finally:
            if not self.held:
                if contender:
                    with contextlib.suppress(APIError):
                        await _kv_write(self.client, "DELETE", self.contender_key)
                await self._end_session()

    async def _acquire(self, deadline: float | None) -> bool:
        index, attempts = 0, 0
        while True:
            self._check_session()
            wait = self._query_wait(deadline, attempts)
            if wait is None:
                return False
            attempts += 1
            pairs, meta = await _kv_read(self.client, self.prefix, recurse=True, index=index, wait=wait)
            step = semaphore_step(pairs, self.prefix, self.limit, self.session)
            if step.kind == "conflict":
                raise LockConflict("Existing key does not match semaphore use")
            if step.kind == "limit":
                raise LockError(f"semaphore limit conflict (lock: {step.limit}, local: {self.limit})")
            if step.kind == "held":
                return True
            if step.kind == "full":
                if meta < 1:
                    await self._pause(deadline, 1.0)
                index = meta
                continue
            if await _kv_write(self.client, "PUT", self.lock_key, step.value, cas=step.cas, flags=SEMAPHORE_FLAG):
                return True
            index = 0  # another contender changed the .lock key first: read it again

    async def _still_ours(self, index: int) -> tuple[bool, int]:
        pairs, meta = await _kv_read(self.client, self.prefix, recurse=True, index=index, wait=MONITOR_WAIT,
                                     consistent=True)
        return semaphore_holds(pairs, self.prefix, self.session), meta

    async def release(self) -> None:
        """Leave the holders (by check-and-set, retried on a race), delete our
        contender key and destroy the session we created; sets `lost`."""
        if not self.held:
            raise LockError("Semaphore not held")
        self.held = False
        await self._stop_monitor()
        try:
            for _ in range(100):
                pairs, _ = await _kv_read(self.client, self.lock_key)
                pair = find_pair(pairs, self.lock_key)
                limit, holders = decode_semaphore(pair, self.limit)
                if self.session not in holders:
                    break
                value = encode_semaphore(limit, holders - {self.session})
                if await _kv_write(self.client, "PUT", self.lock_key, value, flags=SEMAPHORE_FLAG,
                                   cas=pair.modify_index if pair is not None else 0):
                    break
            else:
                raise LockError("failed to update the semaphore: too many concurrent changes")
            await _kv_write(self.client, "DELETE", self.contender_key)
        finally:
            self.lost.set()
            await self._end_session()

    async def destroy(self) -> None:
        """Delete the `.lock` key if no live holder is left (LockInUse otherwise)."""
        if self.held:
            raise LockError("Semaphore already held")
        pairs, _ = await _kv_read(self.client, self.prefix, recurse=True)
        pair = find_pair(pairs, self.lock_key)
        if pair is None:
            return
        if pair.flags != SEMAPHORE_FLAG:
            raise LockConflict("Existing key does not match semaphore use")
        _, holders = decode_semaphore(pair, self.limit)
        if prune_holders(holders, pairs):
            raise LockInUse("Semaphore in use")
        if not await _kv_write(self.client, "DELETE", self.lock_key, cas=pair.modify_index):
            raise LockInUse("Semaphore in use")
