"""ACL tokens on the servers: what a secret stands for, from this server's state.

Every server call that reads or changes replicated state names a token (`token` in
its arguments; none means the anonymous token) and is checked here (catalog.acl_enforce
holds the rules per write and per read). Agents resolve tokens through `ACL.Resolve`
and cache the answer (agent/acl.py), so their own endpoints keep working for a while
when no server answers. Compiled authorizers are kept per (secret, ACL table version):
a rules change or a deleted token is seen by the next call.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from mesh.catalog.acl_enforce import ACL_NOT_FOUND, ALLOW_ALL, Access, compile_access
from mesh.catalog.acl_state import Resolved, resolve
from mesh.catalog.errors import MeshError, PermissionDenied
from mesh.catalog.fsm import FSM

from ..config import AgentConfig
from ..rpc import Handler, RPCError
from . import rpc_args
from .clock import Clock
from .membership import Membership

__all__ = ["ServerACLs"]

_CACHE_SIZE = 1024


class ServerACLs:
    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, clock: Clock) -> None:
        self.cfg = cfg
        self.membership = membership
        self.fsm = fsm
        self.clock = clock
        self._compiled: OrderedDict[str, tuple[tuple[int, int], Resolved, Access]] = OrderedDict()

    def rpc_methods(self) -> dict[str, Handler]:
        return {"ACL.Resolve": self._rpc_resolve}

    @property
    def enabled(self) -> bool:
        return self.cfg.acl_enabled

    def resolved(self, token: str) -> Resolved | None:
        raft = self.membership.require_raft()
        with raft.lock:
            return resolve(self.fsm.store.acl, token, self.clock.time(), self.cfg.datacenter)

    async def access(self, token: Any) -> Access:
        """The caller's permissions; PermissionDenied("ACL not found") for a secret that
        names no live token. Everything is allowed with ACLs off.

        A follower that does not know the token asks the leader before saying so: a
        token created a moment ago may not have been applied here yet, and a client
        that was just handed one must not be refused by whichever server it asks."""
        if not self.cfg.acl_enabled:
            return ALLOW_ALL
        secret = token if isinstance(token, str) else ""
        try:
            return self._local_access(secret)
        except PermissionDenied:
            if self.membership.require_raft().is_leader:
                raise
        wire = await self._leaders_answer(secret)
        return compile_access(Resolved.from_wire(wire), self.cfg.acl_default_policy)

    def _local_access(self, secret: str) -> Access:
        raft = self.membership.require_raft()
        now = self.clock.time()
        with raft.lock:
            store = self.fsm.store
            version = (id(store.acl), store.index("acl"))
            hit = self._compiled.get(secret)
            if hit is not None and hit[0] == version:
                self._compiled.move_to_end(secret)
                resolved, access = hit[1], hit[2]
            else:
                found = resolve(store.acl, secret, now, self.cfg.datacenter)
                if found is None:
                    raise PermissionDenied(ACL_NOT_FOUND)
                resolved, access = found, compile_access(found, self.cfg.acl_default_policy)
                self._compiled[secret] = (version, resolved, access)
                while len(self._compiled) > _CACHE_SIZE:
                    self._compiled.popitem(last=False)
        if resolved.expiration_time and now >= resolved.expiration_time:
            raise PermissionDenied(ACL_NOT_FOUND)
        return access

    async def _rpc_resolve(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.resolve_wire(rpc_args.string(args, "token", "ACL.Resolve"))

    async def resolve_wire(self, token: str) -> dict[str, Any]:
        """What an agent caches for a token: its rules, or "ACL not found" (from the
        leader, when this follower has not applied the token yet)."""
        if not self.cfg.acl_enabled:
            return {"enabled": False}
        found = self.resolved(token)
        if found is not None:
            return dict(found.to_wire(), enabled=True)
        if self.membership.require_raft().is_leader:
            raise PermissionDenied(ACL_NOT_FOUND)
        return dict(await self._leaders_answer(token))

    async def _leaders_answer(self, secret: str) -> dict[str, Any]:
        try:
            wire = await self.membership.client.call(self.membership.leader_rpc_address(), "ACL.Resolve",
                                                     {"token": secret}, timeout=5)
        except (RPCError, MeshError):
            raise PermissionDenied(ACL_NOT_FOUND) from None
        if not isinstance(wire, dict) or "a" not in wire:
            raise PermissionDenied(ACL_NOT_FOUND)
        return wire
