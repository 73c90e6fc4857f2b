"""Status and operator calls: who leads, the Raft configuration, this server's Raft
state, removing a peer, and snapshots of the replicated state.

RPC endpoints: Status.Ping, Status.Leader, Operator.Raft. The rest are the public
methods the HTTP handlers of /v1/status, /v1/operator/raft and /v1/snapshot reach
through the backend; none of them hands out the Raft node or the FSM.
"""

from __future__ import annotations

from typing import Any

from mesh.catalog.commands import MessageType
from mesh.catalog.errors import InvalidRequest, MeshError, NotFound
from mesh.catalog.fsm import FSM

from ..errors import MembershipError
from ..rpc import Handler
from .acl import ServerACLs
from .membership import Membership

__all__ = ["Operator"]


class Operator:
    def __init__(self, membership: Membership, fsm: FSM, acls: ServerACLs) -> None:
        self.membership = membership
        self.acls = acls
        self.fsm = fsm

    def rpc_methods(self) -> dict[str, Handler]:
        return {"Status.Ping": self._rpc_ping, "Status.Leader": self._rpc_status_leader,
                "Operator.Raft": self._rpc_operator_raft}

    async def _rpc_ping(self, args: dict[str, Any]) -> bool:
        return True

    async def _rpc_status_leader(self, args: dict[str, Any]) -> str:
        return self.membership.leader_rpc_address()

    async def _rpc_operator_raft(self, args: dict[str, Any]) -> dict[str, Any]:
        (await self.acls.access(args.get("token"))).require("operator", None, "read")
        return self.raft_configuration()

    def raft_configuration(self) -> dict[str, Any]:
        """/v1/operator/raft/configuration: every voter, by ID, node and RPC address."""
        m = self.membership
        raft = m.require_raft()
        leader = raft.leader
        servers = [
            {"ID": m.id_of(v), "Node": m.node_of(v), "Address": m.rpc_address_of(v), "Leader": v == leader,
             "ProtocolVersion": "3", "Voter": True, "RaftAddress": v}
            for v in raft.voters()
        ]
        return {"Servers": servers, "Index": raft.commit_index}

    def raft_state(self) -> dict[str, Any]:
        """mesh extension: this server's view of Raft and a digest of its replicated
        state, so operators (and tests) can check that servers agree."""
        raft = self.membership.raft
        if raft is None or not raft.started:
            return {"Started": False}
        with raft.lock:
            state_hash = self.fsm.state_hash()
            last_index = self.fsm.last_index
        return {
            "Started": True,
            "Leader": raft.leader or "",
            "IsLeader": raft.is_leader,
            "AppliedIndex": raft.applied_index,
            "CommitIndex": raft.commit_index,
            "FSMIndex": last_index,
            "StateHash": state_hash,
            "LastContactMs": int(min(raft.last_contact(), 1e9) * 1000),
            "Status": raft.status(),
        }

    def raft_stats(self) -> dict[str, Any]:
        """pysyncobj's status of this node, for /v1/agent/self's Stats.raft."""
        raft = self.membership.raft
        return raft.status() if raft is not None else {}

    async def remove_peer(self, address: str, peer_id: str) -> None:
        """DELETE /v1/operator/raft/peer: by Raft or RPC address, or by server ID."""
        if not address and not peer_id:
            raise InvalidRequest("Must specify either ?id with the server's ID or ?address with IP:port of peer")
        m = self.membership
        raft = m.require_raft()
        raft_address = None
        for voter in raft.voters():
            if voter == address or m.rpc_address_of(voter) == address or (peer_id and m.id_of(voter) == peer_id):
                raft_address = voter
        if raft_address is None:
            raise NotFound(f"address {address or peer_id!r} was not found in the Raft configuration")
        try:
            await m.remove_server(raft_address, deregister=False)
        except MembershipError as exc:
            raise InvalidRequest(str(exc)) from None

    async def snapshot(self, consistent: bool, stale: bool) -> tuple[int, bytes]:
        """The replicated state as FSM snapshot bytes, and the index it was taken at."""
        raft = self.membership.raft
        if raft is None or not raft.started:
            raise MeshError("No cluster leader")
        if consistent:
            await raft.barrier()
        elif not stale and not raft.has_leader():
            raise MeshError("No cluster leader")
        with raft.lock:
            data = self.fsm.snapshot()
        return raft.applied_index, data

    async def restore(self, data: bytes) -> None:
        """Replace the replicated state with a checked snapshot, through Raft."""
        await self.membership.require_raft().apply(MessageType.RESTORE, data, timeout=60)
