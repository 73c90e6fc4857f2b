"""Raft membership of the server role: bootstrap, join, leave, and the servers table.

Bootstrap, as Consul's -bootstrap-expect: a new server says hello to its -retry-join
addresses; every hello answers with the servers the callee knows, so knowledge spreads
both ways. Once a server knows `bootstrap_expect` servers it starts Raft with exactly
those as peers. A server that reaches one already running asks the leader to add it
(one membership change at a time) and starts with the leader's voter list. A server
restarted on its data-dir starts at once with the peers it persisted.

Every server keeps its row in the replicated servers table (Raft address -> node name,
node ID, RPC address); the table is how servers and clients name each other. RPC
endpoints: Server.Hello, Server.Join, Server.Remove, Server.List.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from typing import Any

from mesh.catalog.commands import DeregisterRequest, MessageType
from mesh.catalog.errors import InvalidRequest, MeshError
from mesh.catalog.fsm import FSM
from mesh.catalog.structs import ServerInfo

from ..config import AgentConfig
from ..errors import MembershipError, NoLeader
from ..logging import get_logger
from ..metrics import RPC
from ..rpc import Handler, RPCClient, RPCError
from . import rpc_args
from .raft import OnChange, Raft, RaftConfig, RaftFactory
from .raft.adapter import PysyncobjRaft

__all__ = ["Membership"]

log = get_logger("server")


class Membership:
    """This server's place in the cluster: its Raft node, what it knows of the other
    servers, and the calls that change the voter set."""

    def __init__(self, cfg: AgentConfig, node_id: str, fsm: FSM, client: RPCClient,
                 raft_factory: RaftFactory | None = None) -> None:
        self.cfg = cfg
        self.raft_factory: RaftFactory = raft_factory or PysyncobjRaft
        self.node_id = node_id
        self.fsm = fsm
        self.client = client
        self.raft: Raft | None = None
        self.rpc_address = ""
        self.raft_address = ""
        self.left = False
        self.recently_left: dict[str, dict[str, Any]] = {}  # node key -> leave info (shared with nodes.py)
        self._known: dict[str, dict[str, Any]] = {}

    def rpc_methods(self) -> dict[str, Handler]:
        return {
            "Server.Hello": self._rpc_hello,
            "Server.Join": self._rpc_join,
            "Server.Remove": self._rpc_remove,
            "Server.List": self._rpc_server_list,
        }

    # ---- lifecycle --------------------------------------------------------------------
    def create_raft(self, rpc_address: str, raft_port: int, on_change: OnChange) -> Raft:
        advertise = self.cfg.advertise()
        self.rpc_address = rpc_address
        self.raft_address = f"{advertise}:{raft_port}"
        self._known[self.raft_address] = self.hello_info()
        data_dir = None if self.cfg.dev else self.cfg.data_dir
        self.raft = self.raft_factory(
            RaftConfig(
                self_address=self.raft_address,
                bind_host=self.cfg.bind_addr,
                data_dir=data_dir,
                # A server without -encrypt has no peers (config refuses that), so a random
                # per-process key keeps its Raft port closed to everyone.
                password=self.cfg.encrypt or secrets.token_urlsafe(32),
                fsync=self.cfg.raft_fsync,
                fast_elections=self.cfg.dev,
                compaction_min_entries=self.cfg.raft_snapshot_threshold,
                compaction_min_time=self.cfg.raft_snapshot_interval,
            ),
            self.fsm,
            on_change,
        )
        self.raft.check_data_format()
        return self.raft

    def start_raft(self) -> asyncio.Task[None] | None:
        """Start Raft at once when this server can (persisted peers, or a lone server);
        else return the bootstrap task that starts it once the cluster is found."""
        raft = self.raft
        assert raft is not None
        saved = raft.saved_peers()
        if saved is not None:
            log.info("raft_resume", peers=saved)
            raft.start(saved)
            return None
        if self.cfg.bootstrap_expect == 1 and not self.cfg.retry_join:
            raft.start([])
            return None
        return asyncio.get_running_loop().create_task(self._bootstrap(), name="server-bootstrap")

    def hello_info(self) -> dict[str, Any]:
        return {"node": self.cfg.node_name, "id": self.node_id, "rpc": self.rpc_address, "raft": self.raft_address,
                "dc": self.cfg.datacenter, "expect": self.cfg.bootstrap_expect}

    # ---- bootstrap and join -----------------------------------------------------------
    async def _bootstrap(self) -> None:
        assert self.raft is not None
        attempt = 0
        while not self.raft.started:
            for address in self.cfg.retry_join:
                if self.raft.started:
                    return
                RPC.join_attempts.inc()
                try:
                    reply = await self.client.call(address, "Server.Hello", self.hello_info(), timeout=3)
                except RPCError as exc:
                    log.debug("join_attempt_failed", address=address, error=str(exc))
                    continue
                self.learn(reply.get("servers", []))
                if reply.get("running") and not self.raft.started:
                    try:
                        peers = await self.client.call(address, "Server.Join", self.hello_info(), timeout=15)
                    except RPCError as exc:
                        log.warning("join_failed", address=address, error=str(exc))
                        continue
                    log.info("joined_cluster", via=address, peers=peers)
                    self.raft.start(list(peers))
                    return
            if len(self._known) >= max(self.cfg.bootstrap_expect, 1) and self.cfg.bootstrap_expect:
                peers = sorted(self._known)
                log.info("bootstrap_expect_reached", servers=[self._known[p]["node"] for p in peers])
                self.raft.start(peers)
                return
            attempt += 1
            if self.cfg.retry_max and attempt >= self.cfg.retry_max:
                log.error("join_gave_up", attempts=attempt)
                return
            await asyncio.sleep(min(self.cfg.retry_interval, 0.25 * 2 ** min(attempt, 5)) * (0.8 + 0.4 * random.random()))

    def learn(self, servers: list[dict[str, Any]]) -> None:
        """Remember servers another server told us of (same datacenter only)."""
        for info in servers:
            if isinstance(info, dict) and isinstance(info.get("raft"), str):
                if info.get("dc", self.cfg.datacenter) != self.cfg.datacenter:
                    continue
                self._known.setdefault(info["raft"], info)

    async def join(self, address: str) -> None:
        """PUT /v1/agent/join on a server: learn the servers another server knows."""
        try:
            reply = await self.client.call(address, "Server.Hello", self.hello_info(), timeout=3)
        except MeshError as exc:
            raise MeshError(f"failed to join {address}: {exc}") from None
        self.learn(reply.get("servers", []))

    async def _rpc_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        self.learn([args])
        raft = self.raft
        return {
            "servers": list(self._known.values()),
            "running": bool(raft and raft.started),
            "leader": self.leader_rpc_address(),
        }

    async def _rpc_join(self, args: dict[str, Any]) -> list[str]:
        raft = self.require_raft()
        address = args.get("raft")
        if not isinstance(address, str) or ":" not in address:
            raise InvalidRequest("join needs the server's raft address")
        node, server_id, rpc = (rpc_args.string(args, k, "Server.Join") for k in ("node", "id", "rpc"))
        if not raft.is_leader:
            return await self.forward("Server.Join", args)  # type: ignore[no-any-return]
        await raft.add_peer(address)
        await raft.apply(MessageType.SERVER_UPSERT, ServerInfo(address, node, server_id, rpc))
        return raft.voters()

    async def _rpc_remove(self, args: dict[str, Any]) -> bool:
        raft = self.require_raft()
        address = rpc_args.string(args, "raft", "Server.Remove")
        deregister = rpc_args.boolean(args, "deregister", "Server.Remove", default=True)
        if not raft.is_leader:
            return await self.forward("Server.Remove", args)  # type: ignore[no-any-return]
        if address == self.raft_address:
            raise MembershipError("the leader cannot remove itself: transfer leadership first")
        with raft.lock:
            info = self.fsm.store.servers.get(address)
        await raft.remove_peer(address)
        await raft.apply(MessageType.SERVER_REMOVE, address)
        if info is not None and deregister:
            await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=info.node))
        return True

    async def remove_server(self, raft_address: str, deregister: bool) -> None:
        """Take a server out of the Raft configuration, on the leader or through it."""
        await self._rpc_remove({"raft": raft_address, "deregister": deregister})

    async def forward(self, method: str, args: dict[str, Any]) -> Any:
        """Call `method` on the leader (for what only the leader may do)."""
        leader = self.leader_rpc_address()
        if not leader or leader == self.rpc_address:
            raise NoLeader()
        try:
            return await self.client.call(leader, method, args, timeout=15)
        except RPCError as exc:
            raise MeshError(str(exc)) from None

    def require_raft(self) -> Raft:
        """This server's Raft, or NoLeader while it has not joined a cluster."""
        if self.raft is None or not self.raft.started:
            raise NoLeader("this server has not joined a cluster yet")
        return self.raft

    # ---- addresses --------------------------------------------------------------------
    def _row(self, raft_address: str) -> ServerInfo | None:
        assert self.raft is not None
        with self.raft.lock:
            return self.fsm.store.servers.get(raft_address)

    def rpc_address_of(self, raft_address: str) -> str:
        info = self._row(raft_address)
        if info is not None and info.rpc_address:
            return info.rpc_address
        known = self._known.get(raft_address)
        return str(known["rpc"]) if known else raft_address

    def node_of(self, raft_address: str) -> str:
        info = self._row(raft_address)
        if info is not None:
            return info.node
        known = self._known.get(raft_address)
        return str(known["node"]) if known else "(unknown)"

    def id_of(self, raft_address: str) -> str:
        info = self._row(raft_address)
        if info is not None and info.node_id:
            return info.node_id
        known = self._known.get(raft_address)
        return str(known["id"]) if known else raft_address

    def leader_rpc_address(self) -> str:
        if self.raft is None or not self.raft.started:
            return ""
        leader = self.raft.leader
        return self.rpc_address_of(leader) if leader else ""

    def server_rpc_addresses(self) -> list[str]:
        """RPC addresses of the current voters, from the replicated servers table."""
        raft = self.require_raft()
        voters = raft.voters()
        with raft.lock:
            table = self.fsm.store.servers
            return [table[v].rpc_address for v in voters if v in table and table[v].rpc_address]

    def peer_rpc_addresses(self) -> list[str]:
        """/v1/status/peers: every voter by its RPC address (Raft address if unknown)."""
        raft = self.raft
        return [self.rpc_address_of(v) for v in raft.voters()] if raft else []

    async def _rpc_server_list(self, args: dict[str, Any]) -> list[str]:
        raft = self.raft
        if raft is None or not raft.started:
            return [self.rpc_address]
        # a server just restarted may not know its peers' RPC addresses yet (the log is
        # still replaying): name only those it knows, never a Raft address
        known = [self.rpc_address_of(v) for v in raft.voters()]
        return list(dict.fromkeys([self.rpc_address, *(a for a in known if a not in raft.voters())]))

    # ---- the servers table --------------------------------------------------------------
    async def server_table_loop(self) -> None:
        """Keep this server's row (Raft address -> node, RPC address) in the replicated
        servers table; re-checked every 30 s."""
        while True:
            raft = self.raft
            if raft is not None and raft.started and raft.has_leader() and not self.left:
                with raft.lock:
                    row = self.fsm.store.servers.get(self.raft_address)
                want = ServerInfo(self.raft_address, self.cfg.node_name, self.node_id, self.rpc_address)
                if row is None or (row.node, row.node_id, row.rpc_address) != (want.node, want.node_id, want.rpc_address):
                    try:
                        await raft.apply(MessageType.SERVER_UPSERT, want)
                    except MeshError as exc:
                        log.debug("server_table_retry", error=str(exc))
                        await asyncio.sleep(0.5)
                        continue
                await asyncio.sleep(30)
            else:
                await asyncio.sleep(0.2)

    # ---- leave ---------------------------------------------------------------------------
    async def leave(self) -> None:
        """Graceful leave: hand leadership over, leave the Raft configuration, deregister.

        A leader cannot remove itself from the configuration, so it first makes another
        server leader, then asks that one to remove it."""
        raft = self.raft
        self.left = True
        if raft is None or not raft.started:
            return
        if len(raft.voters()) == 1:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        args = {"raft": self.raft_address, "deregister": True}
        while loop.time() < deadline:
            if raft.is_leader:
                moved = await raft.transfer_leadership(timeout=min(5.0, deadline - loop.time()))
                log.info("leadership_transferred" if moved else "leadership_transfer_retry")
                continue
            try:
                await self.forward("Server.Remove", args)
                self.recently_left[self.cfg.node_name.lower()] = {"node": self.cfg.node_name, "role": "server"}
                log.info("left_cluster")
                return
            except (MeshError, MembershipError) as exc:
                log.warning("leave_retry", error=str(exc))
                await asyncio.sleep(0.3)
        raise MeshError("could not leave the cluster within 20s")

