"""The server RPC listener's trust under auto_encrypt.allow_tls: ca_file plus every
current Connect root, rebuilt whenever the CA state changes.

Clients' auto_encrypt certificates chain to the Connect roots, which rotate; a root
pruned from the CA state must stop opening the RPC port, and a new one must start
before the first certificate it signs is presented. The listener keeps its socket and
its connections: each new handshake takes the newest context (agent/rpc.py). Waits on
the watch hub's "ca" key, so a rotation is seen at once, with a slow poll as a floor.
"""

from __future__ import annotations

from mesh.ca import manager as ca_manager
from mesh.catalog.fsm import FSM

from ..config import AgentConfig, ConfigError
from ..logging import get_logger
from ..rpc import RPCServer
from ..tls import rpc_server_context
from ..watch import WatchHub
from .membership import Membership

__all__ = ["RPCTrust"]

log = get_logger("server")

_POLL = 30.0


class RPCTrust:
    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, hub: WatchHub, rpc: RPCServer) -> None:
        self.cfg = cfg
        self.membership = membership
        self.fsm = fsm
        self.hub = hub
        self.rpc = rpc
        self.roots: tuple[str, ...] = ()

    def refresh(self) -> bool:
        """Rebuild the listener's context if the set of Connect roots changed; True when
        it did."""
        raft = self.membership.raft
        if raft is None:
            return False
        with raft.lock:
            roots = tuple(ca_manager.root_pems(self.fsm.store.ca or {}))
        if roots == self.roots:
            return False
        try:
            context = rpc_server_context(self.cfg, roots)
        except ConfigError as exc:  # ca/cert/key files changed under us: keep the old trust
            log.warning("rpc_trust_not_refreshed", error=str(exc))
            return False
        self.rpc.set_ssl_context(context)
        self.roots = roots
        log.info("rpc_trust_refreshed", connect_roots=len(roots))
        return True

    async def run(self) -> None:
        while True:
            self.refresh()
            await self.hub.wait(["ca"], _POLL)
