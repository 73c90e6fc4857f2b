"""The composition root: builds an agent's components from its config and runs them.

Start order: Raft and the server RPC listener (servers), local definitions, the HTTP
API, DNS, the sidecar proxy supervisor (it adopts what a crashed agent left running),
then anti-entropy and heartbeats. Stop order (uvicorn's): drain and stop the sidecar
proxies, stop accepting HTTP, drain with a deadline, stop the loops and check runners,
then the server role, Raft last.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import os
import random
import socket
import uuid
from collections.abc import Callable
from typing import Any

from aiohttp import web

from mesh.catalog.commands import MessageType, encode
from mesh.catalog.connect import may_hold_identity
from mesh.catalog.errors import (
    FatalStateError,
    InvalidRequest,
    MeshError,
    NotFound,
    PermissionDenied,
)
from mesh.catalog.structs import Check, Node, Service
from mesh.dns.answer import AnswerPolicy
from mesh.dns.names import label_problem, name_problem
from mesh.dns.recursor import parse_recursor
from mesh.dns.server import DNSServer

from .acl import REQUEST_TOKEN, AgentACLs
from .auto_encrypt import AutoEncryptClient
from .backend import Backend, LocalBackend, RemoteBackend, ServerOperations, ServerPool
from .central_config import CentralConfigWatch
from .config import AgentConfig, ConfigError, reload_config
from .data_dir import make_private_dir, tighten, write_private
from .dns_view import CatalogDNSView
from .errors import RaftError
from .http.app import build_app
from .http.listener import HTTPServer, ListenerLimits
from .intentions_cache import IntentionCache
from .leaf_cache import LeafCache
from .leaf_files import LeafFiles
from .local import sidecar
from .local.anti_entropy import AntiEntropy
from .local.checks import CheckManager
from .local.definitions import ServiceDefinition, parse_check, parse_service_definition
from .local.loader import parse_config_definitions
from .local.state import LocalState
from .logging import get_logger
from .metrics import AGENT, DNS
from .proxies.plan import Policy
from .proxies.supervisor import ProxySupervisor, SidecarInfo, SupervisorSettings
from .server import RaftFactory, ServerRole
from .tasks import cancel_all
from .tls import https_context, rpc_contexts
from .watch import WatchHub

__all__ = ["Agent", "StartupError"]

log = get_logger("agent")


class StartupError(MeshError):
    pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _probe_bind(host: str, port: int) -> None:
    """Fail now if the Raft port is taken: pysyncobj binds it on its own thread and would
    retry forever, leaving a leaderless agent running instead of exiting with the reason."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pysyncobj binds it
        s.bind((host, port))
        s.listen(1)


def _load_tokens(path: str) -> dict[str, str]:
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in saved.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(saved, dict) else {}


def _with_persisted_tokens(cfg: AgentConfig) -> AgentConfig:
    """Tokens set through the API and persisted (acl.enable_token_persistence) win over
    the config file's."""
    if not (cfg.acl_enable_token_persistence and cfg.data_dir and not cfg.dev):
        return cfg
    saved = _load_tokens(os.path.join(cfg.data_dir, "acl-tokens.json"))
    known = {f.name for f in dataclasses.fields(AgentConfig) if f.name.startswith("acl_") and f.name.endswith("_token")}
    return dataclasses.replace(cfg, **{k: v for k, v in saved.items() if k in known})


def _load_node_id(cfg: AgentConfig) -> str:
    if cfg.node_id:
        try:
            return str(uuid.UUID(cfg.node_id))
        except ValueError:
            raise StartupError(f"-node-id: {cfg.node_id!r} is not a UUID") from None
    if cfg.dev or not cfg.data_dir:
        return str(uuid.uuid4())
    path = os.path.join(cfg.data_dir, "node-id")
    try:
        with open(path) as f:
            return str(uuid.UUID(f.read().strip()))
    except FileNotFoundError:
        pass
    except ValueError:
        raise StartupError(f"{path} does not hold a UUID") from None
    node_id = str(uuid.uuid4())
    write_private(path, node_id.encode())
    return node_id


def _proxy_settings(cfg: AgentConfig) -> SupervisorSettings:
    """Supervision needs the HTTP API (proxies read their configuration from it); with
    -dev or no data-dir the proxies' files go to a temporary directory."""
    return SupervisorSettings(enabled=cfg.supervise_proxies and cfg.http_port >= 0,
                              directory="" if cfg.dev or not cfg.data_dir else os.path.join(cfg.data_dir, "proxies"),
                              policy=Policy(drain_timeout=cfg.proxy_drain_timeout),
                              default_token=cfg.acl_default_token)


def _listen_address(client_addr: str, port: int) -> str:
    """host:port for the start-up log (port -1: that listener is off)."""
    return f"{client_addr}:{port}"


def _loopback_for(client_addr: str, port: int) -> str:
    """host:port a local process reaches the HTTP API at: the -client address, or
    loopback when it is a wildcard."""
    ip = ipaddress.ip_address(client_addr)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


class Agent:
    """One agent process: a server (Raft member) or a client, with local services."""

    def __init__(self, cfg: AgentConfig, raft_factory: RaftFactory | None = None) -> None:
        """`raft_factory`: the server's Raft (default the pysyncobj adapter; one-process
        tests pass the in-memory cluster's)."""
        self.cfg = cfg
        if cfg.data_dir and not cfg.dev:
            try:
                make_private_dir(cfg.data_dir)
            except OSError as exc:
                raise StartupError(f"cannot create -data-dir {cfg.data_dir}: {exc.strerror}") from None
            if not os.path.isdir(cfg.data_dir):
                raise StartupError(f"-data-dir {cfg.data_dir} is not a directory")
            tighten(cfg.data_dir)
        self.node_id = _load_node_id(cfg)
        cfg = self.cfg = _with_persisted_tokens(cfg)
        problem = name_problem(cfg.node_name)
        if problem is not None:  # as in Consul: a warning, the name stays
            log.warning("node_not_discoverable_via_dns", node=cfg.node_name, problem=problem)
        self.watch = WatchHub()
        self.server: ServerRole | None = None
        self.pool: ServerPool | None = None
        self.backend: Backend
        self.server_ops: ServerOperations | None = None  # what only a server answers, on servers
        if cfg.server:
            self.server = ServerRole(cfg, self.node_id, self.watch, raft_factory=raft_factory)
            local = LocalBackend(self.server, cfg.acl_agent_token)
            self.backend, self.server_ops = local, local
        else:
            self.pool = ServerPool(list(cfg.retry_join), cfg.encrypt, ssl_context=rpc_contexts(cfg)[1],
                                   state_file=os.path.join(cfg.data_dir, "servers.json") if cfg.data_dir else None)
            self.backend = RemoteBackend(self.pool, cfg.acl_agent_token)
        self.auto_encrypt = AutoEncryptClient(cfg, self.pool) if self.pool is not None and cfg.auto_encrypt_tls else None
        self.acls = AgentACLs(cfg, self.backend)
        self.ports: dict[str, int] = {"http": cfg.http_port, "https": cfg.https_port, "dns": cfg.dns_port,
                                      "server": cfg.server_port,
                                      "raft": cfg.raft_port}
        self.leaves = LeafCache(self.backend, cfg.datacenter, cfg.node_name, self._owns_service, self._sync_now,
                                files=LeafFiles(None if cfg.dev else cfg.data_dir))
        self._sync_lock = asyncio.Lock()
        self.proxies = ProxySupervisor(_proxy_settings(cfg), self._wanted_proxies)
        self.local = LocalState(self._node_row(), None if cfg.dev else cfg.data_dir, self._local_changed)
        self.checks = CheckManager(self)
        self.ae = AntiEntropy(self.backend, self._ae_view, cfg.ae_interval, service_token=self._service_token)
        self.intentions = IntentionCache(self.backend, cfg.default_intention_policy == "allow")
        self.central = CentralConfigWatch(self.backend, self.local.set_central)
        self.local_changed = asyncio.Event()
        self._http: HTTPServer | None = None
        self.dns: DNSServer | None = None
        self.dns_view: CatalogDNSView
        self._tasks: list[asyncio.Task[None]] = []
        self.stopped = asyncio.Event()
        self._leaving = False
        self._rng = random.Random()

    def _node_row(self) -> Node:
        address = self.cfg.advertise()
        return Node(node=self.cfg.node_name, address=address, id=self.node_id, datacenter=self.cfg.datacenter,
                    tagged_addresses={"lan": address, "lan_ipv4": address, "wan": address, "wan_ipv4": address},
                    meta=self.cfg.node_meta_map())

    def _service_token(self, service_id: str) -> str:
        local = self.local.services.get(service_id)
        return local.token if local is not None else ""

    def _ae_view(self) -> tuple[Node, dict[str, Service], dict[str, Check]]:
        return self.local.node, self.local.service_rows(), self.local.check_rows()

    def _local_changed(self) -> None:
        self.ae.trigger()
        self.leaves.forget_unowned()
        self.proxies.wake()
        self.local_changed.set()
        self.local_changed = asyncio.Event()
        AGENT.services.set(len(self.local.services))
        AGENT.checks.set(len(self.local.checks))

    @property
    def is_server(self) -> bool:
        return self.server is not None

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if self.server is not None:
            raft_port = cfg.raft_port or _free_port(cfg.bind_addr)
            try:
                _probe_bind(cfg.bind_addr, raft_port)
            except OSError as exc:
                raise StartupError(f"cannot bind the Raft port {cfg.bind_addr}:{raft_port}: {exc.strerror}") from None
            try:
                await self.server.start(raft_port)
            except OSError as exc:
                raise StartupError(f"cannot bind the server port {cfg.bind_addr}:{cfg.server_port}: {exc.strerror}") from None
            except (RaftError, FatalStateError) as exc:
                raise StartupError(str(exc)) from None
            self.ports["server"] = self.server.rpc_port
            self.ports["raft"] = raft_port
            consul = Service(id="consul", service="consul", port=self.server.rpc_port)
            self.local.add_service(consul, [], "internal")
        else:
            self.ports["server"] = -1
            self.ports["raft"] = -1
            if self.auto_encrypt is not None and self.pool is not None:  # before anything talks RPC
                self.pool.set_ssl_context(await self.auto_encrypt.bootstrap(), drop_open=True)
                self._tasks.append(loop.create_task(self.auto_encrypt.run(), name="auto-encrypt-renew"))
        self.load_definitions(initial=True)
        await self._start_http()
        if cfg.dns_port >= 0:
            await self._start_dns()
        if self.ports["http"] >= 0:  # last: nothing after it can fail and leave proxies behind
            await self.proxies.start(_loopback_for(cfg.client_addr, self.ports["http"]))
        self._tasks.append(loop.create_task(self.ae.run(), name="anti-entropy"))
        self._tasks.append(loop.create_task(self._heartbeat_loop(), name="heartbeat"))
        self._tasks.append(loop.create_task(self.intentions.run(), name="intentions-cache"))
        self._tasks.append(loop.create_task(self.central.run(), name="central-config"))
        self._tasks.append(loop.create_task(self.leaves.run(), name="ca-roots-watch"))
        if self.pool is not None:
            self._tasks.append(loop.create_task(self._refresh_servers_loop(), name="server-refresh"))
        log.info("agent_started", node=cfg.node_name, node_id=self.node_id, datacenter=cfg.datacenter,
                 server=cfg.server, dev=cfg.dev, http=_listen_address(cfg.client_addr, self.ports["http"]),
                 https=_listen_address(cfg.client_addr, self.ports["https"]),
                 rpc=self.server.rpc_address if self.server else "", raft=self.server.raft_address if self.server else "",
                 services=len(self.local.services))

    async def _start_http(self) -> None:
        """The HTTP and HTTPS listeners (either may be off) of one application."""
        cfg = self.cfg
        tls = https_context(cfg)
        if cfg.http_port < 0 and tls is None:
            return
        self._http = HTTPServer(build_app(self), cfg.http_idle_timeout)
        for name, port, context in (("HTTP", cfg.http_port, None), ("HTTPS", cfg.https_port, tls)):
            if port < 0:
                continue
            limits = ListenerLimits(cfg.http_max_conns_per_client, cfg.http_header_timeout)
            try:
                self.ports[name.lower()] = await self._http.start(cfg.client_addr, port, limits, context,
                                                                  cfg.https_handshake_timeout)
            except OSError as exc:
                raise StartupError(f"cannot bind the {name} port {cfg.client_addr}:{port}: {exc.strerror}") from None
        if cfg.http_port < 0 and cfg.supervise_proxies:
            # the proxies read their configuration from the plain HTTP API
            log.warning("proxy_supervision_off", reason="supervised sidecar proxies need the HTTP port; with "
                        "-http-port -1 (HTTPS only) they are not supported yet: run them yourself")

    async def _start_dns(self) -> None:
        cfg = self.cfg
        self.dns_view = CatalogDNSView(self.backend, cfg.dns_max_stale,
                                       token=cfg.acl_dns_token or cfg.acl_default_token if cfg.acl_enabled else None)
        policy = AnswerPolicy(datacenter=cfg.datacenter, only_passing=cfg.dns_only_passing,
                              enable_truncate=cfg.dns_enable_truncate, node_ttl=int(cfg.dns_node_ttl),
                              service_ttl={k: int(v) for k, v in cfg.dns_service_ttl},
                              udp_answer_limit=cfg.dns_udp_answer_limit, a_record_limit=cfg.dns_a_record_limit,
                              recursion_available=bool(cfg.recursors), udp_max_payload=cfg.dns_udp_max_payload)
        domains = tuple(d for d in (cfg.domain, cfg.alt_domain) if d)

        def on_query(qtype: str, rcode: str, seconds: float) -> None:
            DNS.queries.labels(qtype, rcode).inc()
            DNS.seconds.observe(seconds)

        for recursor in cfg.recursors:
            if cfg.dns_port and parse_recursor(recursor) == (cfg.client_addr, cfg.dns_port):  # checked by config
                raise StartupError(f"-recursor {recursor} is this agent's own DNS listener: queries would loop")
        self.dns = DNSServer(cfg.client_addr, cfg.dns_port, self.dns_view, policy, domains, on_query,
                             recursors=cfg.recursors, recursor_timeout=cfg.recursor_timeout)
        try:
            self.ports["dns"] = await self.dns.start()
        except OSError as exc:
            raise StartupError(f"cannot bind the DNS port {cfg.client_addr}:{cfg.dns_port}: {exc.strerror}") from None
        self._tasks.append(asyncio.get_running_loop().create_task(self._dns_metrics_loop(), name="dns-metrics"))

    async def _sync_now(self) -> None:
        """One anti-entropy pass now; callers arriving during a pass share the next one."""
        async with self._sync_lock:
            await self.ae.sync_once()

    def _wanted_proxies(self) -> dict[str, SidecarInfo]:
        """The sidecar proxies this agent runs: those it registered from a
        `connect { sidecar_service {} }` block. A connect-proxy registered on its own
        (an Envoy the user runs, a proxy with -register) is not the agent's to start."""
        return {sid: SidecarInfo(parent, self.local.services[sid].token)
                for sid, parent in self.local.sidecars().items() if sid in self.local.services}

    def _owns_service(self, name: str) -> bool:
        """Whether a service of that name is registered on this agent, or fronted by a
        connect-proxy registered here (its leaf is signed and renews)."""
        return any(may_hold_identity(local.service, name) for local in self.local.services.values())

    async def _dns_metrics_loop(self) -> None:
        """Cache hits are counted as plain integers on the hot path and published here."""
        published = 0
        while True:
            await asyncio.sleep(5)
            assert self.dns is not None
            DNS.view_age.set(self.dns_view.age())
            DNS.view_names.set(len(self.dns_view._slots))
            hits = self.dns.cache_hits
            DNS.cache_hits.inc(hits - published)
            published = hits

    # ---- definitions (config files and persisted registrations) ----------------------------
    def load_definitions(self, initial: bool = False) -> None:
        """Services and checks from config files (and, at start, those registered
        through the API before a restart). Raises ConfigError naming the field."""
        services, checks = parse_config_definitions(self.cfg.definitions)
        try:
            registrations = sidecar.for_config(services, self.local, self._sidecar_range())
        except InvalidRequest as exc:  # no port left for a sidecar
            raise ConfigError(str(exc)) from None
        self.local.replace_config(registrations, checks)
        if initial:
            persisted = self.local.load_persisted()
            for raw in persisted["services"]:
                try:
                    self.register_service(raw, source="api")
                except MeshError as exc:
                    log.warning("persisted_service_skipped", error=str(exc))
            for raw in persisted["checks"]:
                try:
                    self.register_check(raw, source="api")
                except MeshError as exc:
                    log.warning("persisted_check_skipped", error=str(exc))
            self.local.prune_sidecar_ports()
        self.checks.sync()

    def reload(self) -> None:
        """SIGHUP / `mesh reload`: re-read config files; on a bad file keep running as before."""
        if not self.cfg.config_files:
            self.load_definitions()
            return
        new_cfg = reload_config(self.cfg)
        self.cfg = new_cfg
        self.load_definitions()
        log.info("agent_reloaded", files=list(self.cfg.config_files))

    def _sidecar_range(self) -> tuple[int, int]:
        return self.cfg.sidecar_min_port, self.cfg.sidecar_max_port

    def register_service(self, raw: Any, source: str = "api", replace_checks: bool = False,
                         authorize: Callable[[list[Any]], None] | None = None) -> ServiceDefinition:
        """A service and the sidecar its sidecar_service defines, checked whole before
        either is added; `authorize` sees every registration first (ACLs)."""
        defn = parse_service_definition(raw)
        registrations = sidecar.for_registration(defn, self.local, self._sidecar_range())
        if authorize is not None:
            authorize(list(registrations))
        for reg in registrations:
            for c in reg.checks:
                self.checks.validate(c)
        problem = label_problem(defn.service.service)
        if problem is not None:  # Consul registers it all the same, and warns
            log.warning("service_not_discoverable_via_dns", service=defn.service.service, problem=problem)
        self.local.register(registrations, source, raw if source == "api" else None, replace_checks=replace_checks)
        self.checks.sync()
        return defn

    def register_check(self, raw: Any, source: str = "api", authorize: Callable[[Any], None] | None = None) -> Any:
        defn = parse_check(raw, what="check")
        if authorize is not None:
            authorize(defn)
        if defn.service_id and defn.service_id not in self.local.services:
            raise InvalidRequest(f"ServiceID {defn.service_id!r} does not exist")
        if defn.service_id:
            defn = dataclasses.replace(defn, service_name=self.local.services[defn.service_id].service.service)
        self.checks.validate(defn)
        self.local.add_check(defn, source, raw if source == "api" else None)
        self.checks.sync()
        return defn

    # ---- ACL tokens set at run time (PUT /v1/agent/token/:kind) ---------------------------
    _TOKEN_FIELDS = {"default": "acl_default_token", "agent": "acl_agent_token",
                     "agent_recovery": "acl_agent_recovery_token",
                     "acl_token": "acl_default_token", "acl_agent_token": "acl_agent_token",
                     "acl_agent_master_token": "acl_agent_recovery_token", "agent_master": "acl_agent_recovery_token"}

    def set_token(self, kind: str, token: str) -> None:
        """Replace one of this agent's tokens; with acl.enable_token_persistence it is
        kept in the data-dir (owner-only) and wins over the config file at start, as in
        Consul."""
        field_name = self._TOKEN_FIELDS.get(kind)
        if field_name is None:
            raise NotFound(f"Token {kind!r} is unknown")
        self.cfg = dataclasses.replace(self.cfg, **{field_name: token})
        self.acls = AgentACLs(self.cfg, self.backend)
        if field_name == "acl_agent_token":
            for backend in (self.backend,):
                if isinstance(backend, LocalBackend | RemoteBackend):
                    backend.agent_token = token
        if self.cfg.acl_enable_token_persistence and self.cfg.data_dir and not self.cfg.dev:
            path = os.path.join(self.cfg.data_dir, "acl-tokens.json")
            saved = _load_tokens(path)
            saved[field_name] = token
            write_private(path, json.dumps(saved).encode())
        log.info("acl_token_set", kind=kind)

    # ---- liveness ------------------------------------------------------------------------
    def heartbeat_info(self) -> dict[str, Any]:
        node = self.local.node
        return {"node": node.node, "id": node.id, "address": node.address, "tagged": node.tagged_addresses,
                "meta": node.meta, "role": "server" if self.is_server else "client"}

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                suggested = await self.backend.heartbeat(self.heartbeat_info())
                AGENT.heartbeats.labels("ok").inc()
                # the leader stretches the interval in large clusters; jitter spreads agents out
                delay = max(self.cfg.heartbeat_interval, suggested) * (0.9 + 0.2 * self._rng.random())
            except MeshError as exc:
                AGENT.heartbeats.labels("failed").inc()
                log.debug("heartbeat_failed", error=str(exc))
                delay = min(0.2, self.cfg.heartbeat_interval)  # e.g. no leader yet: try again soon
            await asyncio.sleep(delay)

    async def _refresh_servers_loop(self) -> None:
        assert self.pool is not None
        while True:
            await self.pool.refresh()
            await asyncio.sleep(30 if self.pool.healthy else 2)

    # ---- lifecycle -------------------------------------------------------------------------
    async def shutdown(self) -> None:
        server = self.server
        if server is not None and not self._leaving:
            # a planned stop of the leader: hand over first, so writes pause for one
            # round trip instead of an election timeout
            moved = await server.transfer_leadership(timeout=3.0)
            if moved is not None:
                log.info("leadership_transferred" if moved else "leadership_transfer_failed")
        await self.proxies.stop()  # drained while the API they watch is still up
        if self._http is not None:
            await self._http.stop()
            self._http = None
        await cancel_all(self._tasks)
        await self.checks.stop()
        if self.dns is not None:
            await self.dns.stop()
            await self.dns_view.stop()
        if server is not None:
            await server.stop()
        if self.pool is not None:
            await self.pool.close()
        log.info("agent_stopped")

    def request_stop(self) -> None:
        self.stopped.set()

    async def leave(self) -> None:
        """Graceful leave (PUT /v1/agent/leave), then the agent shuts down."""
        if self._leaving:
            return
        self._leaving = True
        # stop telling the servers we are here before saying goodbye
        for task in self._tasks:
            if task.get_name() in ("heartbeat", "anti-entropy"):
                task.cancel()
        if self.server is not None:
            await self.server.leave()
        else:
            await self.backend.leave(self.heartbeat_info())
        asyncio.get_running_loop().call_later(0.2, self.request_stop)

    # ---- helpers the HTTP handlers use -------------------------------------------------------
    def check_datacenter(self, dc: str) -> None:
        if dc and dc != self.cfg.datacenter:
            raise MeshError("No path to datacenter")

    async def apply(self, msg_type: MessageType, body: Any) -> Any:
        """Commit a catalog command through whichever backend this agent has, with the
        current HTTP request's token (the agent's own token outside a request)."""
        raw = encode(msg_type, body, uuid.uuid4().bytes)
        result = await self.backend.apply(raw, REQUEST_TOKEN.get())
        if isinstance(result, dict) and "Error" in result:
            if result.get("Forbidden"):
                raise PermissionDenied(str(result["Error"]))
            if result.get("NotFound"):
                raise NotFound(str(result["Error"]))
            if result.get("Server"):  # Consul answers these with a 500 (e.g. "invalid session")
                raise MeshError(str(result["Error"]))
            raise InvalidRequest(str(result["Error"]))
        return result

    def set_read_headers(self, resp: web.StreamResponse, index: int, consistency: str = "",
                         known_leader: bool | None = None, last_contact_ms: int | None = None) -> None:
        if consistency:
            resp.headers["X-Consul-Effective-Consistency"] = consistency
        resp.headers["X-Consul-Index"] = str(max(1, index))
        if known_leader is None or last_contact_ms is None:
            known_leader, last_contact_ms = self.server.leader_contact() if self.server else (False, 0)
        resp.headers["X-Consul-KnownLeader"] = "true" if known_leader else "false"
        resp.headers["X-Consul-LastContact"] = str(last_contact_ms)

    def self_member(self) -> dict[str, Any]:
        if self.server is not None:
            return self._member(self.cfg.node_name, self.server.raft_address, self.server.rpc_address, self.node_id,
                                "alive", "server")
        return self._member(self.cfg.node_name, f"{self.cfg.advertise()}:0", "", self.node_id, "alive", "client")

    def _member(self, name: str, raft_address: str, rpc_address: str, node_id: str, status: str,
                role: str) -> dict[str, Any]:
        host, _, raft_port = raft_address.rpartition(":")
        rpc_port = rpc_address.rpartition(":")[2]
        tags = {"role": "consul" if role == "server" else "node", "dc": self.cfg.datacenter, "id": node_id,
                "vsn": "2", "build": "mesh"}
        if role == "server":
            tags.update({"port": rpc_port, "raft_vsn": "3", "expect": str(self.cfg.bootstrap_expect)})
        return {
            "Name": name,
            "Addr": host,
            "Port": int(raft_port) if raft_port.isdigit() else 0,
            "Tags": tags,
            "Status": {"alive": 1, "leaving": 2, "left": 3, "failed": 4}.get(status, 0),
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        }

    async def join(self, address: str) -> None:
        """PUT /v1/agent/join/:address: learn servers from another agent's server port."""
        if ":" not in address:
            address = f"{address}:8300"
        if self.pool is not None:
            self.pool.add(address)
            await self.pool.refresh()
            return
        assert self.server is not None
        await self.server.join(address)

    async def status_leader(self) -> str:
        return await self.backend.status_leader()

    async def status_peers(self) -> list[str]:
        return await self.backend.status_peers()

    async def raft_configuration(self, token: str | None = None) -> dict[str, Any]:
        return await self.backend.raft_configuration(token)

    async def members(self) -> list[dict[str, Any]]:
        """Every agent the servers know, from the catalog's serfHealth and the leader's
        memory of recent leaves; only this agent when no server answers."""
        try:
            found = await self.backend.members()
        except MeshError:
            return [self.self_member()]
        out = []
        for m in found:
            address = m["raft"] if m.get("raft") else f"{m['address']}:0"
            out.append(self._member(m["node"], address, m.get("rpc", ""), m.get("id", ""), m["status"], m["role"]))
        if not any(m["Name"] == self.cfg.node_name for m in out):
            out.insert(0, self.self_member())
        return out
