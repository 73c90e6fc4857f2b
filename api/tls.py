"""TLS for talking to an agent's HTTPS API: the options a program resolved (api.config)
turned into an ssl.SSLContext, and the CA loading the agent's own listeners share.

Consul's `ca_path`/`CONSUL_CAPATH` is a directory whose PEM files are all trusted (not
OpenSSL's hashed-name layout), so the files are read and handed over as one bundle.
Anything unusable (an unreadable file, a certificate without its key) is a ConfigError
with one line, raised before any request is made.
"""

from __future__ import annotations

import os
import ssl

from .config import ConfigError, TLSOptions

__all__ = ["TLSOptions", "load_ca", "client_context"]

_CA_FILE_LIMIT = 16 << 20  # a CA bundle of this size is a mistake, not a bundle


def _ca_bundle(ca_path: str) -> str:
    try:
        names = sorted(os.listdir(ca_path))
    except OSError as exc:
        raise ConfigError(f"cannot read CA path {ca_path}: {exc.strerror or exc}") from None
    pems = []
    for name in names:
        full = os.path.join(ca_path, name)
        if not os.path.isfile(full):
            continue
        try:
            with open(full, "rb") as f:
                data = f.read(_CA_FILE_LIMIT + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read CA file {full}: {exc.strerror or exc}") from None
        if b"-----BEGIN CERTIFICATE-----" in data and len(data) <= _CA_FILE_LIMIT:
            pems.append(data.decode("ascii", "replace"))
    if not pems:
        raise ConfigError(f"CA path {ca_path} holds no PEM certificate")
    return "\n".join(pems)


def load_ca(ctx: ssl.SSLContext, ca_file: str, ca_path: str) -> None:
    """Trust the certificates of `ca_file` and of every PEM file in `ca_path`."""
    try:
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        if ca_path:
            ctx.load_verify_locations(cadata=_ca_bundle(ca_path))
    except FileNotFoundError:
        raise ConfigError(f"cannot read CA file {ca_file}: no such file") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"cannot load CA {ca_file or ca_path}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0]


def client_context(options: TLSOptions) -> ssl.SSLContext:
    """A context for HTTPS to an agent: TLS 1.2 at least, the system's CAs unless a CA
    is given, hostname checked (against -tls-server-name when set) unless `verify` is
    off, and the client certificate when one is given."""
    if bool(options.client_cert) != bool(options.client_key):
        raise ConfigError("a client certificate needs its key: give both -client-cert and -client-key "
                          "(CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY)")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if options.ca_file or options.ca_path:
        load_ca(ctx, options.ca_file, options.ca_path)
    if not options.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.client_cert:
        try:
            ctx.load_cert_chain(options.client_cert, options.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client certificate {options.client_cert}: {_reason(exc)}") from None
    return ctx
