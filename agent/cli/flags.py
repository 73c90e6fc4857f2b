"""Flag parsing and the API client shared by the `mesh` subcommands (agent/cli/main.py
and the subcommands in modules of their own, such as config_cmd.py)."""

from __future__ import annotations

import os
from typing import Any

from mesh.api.client import Client
from mesh.api.config import ConfigError, resolve, resolve_tls

__all__ = ["COMMON_FLAGS", "UsageError", "parse_flags", "client_for"]


# every subcommand that talks to an agent takes these (Consul's HTTP client flags)
COMMON_FLAGS = {"http-addr": "str", "token": "str", "token-file": "str", "datacenter": "str",
                "ca-file": "str", "ca-path": "str", "client-cert": "str", "client-key": "str",
                "tls-server-name": "str"}


class UsageError(Exception):
    """Bad command-line use: main prints `Error: <message>` and exits 1."""


def parse_flags(argv: list[str], spec: dict[str, str], *, common: bool = True) -> tuple[dict[str, Any], list[str]]:
    """Consul-style flags for subcommands: spec maps name -> 'str' | 'bool' | 'list'
    (repeatable, values in order); `common` adds the HTTP client flags."""
    spec = {**COMMON_FLAGS, **spec} if common else dict(spec)
    values: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and len(arg) > 1 and not rest:
            name, eq, inline = arg.lstrip("-").partition("=")
            if name not in spec:
                raise UsageError(f"flag provided but not defined: -{name}")
            if spec[name] == "bool":
                values[name] = inline.lower() not in ("false", "0") if eq else True
            else:
                if not eq:
                    if i + 1 >= len(argv):
                        raise UsageError(f"flag needs an argument: -{name}")
                    i += 1
                value = inline if eq else argv[i]
                if spec[name] == "list":
                    values.setdefault(name, []).append(value)
                else:
                    values[name] = value
        else:
            rest.append(arg)
        i += 1
    return values, rest


def client_for(flags: dict[str, Any]) -> Client:
    try:
        address, token = resolve(flags.get("http-addr"), flags.get("token"), os.environ,
                                 flags_token_file=flags.get("token-file"))
        return Client(address, token, tls=resolve_tls(flags, os.environ))
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
