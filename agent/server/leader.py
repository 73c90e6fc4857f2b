"""The leader's duties: node liveness and reaping, server reconciliation, CA upkeep.

Run once a second on the leader only, and at once when the servers table changes (a
server that joins is in the catalog within a second). A server that is not the leader,
or a leader without a valid lease, does nothing. Decisions are the pure plans of
liveness.py and reconcile.py over the store; this module applies them through Raft
with times from the injected clock, so a test drives `run_once` by hand. The CA duty
runs as its own task: generating a key (RSA 4096 takes seconds) must not hold up the
liveness decisions.
"""

from __future__ import annotations

import asyncio
import uuid

from mesh.catalog.acl_state import MANAGEMENT_POLICY_ID, ACLWrite
from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest
from mesh.catalog.errors import MeshError
from mesh.catalog.fsm import FSM
from mesh.catalog.health import SERF_CHECK_ID, serf_check
from mesh.catalog.structs import CRITICAL, PASSING, Node, ServerInfo, Service

from ..config import AgentConfig
from ..logging import get_logger
from ..metrics import LEADER
from ..tasks import cancel_all
from ..watch import WatchHub
from . import liveness, reconcile
from .clock import Clock
from .connect_ca import ConnectCA
from .membership import Membership
from .nodes import NodeLiveness
from .raft import Raft

__all__ = ["LeaderDuties"]

log = get_logger("server")


class LeaderDuties:
    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, hub: WatchHub, nodes: NodeLiveness,
                 ca: ConnectCA, clock: Clock) -> None:
        self.cfg = cfg
        self.membership = membership
        self.fsm = fsm
        self.hub = hub
        self.nodes = nodes
        self.ca = ca
        self.clock = clock
        self._was_leader = False
        self._ca_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """The loop: every second, or at once when the servers table changes."""
        while True:
            await self.hub.wait(("servers",), 1.0)
            await self.run_once()

    async def stop(self) -> None:
        if self._ca_task is not None:
            await cancel_all([self._ca_task])

    async def run_once(self) -> None:
        """One round of the duties, if this server is the leader with a valid lease."""
        LEADER.liveness_runs.inc()
        raft = self.membership.raft
        if raft is None or not raft.started or not raft.is_leader or not raft.lease_valid():
            self._was_leader = False
            return
        if self._ca_task is None or self._ca_task.done():
            self._ca_task = asyncio.get_running_loop().create_task(self.ca.maintain_logged(raft))
        nodes = self.nodes
        now = self.clock.monotonic()
        with raft.lock:
            store = self.fsm.store
            if not self._was_leader:
                # a new leader knows no heartbeats yet: everyone starts alive
                nodes.last_seen = {k: now for k in store.checks if SERF_CHECK_ID in store.checks[k]}
                nodes.failed_since = {}
            self._was_leader = True
            nodes.last_seen[self.cfg.node_name.lower()] = now
            for key in liveness.unheard_nodes(store, nodes.last_seen):
                nodes.last_seen[key] = now  # never heard from: one timeout from now
            changes = liveness.liveness_plan(store, nodes.last_seen, now, self.cfg.liveness_timeout,
                                             always_alive=self.cfg.node_name)
            unregistered = reconcile.servers_to_register(store, raft.voters())
        for info in unregistered:
            await self._register_server(raft, info)
        await self._initial_management(raft)
        for node, status in changes:
            if status == CRITICAL:
                nodes.failed_since.setdefault(node.lower(), now)
                LEADER.nodes_failed.inc()
                log.warning("node_failed", node=node)
            else:
                nodes.failed_since.pop(node.lower(), None)
                log.info("node_alive", node=node)
            req = RegisterRequest(node=Node(node=node, address=""), checks=(serf_check(status),),
                                  skip_node_update=True)
            try:
                await raft.apply(MessageType.REGISTER, req)
            except MeshError as exc:
                log.warning("liveness_update_failed", node=node, error=str(exc))
        with raft.lock:
            reaped = liveness.reap_plan(self.fsm.store, nodes.failed_since, now, self.cfg.reconnect_timeout)
        for node in reaped:
            log.info("node_reaped", node=node)
            try:
                await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=node))
                nodes.forget(node.lower())
            except MeshError as exc:
                log.warning("reap_failed", node=node, error=str(exc))

    async def _initial_management(self, raft: Raft) -> None:
        """acl.tokens.initial_management: the leader creates that management token
        once, as Consul's does, which also spends the one bootstrap."""
        secret = self.cfg.acl_initial_management_token
        if not (self.cfg.acl_enabled and secret):
            return
        with raft.lock:
            table = self.fsm.store.acl
            if table.token_by_secret(secret) is not None:
                return
            bootstrapped = bool(table.bootstrap_index)
        body = {"accessor_id": str(uuid.uuid4()), "secret_id": secret, "description": "Initial Management Token"}
        if bootstrapped:
            body.update(policies=[[MANAGEMENT_POLICY_ID, ""]], roles=[], service_identities=[], node_identities=[],
                        local=False, expiration_ttl=0.0, expiration_time=0.0)
        try:
            result = await raft.apply(MessageType.ACL, ACLWrite("token-create" if bootstrapped else "bootstrap", body,
                                                                self.clock.time()))
            if isinstance(result, dict) and "Error" in result:
                log.warning("acl_initial_management_failed", error=str(result["Error"]))
            else:
                log.info("acl_initial_management_created")
        except MeshError as exc:
            log.warning("acl_initial_management_failed", error=str(exc))

    async def _register_server(self, raft: Raft, info: ServerInfo) -> None:
        """A server's node, its `consul` service and serfHealth, written by the leader
        (the server's own agent adds its node details when it syncs)."""
        host, port = reconcile.split_address(info.rpc_address)
        with raft.lock:
            known = self.fsm.store.node(info.node) is not None
        req = RegisterRequest(
            node=Node(node=info.node, address=host, id=info.node_id, datacenter=self.cfg.datacenter),
            service=Service(id=reconcile.CONSUL_SERVICE, service=reconcile.CONSUL_SERVICE, port=port),
            checks=(serf_check(PASSING),), skip_node_update=known,
        )
        try:
            await raft.apply(MessageType.REGISTER, req)
            log.info("server_reconciled", node=info.node)
        except MeshError as exc:
            log.warning("server_reconcile_failed", node=info.node, error=str(exc))
