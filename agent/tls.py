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
"""

from __future__ import annotations

import ssl

from mesh.api.config import ConfigError as APIConfigError
from mesh.api.tls import load_ca

from .config import AgentConfig, ConfigError
from .tls_settings import TLSSettings

__all__ = ["rpc_contexts", "https_context"]


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
    if not (settings.has_ca and settings.cert_file and settings.key_file):
        raise ConfigError("TLS needs all of -ca-file, -cert-file and -key-file")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = settings.min_version
    server.verify_mode = ssl.CERT_REQUIRED
    _load(server, settings, "tls.internal_rpc")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = settings.min_version
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    _load(client, settings, "tls.internal_rpc")
    return server, client


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
