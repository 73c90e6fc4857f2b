"""The server role, assembled: Raft membership, the RPC endpoints by area, the
blocking-read engine and the leader's duties over one FSM.

    membership.py   bootstrap, join, leave, servers table     Server.Hello/Join/Remove/List
    catalog_rpc.py  reads and agents' writes                  Read, Catalog.Apply
    nodes.py        heartbeats, leaves, members               Node.Heartbeat/Leave, Internal.Members
    connect_ca.py   signing and CA configuration              ConnectCA.Sign/Configure
    auto_encrypt.py client agents' RPC certificates           AutoEncrypt.Sign
    rpc_trust.py    the RPC listener's roots under auto_encrypt.allow_tls
    operator.py     status, Raft configuration, snapshots     Status.Ping/Leader, Operator.Raft
    sessions.py     renewals, TTLs, invalidation, tombstones  Session.Renew (TTL timers: leader only)
    leader.py       liveness and reaping, server reconcile, CA upkeep (leader only)
    reads.py        the blocking-read engine

Only the composition root (agent/agent.py) and the backend (agent/backend.py) use this
class; HTTP handlers reach it through the backend contract. It imports no module of the
local agent (local state, checks, HTTP, DNS view, caches).
"""

from __future__ import annotations

import asyncio
from typing import Any

from mesh.ca.tls import rpc_peer_problem
from mesh.catalog.fsm import FSM

from ..config import AgentConfig
from ..reads import ReadOptions, ReadResult
from ..rpc import RPCClient, RPCServer
from ..tasks import cancel_all
from ..tls import rpc_contexts
from ..watch import WatchHub
from .acl import ServerACLs
from .auto_encrypt import AutoEncrypt
from .catalog_rpc import CatalogEndpoints
from .clock import Clock, SystemClock
from .connect_ca import ConnectCA
from .leader import LeaderDuties
from .membership import Membership
from .nodes import NodeLiveness
from .operator import Operator
from .raft import RaftFactory
from .reads import ReadEngine
from .rpc_trust import RPCTrust
from .sessions import SessionUpkeep

__all__ = ["ServerRole", "CERT_OPTIONAL_METHODS"]

# what a TLS connection without a client certificate may call (auto_encrypt.allow_tls)
CERT_OPTIONAL_METHODS = frozenset({"AutoEncrypt.Sign", "Status.Ping"})


class ServerRole:
    def __init__(self, cfg: AgentConfig, node_id: str, hub: WatchHub, clock: Clock | None = None,
                 raft_factory: RaftFactory | None = None) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.hub = hub
        self.clock: Clock = clock or SystemClock()
        self.fsm = FSM()
        server_tls, client_tls = rpc_contexts(cfg)
        allow_tls = cfg.auto_encrypt_allow_tls and server_tls is not None
        self.rpc = RPCServer(cfg.bind_addr, cfg.server_port, cfg.encrypt, server_tls,
                             handshake_timeout=cfg.rpc_handshake_timeout,
                             max_conns_per_client=cfg.rpc_max_conns_per_client,
                             cert_optional_methods=CERT_OPTIONAL_METHODS if allow_tls else frozenset(),
                             peer_check=rpc_peer_problem if allow_tls else None)
        self.client = RPCClient(cfg.encrypt, ssl_context=client_tls)
        self.membership = Membership(cfg, node_id, self.fsm, self.client, raft_factory)
        self.acls = ServerACLs(cfg, self.membership, self.fsm, self.clock)
        self.reads = ReadEngine(self.membership, self.fsm, hub, self.acls)
        self.catalog = CatalogEndpoints(cfg, self.membership, self.reads, self.clock, self.acls)
        self.nodes = NodeLiveness(cfg, self.membership, self.fsm, self.clock, self.acls)
        self.ca = ConnectCA(cfg, self.membership, self.fsm, self.clock, self.acls)
        self.operator = Operator(self.membership, self.fsm, self.acls)
        self.duties = LeaderDuties(cfg, self.membership, self.fsm, hub, self.nodes, self.ca, self.clock)
        self.sessions = SessionUpkeep(cfg, self.membership, self.fsm, hub, self.clock, self.acls)
        self.auto_encrypt = AutoEncrypt(cfg, self.membership, self.ca, self.acls)
        self.rpc_trust = RPCTrust(cfg, self.membership, self.fsm, hub, self.rpc) if allow_tls else None
        self._tasks: list[asyncio.Task[None]] = []
        for area in (self.membership, self.catalog, self.nodes, self.ca, self.operator, self.sessions, self.acls,
                     self.auto_encrypt):
            for method, handler in area.rpc_methods().items():
                self.rpc.register(method, handler)

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self, raft_port: int) -> None:
        rpc_port = await self.rpc.start()
        self.membership.create_raft(f"{self.cfg.advertise()}:{rpc_port}", raft_port, self.hub.notify)
        loop = asyncio.get_running_loop()
        bootstrap = self.membership.start_raft()
        if bootstrap is not None:
            self._tasks.append(bootstrap)
        self._tasks.append(loop.create_task(self.membership.server_table_loop(), name="server-table"))
        self._tasks.append(loop.create_task(self.duties.run(), name="leader-duties"))
        self._tasks.append(loop.create_task(self.sessions.run(), name="session-upkeep"))
        if self.rpc_trust is not None:
            self._tasks.append(loop.create_task(self.rpc_trust.run(), name="rpc-trust"))

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        await self.duties.stop()
        await self.rpc.stop()
        await self.client.close()
        raft = self.membership.raft
        if raft is not None:
            await raft.stop()

    async def leave(self) -> None:
        await self.membership.leave()

    async def transfer_leadership(self, timeout: float) -> bool | None:
        """Before a planned stop of the leader of several servers: hand leadership over.
        None when there was nothing to hand over."""
        raft = self.membership.raft
        if raft is None or not raft.is_leader or len(raft.voters()) <= 1:
            return None
        return await raft.transfer_leadership(timeout=timeout)

    # ---- identity and status ----------------------------------------------------------------
    @property
    def rpc_port(self) -> int:
        return self.rpc.port

    @property
    def rpc_address(self) -> str:
        return self.membership.rpc_address

    @property
    def raft_address(self) -> str:
        return self.membership.raft_address

    def leader_contact(self) -> tuple[bool, int]:
        """(a leader is known, milliseconds since this server heard from it)."""
        raft = self.membership.raft
        if raft is None:
            return False, 0
        contact = raft.last_contact()
        return raft.has_leader(), int(contact * 1000) if contact != float("inf") else 0

    def leader_rpc_address(self) -> str:
        return self.membership.leader_rpc_address()

    def status_peers(self) -> list[str]:
        return self.membership.peer_rpc_addresses()

    async def raft_configuration(self, token: str = "") -> dict[str, Any]:
        (await self.acls.access(token)).require("operator", None, "read")
        return self.operator.raft_configuration()

    def raft_state(self) -> dict[str, Any]:
        return self.operator.raft_state()

    def raft_stats(self) -> dict[str, Any]:
        return self.operator.raft_stats()

    async def remove_peer(self, address: str, peer_id: str) -> None:
        await self.operator.remove_peer(address, peer_id)

    async def snapshot(self, consistent: bool, stale: bool) -> tuple[int, bytes]:
        return await self.operator.snapshot(consistent, stale)

    async def restore(self, data: bytes) -> None:
        await self.operator.restore(data)

    async def join(self, address: str) -> None:
        await self.membership.join(address)

    # ---- what the local backend calls ---------------------------------------------------------
    async def apply_raw(self, raw: bytes, token: str = "") -> Any:
        return await self.catalog.apply_raw(raw, token)

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions, token: str = "") -> ReadResult:
        return await self.reads.read(name, params, opts, token)

    async def heartbeat(self, info: dict[str, Any]) -> float:
        return await self.nodes.heartbeat(info)

    async def node_leave(self, info: dict[str, Any]) -> None:
        await self.nodes.node_leave(info)

    async def members(self) -> list[dict[str, Any]]:
        return await self.nodes.members()

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.ca.sign(args)

    async def ca_configure(self, body: Any, token: str = "") -> bool:
        (await self.acls.access(token)).require("operator", None, "write")
        return await self.ca.configure(body)

    async def session_renew(self, session_id: str, token: str = "") -> dict[str, Any] | None:
        return await self.sessions.renew(session_id, token)

    async def resolve_token(self, token: str) -> dict[str, Any]:
        return await self.acls.resolve_wire(token)
