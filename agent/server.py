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
import datetime
import json
import random
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

from mesh.ca import manager as ca_manager
from mesh.catalog.commands import DeregisterRequest, MessageType, RegisterRequest, decode
from mesh.catalog.errors import InvalidRequest, MeshError, RateLimited
from mesh.catalog.fsm import FSM, SERIALS_PER_ENTRY
from mesh.catalog.structs import CRITICAL, PASSING, Node, ServerInfo, Service

from . import liveness, reconcile, rpc_args
from .config import AgentConfig
from .csr_limit import CSRLimiter
from .errors import MembershipError, NoLeader
from .logging import get_logger
from .metrics import CA, LEADER, RPC
from .queries import QUERIES
from .raft import Raft, RaftConfig
from .rpc import RPCClient, RPCError, RPCServer
from .tasks import cancel_all
from .tls import rpc_contexts
from .watch import WatchHub

__all__ = ["ServerRole", "ReadOptions", "ReadResult", "CLIENT_WRITABLE"]

log = get_logger("server")

READ_CACHE_SIZE = 64
# the commands an agent may send through Catalog.Apply
CLIENT_WRITABLE = {MessageType.REGISTER, MessageType.DEREGISTER, MessageType.BARRIER,
                   MessageType.INTENTION_UPSERT, MessageType.INTENTION_DELETE}


@dataclass(frozen=True)
class ReadOptions:
    min_index: int = 0
    wait: float = 300.0
    stale: bool = False
    consistent: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"i": self.min_index, "w": self.wait, "s": self.stale, "c": self.consistent}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ReadOptions:
        return cls(int(d.get("i", 0)), float(d.get("w", 300.0)), bool(d.get("s")), bool(d.get("c")))


@dataclass(frozen=True)
class ReadResult:
    index: int
    value: Any
    known_leader: bool
    last_contact_ms: int


class ServerRole:
    def __init__(self, cfg: AgentConfig, node_id: str, hub: WatchHub) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.hub = hub
        self.fsm = FSM()
        server_tls, client_tls = rpc_contexts(cfg)
        self.rpc = RPCServer(cfg.bind_addr, cfg.server_port, cfg.encrypt, server_tls,
                             handshake_timeout=cfg.rpc_handshake_timeout,
                             max_conns_per_client=cfg.rpc_max_conns_per_client)
        self.client = RPCClient(cfg.encrypt, ssl_context=client_tls)
        self.raft: Raft | None = None
        self._on_change = hub.notify
        self._last_seen: dict[str, float] = {}
        self._failed_since: dict[str, float] = {}
        self._registering: set[str] = set()
        self._csr_limiter = CSRLimiter()
        self._ca_task: asyncio.Task[None] | None = None
        self._ca_last_error: tuple[str, float] = ("", 0.0)
        self.recently_left: dict[str, dict[str, Any]] = {}
        self._read_cache: OrderedDict[tuple[str, str], tuple[Any, int, Any]] = OrderedDict()
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
            ("Server.List", self._rpc_server_list),
            ("Read", self._rpc_read),
            ("Catalog.Apply", self._rpc_apply),
            ("Node.Heartbeat", self._rpc_heartbeat),
            ("Node.Leave", self._rpc_node_leave),
            ("Internal.Members", self._rpc_members),
            ("Status.Leader", self._rpc_status_leader),
            ("Operator.Raft", self._rpc_operator_raft),
            ("ConnectCA.Sign", self._rpc_ca_sign),
            ("ConnectCA.Configure", self._rpc_ca_configure),
        ):
            self.rpc.register(method, handler)

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self, raft_port: int) -> None:
        rpc_port = await self.rpc.start()
        advertise = self.cfg.advertise()
        self.rpc_address = f"{advertise}:{rpc_port}"
        self.raft_address = f"{advertise}:{raft_port}"
        self._known[self.raft_address] = self.hello_info()
        data_dir = None if self.cfg.dev else self.cfg.data_dir
        self.raft = Raft(
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
            self._on_change,
        )
        self.raft.check_data_format()
        loop = asyncio.get_running_loop()
        saved = self.raft.saved_peers()
        if saved is not None:
            log.info("raft_resume", peers=saved)
            self.raft.start(saved)
        elif self.cfg.bootstrap_expect == 1 and not self.cfg.retry_join:
            self.raft.start([])
        else:
            self._tasks.append(loop.create_task(self._bootstrap(), name="server-bootstrap"))
        self._tasks.append(loop.create_task(self._server_table_loop(), name="server-table"))
        self._tasks.append(loop.create_task(self._leader_loop(), name="leader-duties"))

    async def stop(self) -> None:
        await cancel_all(self._tasks + ([self._ca_task] if self._ca_task is not None else []))
        await self.rpc.stop()
        await self.client.close()
        if self.raft is not None:
            await self.raft.stop()

    def hello_info(self) -> dict[str, Any]:
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
        for info in servers:
            if isinstance(info, dict) and isinstance(info.get("raft"), str):
                if info.get("dc", self.cfg.datacenter) != self.cfg.datacenter:
                    continue
                self._known.setdefault(info["raft"], info)

    async def _rpc_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        self.learn([args])
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
            raise InvalidRequest("join needs the server's raft address")
        node, server_id, rpc = (rpc_args.string(args, k, "Server.Join") for k in ("node", "id", "rpc"))
        if not raft.is_leader:
            return await self._forward("Server.Join", args)  # type: ignore[no-any-return]
        await raft.add_peer(address)
        await raft.apply(MessageType.SERVER_UPSERT, ServerInfo(address, node, server_id, rpc))
        return raft.voters()

    async def _rpc_remove(self, args: dict[str, Any]) -> bool:
        raft = self._require_raft()
        address = rpc_args.string(args, "raft", "Server.Remove")
        deregister = rpc_args.boolean(args, "deregister", "Server.Remove", default=True)
        if not raft.is_leader:
            return await self._forward("Server.Remove", args)  # type: ignore[no-any-return]
        if address == self.raft_address:
            raise MembershipError("the leader cannot remove itself: transfer leadership first")
        with raft.lock:
            info = self.fsm.store.servers.get(address)
        await raft.remove_peer(address)
        await raft.apply(MessageType.SERVER_REMOVE, address)
        if info is not None and deregister:
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

    # ---- the servers table -------------------------------------------------------------
    async def _server_table_loop(self) -> None:
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

    # ---- reads ----------------------------------------------------------------------------
    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions) -> ReadResult:
        """A named query against this server's state, blocking per `opts`."""
        q = QUERIES.get(name)
        if q is None:
            raise InvalidRequest(f"unknown query {name!r}")
        raft = self._require_raft()
        if opts.consistent:
            await raft.barrier()
        elif not opts.stale:
            if not raft.has_leader():
                raise NoLeader()
            if not raft.is_leader and not raft.caught_up():
                return await self._read_on_leader(name, params, opts)
        keys = q.keys(params)
        cache_key = (name, json.dumps(params, sort_keys=True, default=str))

        def once() -> tuple[int, Any]:
            # Watchers of one query wake together on a change; the first recomputes,
            # the rest reuse its answer while nothing new has been applied.
            with raft.lock:
                version = (id(self.fsm.store), self.fsm.last_index)
                hit = self._read_cache.get(cache_key)
                if hit is not None and hit[0] == version:
                    self._read_cache.move_to_end(cache_key)
                    return hit[1], hit[2]
                index, value = q.run(self.fsm.store, params)
            cache = self._read_cache
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
            deadline = loop.time() + opts.wait + random.random() * opts.wait / 16
            while index <= opts.min_index:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self.hub.wait(keys, remaining)
                index, value = once()
        contact = raft.last_contact()
        return ReadResult(index, value, raft.has_leader(), int(contact * 1000) if contact != float("inf") else 0)

    async def _read_on_leader(self, name: str, params: dict[str, Any], opts: ReadOptions) -> ReadResult:
        """A default read this follower cannot serve within the lease: the leader's answer."""
        leader = self.leader_rpc_address()
        if not leader or leader == self.rpc_address:
            raise NoLeader()
        wait = opts.wait + opts.wait / 16 + 5 if opts.min_index else 10
        try:
            reply = await self.client.call(leader, "Read", {"q": name, "p": params, "o": opts.to_wire()}, timeout=wait)
        except RPCError as exc:
            if exc.kind == "invalid":
                raise InvalidRequest(str(exc)) from None
            raise NoLeader(f"No cluster leader (the leader did not answer: {exc})") from None
        LEADER.reads_forwarded.inc()
        return ReadResult(int(reply["i"]), reply["r"], bool(reply["kl"]), int(reply["lc"]))

    async def _rpc_read(self, args: dict[str, Any]) -> dict[str, Any]:
        name = rpc_args.string(args, "q", "Read")
        params, opts = rpc_args.read_params(args), ReadOptions.from_wire(rpc_args.read_options(args))
        opts = replace(opts, wait=min(opts.wait, self.cfg.max_query_time))
        try:
            result = await self.read(name, params, opts)
        except KeyError as exc:
            raise InvalidRequest(f"Read {name}: missing parameter {exc}") from None
        return {"i": result.index, "r": result.value, "kl": result.known_leader, "lc": result.last_contact_ms}

    async def _rpc_server_list(self, args: dict[str, Any]) -> list[str]:
        raft = self.raft
        if raft is None or not raft.started:
            return [self.rpc_address]
        # a server just restarted may not know its peers' RPC addresses yet (the log is
        # still replaying): name only those it knows, never a Raft address
        known = [self.rpc_address_of(v) for v in raft.voters()]
        return list(dict.fromkeys([self.rpc_address, *(a for a in known if a not in raft.voters())]))

    # ---- writes from agents -------------------------------------------------------------------
    async def apply_raw(self, raw: bytes) -> Any:
        raft = self._require_raft()
        try:
            cmd = decode(raw)
        except (MeshError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequest(f"Catalog.Apply: undecodable command ({type(exc).__name__})") from None
        if cmd.type not in CLIENT_WRITABLE:
            raise InvalidRequest(f"command type {cmd.type} may not be sent by an agent")
        return await raft.apply_raw(raw)

    async def _rpc_apply(self, args: dict[str, Any]) -> Any:
        raw = args.get("raw")
        if not isinstance(raw, bytes):
            raise InvalidRequest("Catalog.Apply needs the encoded command")
        return await self.apply_raw(raw)

    # ---- liveness (the leader's duty) -----------------------------------------------------------
    def heartbeat_interval(self) -> float:
        """How often each agent should heartbeat: every second in small clusters, less
        often in large ones so the leader handles at most HEARTBEAT_BUDGET per second,
        and always a third of the liveness timeout at most."""
        nodes = len(self._last_seen)
        return max(self.cfg.heartbeat_interval,
                   min(nodes / liveness.HEARTBEAT_BUDGET, self.cfg.liveness_timeout / 3))

    async def heartbeat(self, info: dict[str, Any]) -> float:
        """A node is alive: remember it (on the leader) and make its serfHealth passing.
        Returns the interval the agent should use for its next heartbeat."""
        raft = self._require_raft()
        if not raft.is_leader:
            forwarded = {k: v for k, v in info.items() if k != "v"}  # the leader answers with a plain interval
            return float(await self._forward("Node.Heartbeat", forwarded) or self.cfg.heartbeat_interval)
        name = str(info.get("node", ""))
        if not name:
            raise InvalidRequest("heartbeat without a node name")
        key = name.lower()
        left = self.recently_left.get(key)
        if left is not None and time.time() - float(left.get("left_at", 0)) < 5:
            return self.heartbeat_interval()  # a heartbeat that overtook the node's own leave
        self._last_seen[key] = time.monotonic()
        self._failed_since.pop(key, None)
        self.recently_left.pop(key, None)
        with raft.lock:
            store = self.fsm.store
            node = store.node(name)
            serf = store.node_checks(name).get(liveness.SERF_CHECK_ID)
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
                checks=(liveness.serf_check(PASSING),),
                skip_node_update=node is not None,
            )
            result = await raft.apply(MessageType.REGISTER, req)
            if isinstance(result, dict) and "Error" in result:
                raise InvalidRequest(str(result["Error"]))
        finally:
            self._registering.discard(key)
        return self.heartbeat_interval()

    async def _rpc_heartbeat(self, args: dict[str, Any]) -> Any:
        for key in ("node", "address", "id"):
            rpc_args.string(args, key, "Node.Heartbeat")
        rpc_args.str_map(args, "tagged", "Node.Heartbeat")
        rpc_args.str_map(args, "meta", "Node.Heartbeat")
        interval = await self.heartbeat(args)
        if args.get("v") == 2:  # clients learn the current server set with every heartbeat
            return {"interval": interval, "servers": self.server_rpc_addresses()}
        return interval

    def server_rpc_addresses(self) -> list[str]:
        """RPC addresses of the current voters, from the replicated servers table."""
        raft = self._require_raft()
        voters = raft.voters()
        with raft.lock:
            table = self.fsm.store.servers
            return [table[v].rpc_address for v in voters if v in table and table[v].rpc_address]


    async def _ensure_ca(self, raft: Raft) -> None:
        """On first leadership: the cluster's trust domain and first root, through Raft."""
        with raft.lock:
            initialized = bool(self.fsm.store.ca)
        if initialized:
            return
        serial = await raft.apply(MessageType.CA_SERIAL)
        now = datetime.datetime.now(datetime.UTC)
        state = await asyncio.to_thread(ca_manager.initial_state, now, self.cfg.encrypt, int(serial),
                                        dict(self.cfg.ca_config) or None)
        result = await raft.apply(MessageType.CA_SET, state)
        if result is True:
            log.info("ca_initialized", trust_domain=state["trust_domain"], root=state["active_root_id"])

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        """ConnectCA.Sign: a leaf for a service registered on the requesting node."""
        raft = self._require_raft()
        service, node, csr = str(args.get("service", "")), str(args.get("node", "")), str(args.get("csr", ""))
        with raft.lock:
            store = self.fsm.store
            state = store.ca
            owned = any(s.service.lower() == service.lower() for s in store.node_services(node).values())
        if not owned:
            CA.sign_errors.inc()
            raise InvalidRequest(f"service {service!r} is not registered on node {node!r}: cannot sign its identity")
        started = time.perf_counter()
        config = state.get("config", {}) if state else {}
        try:
            self._csr_limiter.acquire(time.monotonic(), float(config.get("CSRMaxPerSecond") or 0),
                                      int(config.get("CSRMaxConcurrent") or 0))
        except RateLimited:
            CA.sign_rate_limited.inc()
            raise
        try:
            serial = await raft.apply(MessageType.CA_SERIAL)
            now = datetime.datetime.now(datetime.UTC)
            signed = await asyncio.to_thread(ca_manager.sign_csr, state, csr, service, self.cfg.datacenter,
                                             int(serial), now, self.cfg.encrypt)
        except MeshError:
            CA.sign_errors.inc()
            raise
        finally:
            self._csr_limiter.release()
        CA.sign_seconds.observe(time.perf_counter() - started)
        index = int(serial) // SERIALS_PER_ENTRY  # the Raft entry that recorded the serial
        return dict(signed, CreateIndex=index, ModifyIndex=index)

    async def _rpc_ca_sign(self, args: dict[str, Any]) -> dict[str, Any]:
        for key in ("service", "node", "csr"):
            rpc_args.string(args, key, "ConnectCA.Sign")
        return await self.sign(args)

    async def ca_configure(self, body: Any) -> bool:
        """PUT /v1/connect/ca/configuration. A new key type, size or root lifetime
        rotates the root (cross-signed by the old one); other changes apply as they are.
        Bad input changes nothing."""
        raft = self._require_raft()
        config = ca_manager.validate_config(body)
        with raft.lock:
            state = self.fsm.store.ca
        if not state:
            raise NoLeader("the CA is not initialized yet")
        old = state["config"]
        if any(config[k] != old.get(k) for k in ("PrivateKeyType", "PrivateKeyBits", "RootCertTTL")) or \
                bool(body.get("ForceRotation")):
            await self._ca_rotate(raft, state, config, "configuration changed",
                                  without_cross_signing=bool(body.get("ForceWithoutCrossSigning")))
        else:
            await self._ca_commit(raft, state, ca_manager.reconfigure(state, config))
        return True

    async def _ca_rotate(self, raft: Raft, state: dict[str, Any], config: dict[str, Any], reason: str,
                         without_cross_signing: bool = False) -> None:
        serial = await raft.apply(MessageType.CA_SERIAL)
        now = datetime.datetime.now(datetime.UTC)
        new_state = await asyncio.to_thread(ca_manager.rotate, state, config, now, self.cfg.encrypt, int(serial),
                                            without_cross_signing)
        await self._ca_commit(raft, state, new_state)
        CA.rotations.inc()
        log.info("ca_root_rotated", old=state["active_root_id"], new=new_state["active_root_id"], reason=reason)

    @staticmethod
    async def _ca_commit(raft: Raft, based_on: dict[str, Any], new_state: dict[str, Any]) -> None:
        """CA_SET, refused by the FSM if another change landed since `based_on` was read
        (a configuration change racing the leader's own rotation or pruning)."""
        result = await raft.apply(MessageType.CA_SET, dict(new_state, cas_index=based_on.get("index", 0)))
        if result is not True:
            raise InvalidRequest(str(result.get("Error") if isinstance(result, dict) else result))

    async def _ca_maintenance(self, raft: Raft) -> None:
        """The leader's CA duties each second: create the CA once, rotate the root well
        before it expires, prune rotated-out roots once no leaf of theirs can be valid."""
        await self._ensure_ca(raft)
        with raft.lock:
            state = self.fsm.store.ca
        now = datetime.datetime.now(datetime.UTC)
        reason = ca_manager.rotation_due(state, now)
        if reason:
            await self._ca_rotate(raft, state, state["config"], reason)
            return
        pruned = ca_manager.prune(state, now)
        if pruned is not None:
            await self._ca_commit(raft, state, pruned)
            log.info("ca_roots_pruned", removed=sorted({r["ID"] for r in state["roots"]} - {r["ID"] for r in pruned["roots"]}))

    async def _ca_maintenance_logged(self, raft: Raft) -> None:
        """Runs each second while something fails: the metric counts every failure, the
        log says a repeated one once a minute."""
        try:
            await self._ca_maintenance(raft)
        except MeshError as exc:
            LEADER.ca_errors.inc()
            now = time.monotonic()
            if str(exc) != self._ca_last_error[0] or now - self._ca_last_error[1] >= 60:
                log.warning("ca_maintenance_failed", error=str(exc))
                self._ca_last_error = (str(exc), now)

    async def _rpc_ca_configure(self, args: dict[str, Any]) -> bool:
        return await self.ca_configure(args.get("body"))

    async def _leader_loop(self) -> None:
        """Liveness, reaping and server reconciliation, on the leader only; runs once a
        second, and at once when the servers table changes (a server that joins is in
        the catalog within a second)."""
        was_leader = False
        while True:
            await self.hub.wait(("servers",), 1.0)
            LEADER.liveness_runs.inc()
            raft = self.raft
            if raft is None or not raft.started or not raft.is_leader or not raft.lease_valid():
                was_leader = False
                continue
            if self._ca_task is None or self._ca_task.done():
                # its own task: generating a key (RSA 4096 takes seconds) must not hold
                # up the liveness decisions below
                self._ca_task = asyncio.get_running_loop().create_task(self._ca_maintenance_logged(raft))
            now = time.monotonic()
            with raft.lock:
                store = self.fsm.store
                if not was_leader:
                    # a new leader knows no heartbeats yet: everyone starts alive
                    self._last_seen = {k: now for k in store.checks if liveness.SERF_CHECK_ID in store.checks[k]}
                    self._failed_since = {}
                was_leader = True
                self._last_seen[self.cfg.node_name.lower()] = now
                for key in liveness.unheard_nodes(store, self._last_seen):
                    self._last_seen[key] = now  # never heard from: one timeout from now
                changes = liveness.liveness_plan(store, self._last_seen, now, self.cfg.liveness_timeout,
                                                 always_alive=self.cfg.node_name)
                unregistered = reconcile.servers_to_register(store, raft.voters())
            for info in unregistered:
                await self._register_server(raft, info)
            for node, status in changes:
                if status == CRITICAL:
                    self._failed_since.setdefault(node.lower(), now)
                    LEADER.nodes_failed.inc()
                    log.warning("node_failed", node=node)
                else:
                    self._failed_since.pop(node.lower(), None)
                    log.info("node_alive", node=node)
                req = RegisterRequest(node=Node(node=node, address=""), checks=(liveness.serf_check(status),),
                                      skip_node_update=True)
                try:
                    await raft.apply(MessageType.REGISTER, req)
                except MeshError as exc:
                    log.warning("liveness_update_failed", node=node, error=str(exc))
            with raft.lock:
                reaped = liveness.reap_plan(self.fsm.store, self._failed_since, now, self.cfg.reconnect_timeout)
            for node in reaped:
                log.info("node_reaped", node=node)
                try:
                    await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=node))
                    self._failed_since.pop(node.lower(), None)
                    self._last_seen.pop(node.lower(), None)
                except MeshError as exc:
                    log.warning("reap_failed", node=node, error=str(exc))

    async def _register_server(self, raft: Raft, info: ServerInfo) -> None:
        """A server's node, its `consul` service and serfHealth, written by the leader
        (the server's own agent adds its node details when it syncs)."""
        host, port = reconcile.split_address(info.rpc_address)
        with raft.lock:
            known = self.fsm.store.node(info.node) is not None
        req = RegisterRequest(
            node=Node(node=info.node, address=host, id=info.node_id, datacenter=self.cfg.datacenter),
            service=Service(id=reconcile.CONSUL_SERVICE, service=reconcile.CONSUL_SERVICE, port=port),
            checks=(liveness.serf_check(PASSING),), skip_node_update=known,
        )
        try:
            await raft.apply(MessageType.REGISTER, req)
            log.info("server_reconciled", node=info.node)
        except MeshError as exc:
            log.warning("server_reconcile_failed", node=info.node, error=str(exc))

    async def node_leave(self, info: dict[str, Any]) -> None:
        """A client agent leaves gracefully: deregister its node at once."""
        raft = self._require_raft()
        if not raft.is_leader:
            await self._forward("Node.Leave", info)
            return
        name = str(info.get("node", ""))
        if not name:
            raise InvalidRequest("leave without a node name")
        self._last_seen.pop(name.lower(), None)
        self._failed_since.pop(name.lower(), None)
        self.recently_left[name.lower()] = dict(info, left_at=time.time())
        await raft.apply(MessageType.DEREGISTER, DeregisterRequest(node=name))

    async def _rpc_node_leave(self, args: dict[str, Any]) -> bool:
        for key in ("node", "address", "id", "role"):
            rpc_args.string(args, key, "Node.Leave")
        await self.node_leave(args)
        return True

    async def members(self) -> list[dict[str, Any]]:
        """Every node with its serfHealth: alive, failed, or left (the leader's memory)."""
        raft = self._require_raft()
        if not raft.is_leader and self.leader_rpc_address():
            try:
                return list(await self.client.call(self.leader_rpc_address(), "Internal.Members", {}, timeout=5))
            except RPCError:
                pass
        out = []
        with raft.lock:
            store = self.fsm.store
            servers = {s.node.lower(): s for s in store.servers.values()}
            for key in sorted(store.nodes):
                node = store.nodes[key]
                serf = store.checks.get(key, {}).get(liveness.SERF_CHECK_ID)
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

    def raft_configuration(self) -> dict[str, Any]:
        raft = self._require_raft()
        leader = raft.leader
        servers = [
            {"ID": self.id_of(v), "Node": self.node_of(v), "Address": self.rpc_address_of(v), "Leader": v == leader,
             "ProtocolVersion": "3", "Voter": True, "RaftAddress": v}
            for v in raft.voters()
        ]
        return {"Servers": servers, "Index": raft.commit_index}

    async def _rpc_status_leader(self, args: dict[str, Any]) -> str:
        return self.leader_rpc_address()

    async def _rpc_operator_raft(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.raft_configuration()

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
                self.recently_left[self.cfg.node_name.lower()] = {"node": self.cfg.node_name, "role": "server"}
                log.info("left_cluster")
                return
            except (MeshError, MembershipError) as exc:
                log.warning("leave_retry", error=str(exc))
                await asyncio.sleep(0.3)
        raise MeshError("could not leave the cluster within 20s")
