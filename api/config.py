"""Where a program finds its agent and token: flags first, then the environment.

The one place that reads `CONSUL_HTTP_*`/`MESH_HTTP_*`, so the client itself takes its
address and token as arguments (a library that reads the environment in a constructor
surprises every caller that passed something else, py-consul's issue #192). The CLI
and the sidecar proxy both call `resolve`, with the same precedence as Consul after its
fix for hashicorp/consul#14466:

    address: -http-addr, MESH_HTTP_ADDR, CONSUL_HTTP_ADDR, 127.0.0.1:8500
    token:   -token, -token-file, MESH_HTTP_TOKEN, CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE

An address may carry `http://` or `https://`; a token file is read whole and stripped.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["DEFAULT_ADDRESS", "ConfigError", "resolve", "resolve_address", "resolve_token"]

DEFAULT_ADDRESS = "127.0.0.1:8500"
_TOKEN_FILE_LIMIT = 64 * 1024  # a token is 36 characters; anything this long is a mistake


class ConfigError(ValueError):
    """The flags or environment name something unusable (an unreadable token file, a
    unix:// address): the caller's input, reported before any request is made."""


def resolve_address(flag: str | None, env: Mapping[str, str]) -> str:
    """The agent's address as given (scheme optional); `Client` adds http://."""
    address = flag or env.get("MESH_HTTP_ADDR") or env.get("CONSUL_HTTP_ADDR") or DEFAULT_ADDRESS
    scheme, sep, _ = address.partition("://")
    if sep and scheme.lower() not in ("http", "https"):
        raise ConfigError(f"unsupported address scheme {scheme!r} in {address!r}: use host:port or http(s)://host:port")
    return address


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
