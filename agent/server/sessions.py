"""Session upkeep on the leader: TTL timers, invalidation, renewals, tombstone reaping.

The leader alone remembers when each TTL session was last renewed (`SessionTimers`), as
Consul's does: a renewal is not a Raft write, so `Session.Renew` goes to the leader
(a follower forwards it). A new leader knows no renewals, so it starts every session's
clock at its election (a session it has no timer for starts one when first seen): no
TTL is cut short by a failover.

`invalidation_plan` is pure: the sessions whose node or checks make them invalid
(catalog.sessions.session_problem) and those whose timer ran out (2 x TTL after the
last renewal, Consul's promise). The duty applies it through Raft with the leader's
wall time in the command, so every server delays the released locks alike.

Tombstones of deleted keys are reaped once older than the tombstone TTL: the leader
notes (time, last applied index) while tombstones exist and reaps up to the newest
index noted at least a TTL ago.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mesh.catalog.commands import MessageType, SessionDestroyRequest
from mesh.catalog.errors import InvalidRequest, MeshError
from mesh.catalog.fsm import FSM
from mesh.catalog.sessions import Session, session_problem
from mesh.catalog.store import Store

from ..config import AgentConfig
from ..logging import get_logger
from ..metrics import LEADER
from ..rpc import Handler
from ..watch import WatchHub
from . import rpc_args
from .acl import ServerACLs
from .clock import Clock
from .membership import Membership

__all__ = ["SessionTimers", "TombstoneClock", "invalidation_plan", "SessionUpkeep", "TTL_MULTIPLIER"]

log = get_logger("server")

TTL_MULTIPLIER = 2.0  # Consul waits up to twice the TTL before invalidating
_MAX_SLEEP = 1.0


class SessionTimers:
    """When each TTL session expires unless renewed: the leader's memory alone."""

    def __init__(self) -> None:
        self.deadlines: dict[str, float] = {}

    def reset(self, session_id: str, ttl: float, now: float) -> None:
        if ttl > 0:
            self.deadlines[session_id] = now + ttl * TTL_MULTIPLIER

    def restart_all(self, sessions: Iterable[Session], now: float) -> None:
        self.deadlines = {}
        for session in sessions:
            self.reset(session.id, session.ttl_seconds, now)

    def next_deadline(self) -> float | None:
        return min(self.deadlines.values(), default=None)


def invalidation_plan(store: Store, timers: SessionTimers, now: float) -> list[tuple[str, str]]:
    """(session ID, reason) for every session to invalidate now. Timers of sessions
    that are gone are dropped; a TTL session without one starts it here."""
    for gone in [s for s in timers.deadlines if s not in store.sessions]:
        del timers.deadlines[gone]
    out = []
    for session_id in sorted(store.sessions):
        session = store.sessions[session_id]
        problem = session_problem(store, session)
        if problem:
            out.append((session_id, problem))
            continue
        ttl = session.ttl_seconds
        if ttl <= 0:
            continue
        deadline = timers.deadlines.get(session_id)
        if deadline is None:
            timers.reset(session_id, ttl, now)
        elif deadline <= now:
            out.append((session_id, "TTL expired"))
    return out


class TombstoneClock:
    """Which tombstones are old enough to reap, by (time, applied index) hints."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.hints: list[tuple[float, int]] = []

    def note(self, now: float, last_index: int) -> None:
        if not self.hints or self.hints[-1][1] != last_index:
            self.hints.append((now, last_index))

    def reapable(self, now: float) -> int:
        """The highest index whose tombstones are at least a TTL old (0: none yet)."""
        old = [index for at, index in self.hints if now - at >= self.ttl]
        if not old:
            return 0
        self.hints = [(at, index) for at, index in self.hints if now - at < self.ttl]
        return max(old)


class SessionUpkeep:
    """`Session.Renew`, and the leader's session and tombstone duty."""

    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, hub: WatchHub, clock: Clock,
                 acls: ServerACLs) -> None:
        self.cfg = cfg
        self.acls = acls
        self.membership = membership
        self.fsm = fsm
        self.hub = hub
        self.clock = clock
        self.timers = SessionTimers()
        self.tombstones = TombstoneClock(cfg.tombstone_ttl)
        self._was_leader = False
        self._term: object = None

    def rpc_methods(self) -> dict[str, Handler]:
        return {"Session.Renew": self._rpc_renew}

    async def renew(self, session_id: str, token: str = "") -> dict[str, Any] | None:
        """Restart the session's TTL clock on the leader; its entry, or None when it
        does not exist (session:write on its node needed)."""
        raft = self.membership.require_raft()
        access = await self.acls.access(token)
        with raft.lock:
            session = self.fsm.store.sessions.get(session_id)
        if session is not None:
            access.require("session", session.node, "write")
        if not raft.is_leader:
            reply = await self.membership.forward("Session.Renew", {"id": session_id, "token": token})
            return dict(reply) if reply else None
        if session is None:
            return None
        self.timers.reset(session_id, session.ttl_seconds, self.clock.monotonic())
        LEADER.session_renewals.inc()
        return session.to_api()

    async def _rpc_renew(self, args: dict[str, Any]) -> Any:
        session_id = rpc_args.string(args, "id", "Session.Renew")
        if not session_id:
            raise InvalidRequest("Session.Renew needs a session ID")
        return await self.renew(session_id, rpc_args.string(args, "token", "Session.Renew"))

    # ---- the leader's duty ---------------------------------------------------------
    async def run(self) -> None:
        """Wake on session, check and node changes, or at the next TTL deadline."""
        while True:
            deadline = self.timers.next_deadline()
            sleep = _MAX_SLEEP if deadline is None else min(_MAX_SLEEP, max(0.0, deadline - self.clock.monotonic()))
            await self.hub.wait(("sessions", "checks", "nodes"), sleep)
            try:
                await self.run_once()
            except MeshError as exc:
                log.warning("session_upkeep_failed", error=str(exc))

    async def run_once(self) -> None:
        LEADER.session_runs.inc()
        raft = self.membership.raft
        if raft is None or not raft.started or not raft.is_leader or not raft.lease_valid():
            self._was_leader = False
            return
        now = self.clock.monotonic()
        status = raft.status()
        term = status.get("raft_term", status.get("term"))
        with raft.lock:
            store = self.fsm.store
            if not self._was_leader or term != self._term:
                # a new term: renewals went to other leaders meanwhile; every TTL starts again now
                self.timers.restart_all(store.sessions.values(), now)
                self.tombstones.hints = []
            self._was_leader, self._term = True, term
            plan = invalidation_plan(store, self.timers, now)
            if store.kv.tombstones:
                self.tombstones.note(now, self.fsm.last_index)
            reap = self.tombstones.reapable(now)
        if plan:
            for session_id, reason in plan:
                log.info("session_invalidated", session=session_id, reason=reason)
            LEADER.sessions_invalidated.inc(len(plan))
            await raft.apply(MessageType.SESSION_DESTROY,
                             SessionDestroyRequest(tuple(s for s, _ in plan), self.clock.time(), plan[0][1]))
            for session_id, _ in plan:
                self.timers.deadlines.pop(session_id, None)
        if reap:
            reaped = await raft.apply(MessageType.KV_REAP, reap)
            log.debug("tombstones_reaped", up_to=reap, count=reaped)
