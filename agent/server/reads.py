"""The blocking-read engine: a named query against this server's state, as Consul's
blockingQuery runs it.

- `?consistent` goes through a barrier first; a default read needs a known leader, and a
  follower that is not caught up within the lease asks the leader instead; `?stale`
  reads whatever this server has.
- With `min_index`, the read waits (up to `wait` plus a sixteenth of jitter) until the
  query's index passes it, woken by the watch hub for the query's keys only.
- Watchers of one query wake together on a change; the first recomputes, the rest reuse
  its answer while nothing new has been applied (a small LRU keyed by the state's
  identity and last applied index).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import OrderedDict
from typing import Any

from mesh.catalog.acl_enforce import READ_FILTERS
from mesh.catalog.errors import InvalidRequest, PermissionDenied
from mesh.catalog.fsm import FSM

from ..errors import NoLeader
from ..metrics import LEADER
from ..reads import ReadOptions, ReadResult
from ..rpc import RPCError
from ..watch import WatchHub
from .acl import ServerACLs
from .membership import Membership
from .queries import QUERIES

__all__ = ["ReadEngine", "READ_CACHE_SIZE"]

READ_CACHE_SIZE = 64


class ReadEngine:
    def __init__(self, membership: Membership, fsm: FSM, hub: WatchHub, acls: ServerACLs,
                 rng: random.Random | None = None) -> None:
        self.membership = membership
        self.acls = acls
        self.fsm = fsm
        self.hub = hub
        self._rng = rng or random.Random()
        self._cache: OrderedDict[tuple[str, str], tuple[Any, int, Any]] = OrderedDict()

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions, token: str = "") -> ReadResult:
        """A named query against this server's state, blocking per `opts`, showing what
        `token` may read (catalog.acl_enforce.READ_FILTERS)."""
        q = QUERIES.get(name)
        if q is None:
            raise InvalidRequest(f"unknown query {name!r}")
        access = await self.acls.access(token)
        visible = READ_FILTERS[name]
        raft = self.membership.require_raft()
        if opts.consistent:
            await raft.barrier()
        elif not opts.stale:
            if not raft.has_leader():
                raise NoLeader()
            if not raft.is_leader and not raft.caught_up():
                return await self._read_on_leader(name, params, opts, token)
        keys = q.keys(params)
        cache_key = (name, json.dumps(params, sort_keys=True, default=str))

        def once() -> tuple[int, Any]:
            # Watchers of one query wake together on a change; the first recomputes,
            # the rest reuse its answer while nothing new has been applied.
            with raft.lock:
                version = (id(self.fsm.store), self.fsm.last_index)
                hit = self._cache.get(cache_key)
                if hit is not None and hit[0] == version:
                    self._cache.move_to_end(cache_key)
                    return hit[1], hit[2]
                index, value = q.run(self.fsm.store, params)
            cache = self._cache
            if cache and next(iter(cache.values()))[0] != version:
                # answers from before the last apply are never served again: drop them
                # all, so the cache holds only what the current wake-up computed
                for key in [k for k, v in cache.items() if v[0] != version]:
                    del cache[key]
            cache[cache_key] = (version, index, value)
            if len(cache) > READ_CACHE_SIZE:
                cache.popitem(last=False)
            return index, value

        index, value = once()
        if opts.min_index and index <= opts.min_index:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + opts.wait + self._rng.random() * opts.wait / 16
            while index <= opts.min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self.hub.wait(keys, remaining)
                index, value = once()
        contact = raft.last_contact()
        filtered = False
        if self.acls.enabled:
            value, filtered = visible(access, params, value)
        return ReadResult(index, value, raft.has_leader(), int(contact * 1000) if contact != float("inf") else 0,
                          filtered and not access.anonymous)

    async def _read_on_leader(self, name: str, params: dict[str, Any], opts: ReadOptions, token: str) -> ReadResult:
        """A default read this follower cannot serve within the lease: the leader's answer."""
        leader = self.membership.leader_rpc_address()
        if not leader or leader == self.membership.rpc_address:
            raise NoLeader()
        wait = opts.wait + opts.wait / 16 + 5 if opts.min_index else 10
        try:
            reply = await self.membership.client.call(
                leader, "Read", {"q": name, "p": params, "o": opts.to_wire(), "token": token}, timeout=wait)
        except RPCError as exc:
            if exc.kind == "invalid":
                raise InvalidRequest(str(exc)) from None
            if exc.kind == "denied":
                raise PermissionDenied(str(exc)) from None
            raise NoLeader(f"No cluster leader (the leader did not answer: {exc})") from None
        LEADER.reads_forwarded.inc()
        return ReadResult.from_wire(reply)
