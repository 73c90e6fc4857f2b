"""The composition root: builds an agent's components from its config and runs them.

Start order: Raft and the server RPC listener, then the HTTP API (so the API never
answers before there is state behind it). Stop order (uvicorn's): stop accepting HTTP,
drain with a deadline, then the server role, Raft last.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from typing import Any

from aiohttp import web

from mesh.catalog.errors import MeshError

from .config import AgentConfig
from .http.app import build_app
from .logging import get_logger
from .server import ServerRole
from .watch import WatchHub

__all__ = ["Agent", "StartupError"]

log = get_logger("agent")


class StartupError(MeshError):
    pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


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
    with open(path, "w") as f:
        f.write(node_id)
    return node_id


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        if cfg.data_dir and not cfg.dev:
            try:
                os.makedirs(cfg.data_dir, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"cannot create -data-dir {cfg.data_dir}: {exc.strerror}") from None
        self.node_id = _load_node_id(cfg)
        self.watch = WatchHub()
        self.server = ServerRole(cfg, self.node_id, self.watch.notify)
        self.ports: dict[str, int] = {"http": cfg.http_port, "dns": cfg.dns_port, "server": cfg.server_port,
                                      "raft": cfg.raft_port}
        self._runner: web.AppRunner | None = None
        self.stopped = asyncio.Event()
        self._leaving = False

    async def start(self) -> None:
        cfg = self.cfg
        raft_port = cfg.raft_port or _free_port(cfg.bind_addr)
        try:
            await self.server.start(raft_port)
        except OSError as exc:
            raise StartupError(f"cannot bind the server port {cfg.bind_addr}:{cfg.server_port}: {exc.strerror}") from None
        self.ports["server"] = self.server.rpc.port
        self.ports["raft"] = raft_port
        if cfg.http_port >= 0:
            self._runner = web.AppRunner(build_app(self), access_log=None, shutdown_timeout=2.0)
            await self._runner.setup()
            site = web.TCPSite(self._runner, cfg.client_addr, cfg.http_port, reuse_address=True)
            try:
                await site.start()
            except OSError as exc:
                raise StartupError(f"cannot bind the HTTP port {cfg.client_addr}:{cfg.http_port}: {exc.strerror}") from None
            server = site._server
            assert server is not None
            self.ports["http"] = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("agent_started", node=cfg.node_name, node_id=self.node_id, datacenter=cfg.datacenter,
                 server=cfg.server, dev=cfg.dev, http=f"{cfg.client_addr}:{self.ports['http']}",
                 rpc=self.server.rpc_address, raft=self.server.raft_address)

    async def shutdown(self) -> None:
        raft = self.server.raft
        if raft is not None and raft.is_leader and len(raft.voters()) > 1 and not self._leaving:
            # a planned stop of the leader: hand over first, so writes pause for one
            # round trip instead of an election timeout
            moved = await raft.transfer_leadership(timeout=3.0)
            log.info("leadership_transferred" if moved else "leadership_transfer_failed")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.server.stop()
        log.info("agent_stopped")

    def request_stop(self) -> None:
        self.stopped.set()

    async def leave(self) -> None:
        """Graceful leave (PUT /v1/agent/leave), then the agent shuts down."""
        if self._leaving:
            return
        self._leaving = True
        await self.server.leave()
        asyncio.get_running_loop().call_later(0.2, self.request_stop)

    # ---- helpers the HTTP handlers use -----------------------------------------------
    def check_datacenter(self, dc: str) -> None:
        if dc and dc != self.cfg.datacenter:
            raise MeshError("No path to datacenter")

    def set_read_headers(self, resp: web.StreamResponse, index: int, consistency: str = "") -> None:
        raft = self.server.raft
        if consistency:
            resp.headers["X-Consul-Effective-Consistency"] = consistency
        resp.headers["X-Consul-Index"] = str(max(1, index))
        known = bool(raft and raft.has_leader())
        resp.headers["X-Consul-KnownLeader"] = "true" if known else "false"
        contact = raft.last_contact() if raft else 0.0
        resp.headers["X-Consul-LastContact"] = str(int(contact * 1000)) if contact != float("inf") else "0"

    def self_member(self) -> dict[str, Any]:
        return self._member(self.cfg.node_name, self.server.raft_address, self.server.rpc_address, self.node_id, True)

    def _member(self, name: str, raft_address: str, rpc_address: str, node_id: str, alive: bool) -> dict[str, Any]:
        host, _, raft_port = raft_address.rpartition(":")
        rpc_port = rpc_address.rpartition(":")[2]
        return {
            "Name": name,
            "Addr": host,
            "Port": int(raft_port) if raft_port.isdigit() else 0,
            "Tags": {"role": "consul", "dc": self.cfg.datacenter, "port": rpc_port, "id": node_id, "vsn": "2",
                     "raft_vsn": "3", "build": "mesh", "expect": str(self.cfg.bootstrap_expect)},
            "Status": 1 if alive else 4,
            "ProtocolMin": 1, "ProtocolMax": 5, "ProtocolCur": 2,
            "DelegateMin": 2, "DelegateMax": 5, "DelegateCur": 4,
        }

    def members(self) -> list[dict[str, Any]]:
        raft = self.server.raft
        out = [self.self_member()]
        if raft is None or not raft.started:
            return out
        for voter in raft.voters():
            if voter == self.server.raft_address:
                continue
            out.append(self._member(self.server.node_of(voter), voter, self.server.rpc_address_of(voter),
                                    self.server.id_of(voter), raft.peer_connected(voter)))
        return out
