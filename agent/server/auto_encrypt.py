"""`AutoEncrypt.Sign`: a client agent's RPC certificate, signed by the Connect CA.

Consul's auto_encrypt: a client that has only the CA file (to verify servers) sends a
CSR for its agent identity `spiffe://<trust-domain>/agent/client/dc/<dc>/id/<node>`
with its agent token, over a TLS connection that may not carry a certificate yet
(agent/rpc.py lets such a connection call this method only). The token must be allowed
`node:write` on that node, as Consul requires, so with ACLs on an agent cannot get a
certificate in another node's name. Signing shares ConnectCA.Sign's limits
(CSRMaxPerSecond, CSRMaxConcurrent, the CSR size) and serials.

The answer carries every Connect root and the server's own ca_file PEMs (Consul's
ConnectCARoots and ManualCARoots); the private key never leaves the client.
"""

from __future__ import annotations

from typing import Any

from mesh.ca import manager as ca_manager
from mesh.catalog.errors import InvalidRequest

from ..config import AgentConfig
from ..errors import NoLeader
from ..logging import get_logger
from ..rpc import Handler
from . import rpc_args
from .acl import ServerACLs
from .connect_ca import ConnectCA, csr_size_ok
from .membership import Membership

__all__ = ["AutoEncrypt", "NOT_ALLOWED"]

log = get_logger("server")

NOT_ALLOWED = "AutoEncrypt.AllowTLS must be enabled in order to use this endpoint"  # Consul's text


def _read_pems(path: str) -> list[str]:
    """The server's ca_file, as PEM text (the client already has its own copy; Consul
    sends it so a client can tell which CA its servers present)."""
    if not path:
        return []
    try:
        with open(path) as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    marker = "-----END CERTIFICATE-----"
    return [block.strip() + "\n" + marker + "\n" for block in text.split(marker)[:-1]]


class AutoEncrypt:
    def __init__(self, cfg: AgentConfig, membership: Membership, ca: ConnectCA, acls: ServerACLs) -> None:
        self.cfg = cfg
        self.membership = membership
        self.ca = ca
        self.acls = acls
        self._manual = _read_pems(cfg.tls_for("internal_rpc").ca_file) if cfg.auto_encrypt_allow_tls else []

    def rpc_methods(self) -> dict[str, Handler]:
        return {"AutoEncrypt.Sign": self._rpc_sign}

    async def _rpc_sign(self, args: dict[str, Any]) -> dict[str, Any]:
        what = "AutoEncrypt.Sign"
        node, csr = rpc_args.string(args, "node", what), rpc_args.string(args, "csr", what)
        token, dc = rpc_args.string(args, "token", what), rpc_args.string(args, "dc", what)
        csr_size_ok(args, what)
        return await self.sign(csr, node, token, dc)

    async def sign(self, csr: str, node: str, token: str, dc: str) -> dict[str, Any]:
        if not self.cfg.auto_encrypt_allow_tls:
            raise InvalidRequest(NOT_ALLOWED)
        if dc != self.cfg.datacenter:
            raise InvalidRequest(f"mismatched datacenter (client_dc={dc!r} server_dc={self.cfg.datacenter!r}); "
                                 "check the client has the same datacenter set as the servers")
        if not node:
            raise InvalidRequest("AutoEncrypt.Sign: node is required")
        (await self.acls.access(token)).require("node", node, "write")
        raft = self.membership.require_raft()
        with raft.lock:
            state = self.ca.fsm.store.ca
        if not state:
            raise NoLeader("the CA is not initialized yet")
        signed = await self.ca.issue(raft, state, lambda serial, now: ca_manager.sign_agent_csr(
            state, csr, node, self.cfg.datacenter, serial, now, self.cfg.encrypt))
        log.info("auto_encrypt_signed", node=node, serial=signed["SerialNumber"], valid_before=signed["ValidBefore"])
        return {"cert_pem": signed["CertPEM"], "agent_uri": signed["AgentURI"], "serial": signed["SerialNumber"],
                "valid_after": signed["ValidAfter"], "valid_before": signed["ValidBefore"],
                "roots": ca_manager.root_pems(state), "trust_domain": state.get("trust_domain", ""),
                "manual_ca_pems": list(self._manual)}
