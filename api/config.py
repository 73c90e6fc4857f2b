"""Where a program finds its agent and token: flags first, then the environment.

The one place that reads `CONSUL_HTTP_*`/`MESH_HTTP_*`, so the client itself takes its
address and token as arguments (a library that reads the environment in a constructor
surprises every caller that passed something else, py-consul's issue #192). The CLI
and the sidecar proxy both call `resolve`, with the same precedence as Consul after its
fix for hashicorp/consul#14466:

    address: -http-addr, MESH_HTTP_ADDR, CONSUL_HTTP_ADDR, 127.0.0.1:8500
    token:   -token, -token-file, MESH_HTTP_TOKEN, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE

An address may carry `http://` or `https://`; a token file is read whole and stripped.
TLS (`resolve_tls`), each flag first, then MESH_<NAME>, then CONSUL_<NAME>:

    -ca-file CONSUL_CACERT, -ca-path CONSUL_CAPATH, -client-cert CONSUL_CLIENT_CERT,
    -client-key CONSUL_CLIENT_KEY, -tls-server-name CONSUL_TLS_SERVER_NAME,
    CONSUL_HTTP_SSL (true: https:// for an address without a scheme),
    CONSUL_HTTP_SSL_VERIFY (false: the agent's certificate is not checked)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_ADDRESS", "ConfigError", "TLSOptions", "resolve", "resolve_address", "resolve_token",
           "resolve_tls"]

DEFAULT_ADDRESS = "127.0.0.1:8500"
_TOKEN_FILE_LIMIT = 64 * 1024  # a token is 36 characters; anything this long is a mistake


class ConfigError(ValueError):
    """The flags or environment name something unusable (an unreadable token file, a
    unix:// address): the caller's input, reported before any request is made."""


@dataclass(frozen=True)
class TLSOptions:
    """Consul's client TLS settings; `verify` False is CONSUL_HTTP_SSL_VERIFY=false.
    api.tls.client_context turns them into an ssl.SSLContext."""

    ca_file: str = ""
    ca_path: str = ""
    client_cert: str = ""
    client_key: str = ""
    server_name: str = ""
    verify: bool = True


_GO_BOOLS = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}


def _env(env: Mapping[str, str], name: str) -> str:
    return env.get(f"MESH_{name}") or env.get(f"CONSUL_{name}") or ""


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _env(env, name)
    if not raw:
        return default
    if raw.strip().lower() not in _GO_BOOLS:
        raise ConfigError(f"CONSUL_{name}: {raw!r} is not a boolean (true or false)")
    return _GO_BOOLS[raw.strip().lower()]


def resolve_address(flag: str | None, env: Mapping[str, str]) -> str:
    """The agent's address as given (scheme optional; https:// added when
    CONSUL_HTTP_SSL is true and there is none); `Client` adds http://."""
    address = flag or env.get("MESH_HTTP_ADDR") or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
    scheme, sep, _ = address.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ConfigError(f"unsupported address scheme {scheme!r} in {address!r}: use host:port or http(s)://host:port")
    if not sep and _env_bool(env, "HTTP_SSL", False):
        address = "https://" + address
    return address


def resolve_tls(flags: Mapping[str, Any], env: Mapping[str, str]) -> TLSOptions:
    """TLS options from the flags given (by flag name: `ca-file`, `ca-path`,
    `client-cert`, `client-key`, `tls-server-name`) and `env`. Files are not read here."""
    def pick(flag: str, name: str) -> str:
        return str(flags.get(flag) or "") or _env(env, name)

    return TLSOptions(ca_file=pick("ca-file", "CACERT"), ca_path=pick("ca-path", "CAPATH"),
                      client_cert=pick("client-cert", "CLIENT_CERT"), client_key=pick("client-key", "CLIENT_KEY"),
                      server_name=pick("tls-server-name", "TLS_SERVER_NAME"),
                      verify=_env_bool(env, "HTTP_SSL_VERIFY", True))


def _read_token_file(path: str, where: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(_TOKEN_FILE_LIMIT + 1)
    except OSError as exc:
        raise ConfigError(f"Error loading token file {path} ({where}): {exc.strerror or exc}") from None
    if len(data) > _TOKEN_FILE_LIMIT:
        raise ConfigError(f"Error loading token file {path} ({where}): larger than {_TOKEN_FILE_LIMIT} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"Error loading token file {path} ({where}): not UTF-8") from None


def resolve_token(flag: str | None, env: Mapping[str, str], token_file: str | None = None) -> str:
    """The ACL token, "" for none (the agent then uses its default token)."""
    if flag:
        return flag
    if token_file:
        return _read_token_file(token_file, "-token-file")
    token = env.get("MESH_HTTP_TOKEN") or env.get("CONSUL_HTTP_TOKEN")
    if token:
        return token
    path = env.get("CONSUL_HTTP_TOKEN_FILE")
    return _read_token_file(path, "CONSUL_HTTP_TOKEN_FILE") if path else ""


def resolve(flags_address: str | None, flags_token: str | None, env: Mapping[str, str], *,
            flags_token_file: str | None = None) -> tuple[str, str]:
    """(address, token) from the flags given (None or "" when not given) and `env`
    (pass os.environ, or a dict in tests)."""
    return resolve_address(flags_address, env), resolve_token(flags_token, env, flags_token_file)
