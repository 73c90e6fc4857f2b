"""TLS for the server RPC port, from the ssl module (certificates come from files).

With -ca-file, -cert-file and -key-file every agent-to-server connection is mutual
TLS: a server accepts only clients whose certificate the CA signed, and a client
accepts only such a server. Hostnames are not checked (agents dial IP addresses);
the CA is the trust boundary, as with Consul's verify_incoming/verify_outgoing.
"""

from __future__ import annotations

import ssl

from .config import AgentConfig, ConfigError

__all__ = ["rpc_contexts"]


def rpc_contexts(cfg: AgentConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server context, client context), or (None, None) without TLS configured."""
    if not (cfg.ca_file or cfg.cert_file or cfg.key_file):
        return None, None
    if not (cfg.ca_file and cfg.cert_file and cfg.key_file):
        raise ConfigError("TLS needs all of -ca-file, -cert-file and -key-file")
    try:
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.ca_file)
        server.load_cert_chain(cfg.cert_file, cfg.key_file)
        server.verify_mode = ssl.CERT_REQUIRED
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_REQUIRED
        client.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None
    return server, client
