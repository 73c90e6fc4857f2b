"""The server role: Raft membership (bootstrap, join, leave) and the server RPC endpoints.

Bootstrap, as Consul's -bootstrap-expect: a new server says hello to its -retry-join
addresses; every hello answers with the servers the callee knows, so knowledge spreads
both ways. Once a server knows `bootstrap_expect` servers it starts Raft with exactly
those as peers. A server that reaches one already running asks the leader to add it
(one membership change at a time) and starts with the leader's voter list. A server
restarted on its data-dir starts at once with the peers it persisted.

Every server registers itself in the catalog (node, the `consul` service on the server
port, a passing `serfHealth` check) and in the servers table that maps Raft addresses
to RPC addresses and node names.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest
from mesh.catalog.errors import MeshError
from mesh.catalog.fsm import FSM
from mesh.catalog.structs import PASSING, Check, Node, ServerInfo, Service

from .config import AgentConfig
from .logging import get_logger
from .metrics import RPC
from .raft import MembershipError, NoLeader, Raft, RaftConfig
from .rpc import RPCClient, RPCError, RPCServer

__all__ = ["ServerRole", "SERF_CHECK_ID"]

log = get_logger("server")

SERF_CHECK_ID = "serfHealth"


class ServerRole:
    def __init__(self, cfg: AgentConfig, node_id: str, on_change: Any) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.fsm = FSM()
        self.rpc = RPCServer(cfg.bind_addr, cfg.server_port, cfg.encrypt)
        self.client = RPCClient(cfg.encrypt)
        self.raft: Raft | None = None
        self._on_change = on_change
        self._known: dict[str, dict[str, Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.rpc_address = ""
        self.raft_address = ""
        self.left = False
        for method, handler in (
            ("Server.Hello", self._rpc_hello),
            ("Server.Join", self._rpc_join),
            ("Server.Remove", self._rpc_remove),
            ("Status.Ping", self._rpc_ping),
        ):
            self.rpc.register(method, handler)

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self, raft_port: int) -> None:
        rpc_port = await self.rpc.start()
        advertise = self.cfg.advertise()
        self.rpc_address = f"{advertise}:{rpc_port}"
        self.raft_address = f"{advertise}:{raft_port}"
        self._known[self.raft_address] = self._self_info()
        data_dir = None if self.cfg.dev else self.cfg.data_dir
        self.raft = Raft(
            RaftConfig(
                self_address=self.raft_address,
                bind_host=self.cfg.bind_addr,
                data_dir=data_dir,
                password=self.cfg.encrypt or None,
                fsync=self.cfg.raft_fsync,
                fast_elections=self.cfg.dev,
                compaction_min_entries=self.cfg.raft_snapshot_threshold,
                compaction_min_time=self.cfg.raft_snapshot_interval,
            ),
            self.fsm,
            self._on_change,
        )
        loop = asyncio.get_running_loop()
        saved = self.raft.saved_peers()
        if saved is not None:
            log.info("raft_resume", peers=saved)
            self.raft.start(saved)
        elif self.cfg.bootstrap_expect == 1 and not self.cfg.retry_join:
            self.raft.start([])
        else:
            self._tasks.append(loop.create_task(self._bootstrap(), name="server-bootstrap"))
        self._tasks.append(loop.create_task(self._register_self_loop(), name="server-register"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: PERF203 - shutting down
                pass
        await self.rpc.stop()
        await self.client.close()
        if self.raft is not None:
            await self.raft.stop()

    def _self_info(self) -> dict[str, Any]:
        return {"node": self.cfg.node_name, "id": self.node_id, "rpc": self.rpc_address, "raft": self.raft_address,
                "dc": self.cfg.datacenter, "expect": self.cfg.bootstrap_expect}

    # ---- bootstrap and join ---------------------------------------------------------------
    async def _bootstrap(self) -> None:
        assert self.raft is not None
        attempt = 0
        while not self.raft.started:
            for address in self.cfg.retry_join:
                if self.raft.started:
                    return
                RPC.join_attempts.inc()
                try:
                    reply = await self.client.call(address, "Server.Hello", self._self_info(), timeout=3)
                except RPCError as exc:
                    log.debug("join_attempt_failed", address=address, error=str(exc))
                    continue
                self._learn(reply.get("servers", []))
                if reply.get("running") and not self.raft.started:
                    try:
                        peers = await self.client.call(address, "Server.Join", self._self_info(), timeout=15)
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

    def _learn(self, servers: list[dict[str, Any]]) -> None:
        for info in servers:
            if isinstance(info, dict) and isinstance(info.get("raft"), str):
                if info.get("dc", self.cfg.datacenter) != self.cfg.datacenter:
                    continue
                self._known.setdefault(info["raft"], info)

    async def _rpc_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        self._learn([args])
        raft = self.raft
        return {
            "servers": list(self._known.values()),
            "running": bool(raft and raft.started),
            "leader": self.leader_rpc_address(),
        }

    async def _rpc_ping(self, args: dict[str, Any]) -> bool:
        return True

    async def _rpc_join(self, args: dict[str, Any]) -> list[str]:
        raft = self._require_raft()
        address = args.get("raft")
        if not isinstance(address, str) or ":" not in address:
            raise MeshError("join needs the server's raft address")
        if not raft.is_leader:
            return await self._forward("Server.Join", args)  # type: ignore[no-any-return]
        await raft.add_peer(address)
        await raft.apply(MessageType.SERVER_UPSERT, ServerInfo(address, str(args.get("node", "")),
                                                               str(args.get("id", "")), str(args.get("rpc", ""))))
        return raft.voters()

    async def _rpc_remove(self, args: dict[str, Any]) -> bool:
        raft = self._require_raft()
        if not raft.is_leader:
            return await self._forward("Server.Remove", args)  # type: ignore[no-any-return]
        address = str(args.get("raft", ""))
        if address == self.raft_address:
            raise MembershipError("the leader cannot remove itself: transfer leadership first")
        with raft.lock:
            info = self.fsm.store.servers.get(address)
        await raft.remove_peer(address)
        await raft.apply(MessageType.SERVER_REMOVE, address)
        if info is not None and args.get("deregister", True):
            await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=info.node))
        return True

    async def _forward(self, method: str, args: dict[str, Any]) -> Any:
        leader = self.leader_rpc_address()
        if not leader or leader == self.rpc_address:
            raise NoLeader()
        try:
            return await self.client.call(leader, method, args, timeout=15)
        except RPCError as exc:
            raise MeshError(str(exc)) from None

    def _require_raft(self) -> Raft:
        if self.raft is None or not self.raft.started:
            raise NoLeader("this server has not joined a cluster yet")
        return self.raft

    # ---- addresses -------------------------------------------------------------------
    def rpc_address_of(self, raft_address: str) -> str:
        assert self.raft is not None
        with self.raft.lock:
            info = self.fsm.store.servers.get(raft_address)
        if info is not None and info.rpc_address:
            return info.rpc_address
        known = self._known.get(raft_address)
        return str(known["rpc"]) if known else raft_address

    def node_of(self, raft_address: str) -> str:
        assert self.raft is not None
        with self.raft.lock:
            info = self.fsm.store.servers.get(raft_address)
        if info is not None:
            return info.node
        known = self._known.get(raft_address)
        return str(known["node"]) if known else "(unknown)"

    def id_of(self, raft_address: str) -> str:
        assert self.raft is not None
        with self.raft.lock:
            info = self.fsm.store.servers.get(raft_address)
        if info is not None and info.node_id:
            return info.node_id
        known = self._known.get(raft_address)
        return str(known["id"]) if known else raft_address

    def leader_rpc_address(self) -> str:
        if self.raft is None or not self.raft.started:
            return ""
        leader = self.raft.leader
        return self.rpc_address_of(leader) if leader else ""

    # ---- self-registration ---------------------------------------------------------------
    def registration(self) -> RegisterRequest:
        cfg = self.cfg
        address = cfg.advertise()
        port = int(self.rpc_address.rsplit(":", 1)[1])
        node = Node(
            node=cfg.node_name, address=address, id=self.node_id, datacenter=cfg.datacenter,
            tagged_addresses={"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address},
        )
        service = Service(id="consul", service="consul", port=port, address="")
        serf = Check(check_id=SERF_CHECK_ID, name="Serf Health Status", status=PASSING,
                     output="Agent alive and reachable")
        return RegisterRequest(node=node, service=service, checks=(serf,))

    def _registered(self) -> bool:
        assert self.raft is not None
        want = self.registration()
        with self.raft.lock:
            store = self.fsm.store
            node = store.node(want.node.node)
            info = store.servers.get(self.raft_address)
            svc = store.node_services(want.node.node).get("consul")
            serf = store.node_checks(want.node.node).get(SERF_CHECK_ID)
        return bool(
            node and node.id == want.node.id and node.address == want.node.address and info
            and info.rpc_address == self.rpc_address and svc and svc.port == want.service.port  # type: ignore[union-attr]
            and serf and serf.status == PASSING
        )

    async def _register_self_loop(self) -> None:
        """Keep this server's own catalog entries true: register once a leader is known,
        and re-assert every 30 s (a user may deregister them through the catalog)."""
        while True:
            raft = self.raft
            if raft is not None and raft.started and raft.has_leader() and not self.left:
                if not self._registered():
                    try:
                        await raft.apply(MessageType.SERVER_UPSERT, ServerInfo(
                            self.raft_address, self.cfg.node_name, self.node_id, self.rpc_address))
                        await raft.apply(MessageType.REGISTER, self.registration())
                        log.info("server_registered", node=self.cfg.node_name)
                    except MeshError as exc:
                        log.debug("server_register_retry", error=str(exc))
                        await asyncio.sleep(0.5)
                        continue
                await asyncio.sleep(30 if self._registered() else 0.5)
            else:
                await asyncio.sleep(0.2)

    # ---- leave -------------------------------------------------------------------------
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
                await self._forward("Server.Remove", args)
                log.info("left_cluster")
                return
            except (MeshError, MembershipError) as exc:
                log.warning("leave_retry", error=str(exc))
                await asyncio.sleep(0.3)
        raise MeshError("could not leave the cluster within 20s")
