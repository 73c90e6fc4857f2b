"""TLS for the server RPC port and the HTTPS API, from the ssl module (certificates
come from files named by `tls { defaults {} https {} internal_rpc {} }`).

RPC: with a CA, a certificate and a key (for `internal_rpc`, or in `defaults`) every
agent-to-server connection is mutual TLS: a server accepts only clients whose
certificate the CA signed, and a client accepts only such a server. Hostnames are not
checked (agents dial IP addresses); the CA is the trust boundary, as with Consul's
verify_incoming/verify_outgoing.

HTTPS: the certificate and key of `https` (or `defaults`); with `verify_incoming` a
client must present a certificate the CA (ca_file or ca_path) signed, as in Consul.
Both are TLS 1.2 at least, or `tls_min_version`.

auto_encrypt (agent/auto_encrypt.py): a server with `allow_tls` also trusts the Connect
roots for client certificates and lets a client without one in, for AutoEncrypt.Sign
only (agent/rpc.py enforces that per connection); a client with `tls` dials with the
CA alone until the servers have signed its certificate, then with that certificate.
Servers are always verified against ca_file: a Connect certificate never passes for one.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from mesh.api.config import ConfigError as APIConfigError
from mesh.api.tls import load_ca
from mesh.ca.tls import load_pem_chain
from mesh.catalog.errors import InvalidRequest

from .config import AgentConfig, ConfigError
from .tls_settings import TLSSettings

__all__ = ["rpc_contexts", "https_context", "rpc_server_context", "auto_encrypt_client_context"]


def _load(ctx: ssl.SSLContext, settings: TLSSettings, what: str) -> None:
    try:
        if settings.has_ca:
            load_ca(ctx, settings.ca_file, settings.ca_path)
        if settings.cert_file:
            ctx.load_cert_chain(settings.cert_file, settings.key_file)
    except APIConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS files: {exc}") from None


def rpc_contexts(cfg: AgentConfig) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """(server context, client context), or (None, None) without TLS configured."""
    settings = cfg.tls_for("internal_rpc")
    if not (settings.has_ca or settings.cert_file or settings.key_file):
        return None, None
    if cfg.auto_encrypt_tls:  # no certificate yet: the servers sign one (agent.auto_encrypt)
        return None, auto_encrypt_client_context(cfg)
    if not (settings.has_ca and settings.cert_file and settings.key_file):
        raise ConfigError("TLS needs all of -ca-file, -cert-file and -key-file")
    server = rpc_server_context(cfg)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = settings.min_version
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    _load(client, settings, "tls.internal_rpc")
    return server, client


def rpc_server_context(cfg: AgentConfig, connect_roots: Sequence[str] = ()) -> ssl.SSLContext:
    """The server RPC listener's context. With auto_encrypt.allow_tls a client
    certificate is optional at the TLS layer (the RPC layer lets a connection without
    one call AutoEncrypt.Sign only) and may chain to ca_file or to a Connect root."""
    settings = cfg.tls_for("internal_rpc")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = settings.min_version
    server.verify_mode = ssl.CERT_OPTIONAL if cfg.auto_encrypt_allow_tls else ssl.CERT_REQUIRED
    _load(server, settings, "tls.internal_rpc")
    if cfg.auto_encrypt_allow_tls and connect_roots:
        try:
            server.load_verify_locations(cadata="".join(r if r.endswith("\n") else r + "\n" for r in connect_roots))
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot trust the Connect roots: {exc}") from None
    return server


def auto_encrypt_client_context(cfg: AgentConfig, cert_pem: str = "", key_pem: str = "") -> ssl.SSLContext:
    """A client's RPC context under auto_encrypt.tls: servers verified against ca_file;
    the certificate the servers signed (held in memory) once there is one."""
    settings = cfg.tls_for("internal_rpc")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = settings.min_version
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    _load(client, settings, "tls.internal_rpc")
    if cert_pem:
        try:
            load_pem_chain(client, cert_pem, key_pem)
        except InvalidRequest as exc:
            raise ConfigError(f"auto_encrypt: {exc}") from None
    return client


def https_context(cfg: AgentConfig) -> ssl.SSLContext | None:
    """The HTTPS listener's context, None when `ports.https` is off. agent.config has
    already refused an HTTPS port without a certificate and key."""
    if cfg.https_port < 0:
        return None
    settings = cfg.tls_for("https")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = settings.min_version
    if settings.verify_incoming:
        ctx.verify_mode = ssl.CERT_REQUIRED
    _load(ctx, settings, "tls.https")
    return ctx
