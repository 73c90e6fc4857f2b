"""Node liveness endpoints and the leader's memory of heartbeats.

`Node.Heartbeat` (every agent, every few seconds), `Node.Leave` (a client's graceful
leave) and `Internal.Members` (every node with its serfHealth). The leader remembers
when it last heard from each node (`last_seen`) and since when each has been failed
(`failed_since`); the leader's liveness duty (leader.py) reads and resets them. That
memory is the leader's alone: a follower forwards heartbeats and leaves to the leader.
"""

from __future__ import annotations

from typing import Any

from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fsm import FSM
from mesh.catalog.health import SERF_CHECK_ID, serf_check
from mesh.catalog.structs import PASSING, Node

from ..config import AgentConfig
from ..rpc import Handler, RPCError
from . import rpc_args
from .acl import ServerACLs
from .clock import Clock
from .liveness import HEARTBEAT_BUDGET
from .membership import Membership

__all__ = ["NodeLiveness"]


class NodeLiveness:
    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, clock: Clock, acls: ServerACLs) -> None:
        self.cfg = cfg
        self.acls = acls
        self.membership = membership
        self.fsm = fsm
        self.clock = clock
        self.last_seen: dict[str, float] = {}  # node key -> monotonic time of its last heartbeat
        self.failed_since: dict[str, float] = {}  # node key -> monotonic time it was failed
        self._registering: set[str] = set()

    @property
    def recently_left(self) -> dict[str, dict[str, Any]]:
        return self.membership.recently_left

    def rpc_methods(self) -> dict[str, Handler]:
        return {"Node.Heartbeat": self._rpc_heartbeat, "Node.Leave": self._rpc_node_leave,
                "Internal.Members": self._rpc_members}

    def forget(self, key: str) -> None:
        self.last_seen.pop(key, None)
        self.failed_since.pop(key, None)

    # ---- heartbeats --------------------------------------------------------------------
    def heartbeat_interval(self) -> float:
        """How often each agent should heartbeat: every second in small clusters, less
        often in large ones so the leader handles at most HEARTBEAT_BUDGET per second,
        and always a third of the liveness timeout at most."""
        nodes = len(self.last_seen)
        return max(self.cfg.heartbeat_interval,
                   min(nodes / HEARTBEAT_BUDGET, self.cfg.liveness_timeout / 3))

    async def heartbeat(self, info: dict[str, Any]) -> float:
        """A node is alive: remember it (on the leader) and make its serfHealth passing.
        Returns the interval the agent should use for its next heartbeat."""
        raft = self.membership.require_raft()
        # an agent keeps its own node alive with its agent token (node:write)
        (await self.acls.access(info.get("token"))).require("node", str(info.get("node", "")), "write")
        if not raft.is_leader:
            forwarded = {k: v for k, v in info.items() if k != "v"}  # the leader answers with a plain interval
            return float(await self.membership.forward("Node.Heartbeat", forwarded) or self.cfg.heartbeat_interval)
        name = str(info.get("node", ""))
        if not name:
            raise InvalidRequest("heartbeat without a node name")
        key = name.lower()
        left = self.recently_left.get(key)
        if left is not None and self.clock.time() - float(left.get("left_at", 0)) < 5:
            return self.heartbeat_interval()  # a heartbeat that overtook the node's own leave
        self.last_seen[key] = self.clock.monotonic()
        self.failed_since.pop(key, None)
        self.recently_left.pop(key, None)
        with raft.lock:
            store = self.fsm.store
            node = store.node(name)
            serf = store.node_checks(name).get(SERF_CHECK_ID)
        if node is not None and serf is not None and serf.status == PASSING:
            return self.heartbeat_interval()
        if key in self._registering:
            return self.heartbeat_interval()
        self._registering.add(key)
        try:
            req = RegisterRequest(
                node=Node(node=name, address=str(info.get("address", "")), id=str(info.get("id", "")),
                          datacenter=self.cfg.datacenter, tagged_addresses=dict(info.get("tagged") or {}),
                          meta=dict(info.get("meta") or {})),
                checks=(serf_check(PASSING),),
                skip_node_update=node is not None,
            )
            result = await raft.apply(MessageType.REGISTER, req)
            if isinstance(result, dict) and "Error" in result:
                raise InvalidRequest(str(result["Error"]))
        finally:
            self._registering.discard(key)
        return self.heartbeat_interval()

    async def _rpc_heartbeat(self, args: dict[str, Any]) -> Any:
        for key in ("node", "address", "id", "token"):
            rpc_args.string(args, key, "Node.Heartbeat")
        rpc_args.str_map(args, "tagged", "Node.Heartbeat")
        rpc_args.str_map(args, "meta", "Node.Heartbeat")
        interval = await self.heartbeat(args)
        if args.get("v") == 2:  # clients learn the current server set with every heartbeat
            return {"interval": interval, "servers": self.membership.server_rpc_addresses()}
        return interval

    # ---- leaves and members -----------------------------------------------------------
    async def node_leave(self, info: dict[str, Any]) -> None:
        """A client agent leaves gracefully: deregister its node at once."""
        raft = self.membership.require_raft()
        (await self.acls.access(info.get("token"))).require("node", str(info.get("node", "")), "write")
        if not raft.is_leader:
            await self.membership.forward("Node.Leave", info)
            return
        name = str(info.get("node", ""))
        if not name:
            raise InvalidRequest("leave without a node name")
        self.forget(name.lower())
        self.recently_left[name.lower()] = dict(info, left_at=self.clock.time())
        await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=name))

    async def _rpc_node_leave(self, args: dict[str, Any]) -> bool:
        for key in ("node", "address", "id", "role", "token"):
            rpc_args.string(args, key, "Node.Leave")
        await self.node_leave(args)
        return True

    async def members(self) -> list[dict[str, Any]]:
        """Every node with its serfHealth: alive, failed, or left (the leader's memory)."""
        raft = self.membership.require_raft()
        leader = self.membership.leader_rpc_address()
        if not raft.is_leader and leader:
            try:
                return list(await self.membership.client.call(leader, "Internal.Members", {}, timeout=5))
            except RPCError:
                pass
        out = []
        with raft.lock:
            store = self.fsm.store
            servers = {s.node.lower(): s for s in store.servers.values()}
            for key in sorted(store.nodes):
                node = store.nodes[key]
                serf = store.checks.get(key, {}).get(SERF_CHECK_ID)
                if serf is None:
                    continue  # registered through the catalog API, not an agent
                server = servers.get(key)
                out.append({
                    "node": node.node, "address": node.address, "id": node.id,
                    "status": "alive" if serf.status == PASSING else "failed",
                    "role": "server" if server else "client",
                    "rpc": server.rpc_address if server else "", "raft": server.raft_address if server else "",
                    "dc": node.datacenter,
                })
        for key, info in sorted(self.recently_left.items()):
            if not any(m["node"].lower() == key for m in out):
                out.append({"node": info.get("node", key), "address": info.get("address", ""), "id": info.get("id", ""),
                            "status": "left", "role": info.get("role", "client"), "rpc": "", "raft": "",
                            "dc": self.cfg.datacenter})
        return out

    async def _rpc_members(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return await self.members()
