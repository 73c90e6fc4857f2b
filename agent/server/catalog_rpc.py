"""Catalog endpoints: `Read` (every named query, through the blocking-read engine) and
`Catalog.Apply` (the commands an agent may commit).

An agent sends its writes already encoded (the request ID inside makes a retry through
another server safe); only the types in CLIENT_WRITABLE are accepted, the rest are the
servers' own (servers table, CA, restore).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from mesh.catalog.acl_enforce import authorize_command
from mesh.catalog.commands import TIMED, MessageType, decode, encode
from mesh.catalog.errors import InvalidRequest, MeshError

from ..config import AgentConfig
from ..reads import ReadOptions
from ..rpc import Handler
from . import rpc_args
from .acl import ServerACLs
from .clock import Clock
from .membership import Membership
from .reads import ReadEngine

__all__ = ["CatalogEndpoints", "CLIENT_WRITABLE"]

# the commands an agent may send through Catalog.Apply
CLIENT_WRITABLE = {MessageType.REGISTER, MessageType.DEREGISTER, MessageType.BARRIER,
                   MessageType.INTENTION_UPSERT, MessageType.INTENTION_DELETE,
                   MessageType.CONFIG_SET, MessageType.CONFIG_DELETE,
                   MessageType.KV_APPLY, MessageType.TXN, MessageType.SESSION_CREATE, MessageType.SESSION_DESTROY,
                   MessageType.ACL}


class CatalogEndpoints:
    def __init__(self, cfg: AgentConfig, membership: Membership, reads: ReadEngine, clock: Clock,
                 acls: ServerACLs) -> None:
        self.cfg = cfg
        self.acls = acls
        self.membership = membership
        self.reads = reads
        self.clock = clock

    def rpc_methods(self) -> dict[str, Handler]:
        return {"Read": self._rpc_read, "Catalog.Apply": self._rpc_apply}

    async def apply_raw(self, raw: bytes, token: str = "") -> Any:
        """Commit an agent's encoded command, if it is one an agent may send and `token`
        may make (catalog.acl_enforce.authorize_command)."""
        raft = self.membership.require_raft()
        try:
            cmd = decode(raw)
        except (MeshError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"Catalog.Apply: undecodable command ({type(exc).__name__})") from None
        if cmd.type not in CLIENT_WRITABLE:
            raise InvalidRequest(f"command type {cmd.type} may not be sent by an agent")
        if self.acls.enabled:
            access = await self.acls.access(token)
            with raft.lock:
                authorize_command(access, cmd, self.fsm_store())
        if cmd.type in TIMED:
            # lock delays compare wall times: a server's, never the sending agent's
            raw = encode(cmd.type, replace(cmd.body, now=self.clock.time()), cmd.request_id, cmd.flags)
        return await raft.apply_raw(raw)

    async def _rpc_apply(self, args: dict[str, Any]) -> Any:
        raw = args.get("raw")
        if not isinstance(raw, bytes):
            raise InvalidRequest("Catalog.Apply needs the encoded command")
        return await self.apply_raw(raw, rpc_args.string(args, "token", "Catalog.Apply"))

    def fsm_store(self) -> Any:
        return self.reads.fsm.store

    async def _rpc_read(self, args: dict[str, Any]) -> dict[str, Any]:
        name = rpc_args.string(args, "q", "Read")
        params, opts = rpc_args.read_params(args), ReadOptions.from_wire(rpc_args.read_options(args))
        opts = replace(opts, wait=min(opts.wait, self.cfg.max_query_time))
        try:
            result = await self.reads.read(name, params, opts, rpc_args.string(args, "token", "Read"))
        except KeyError as exc:
            raise InvalidRequest(f"Read {name}: missing parameter {exc}") from None
        return result.to_wire()
