"""What the `mesh acl` subcommands share: the one-line failure, output in Consul's two
formats, rules and tokens read from `@file` or `-`, identity flags, and the lookups
that turn a partial ID or a name into a full ID (Consul's CLI accepts a unique ID
prefix everywhere an ID is asked for, so scripts written against it keep working)."""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mesh.api.client import APIError, Client
from mesh.catalog.acl_state import ANONYMOUS_ACCESSOR, MANAGEMENT_POLICY_ID, MANAGEMENT_POLICY_NAME
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest

from .flags import client_for, parse_flags

__all__ = ["Fail", "attempt", "run_list", "emit", "load_source", "service_identities", "node_identities", "full_id", "check_format",
           "ttl_flag", "FORMAT_FLAG"]

FORMAT_FLAG = {"format": "str"}
T = TypeVar("T")
_FULL_ID = 36  # a UUID's length: anything shorter is a prefix to look up


class Fail(Exception):
    """One line for stderr, exit 1, worded as Consul's CLI words it (no prefix added)."""

    def __init__(self, message: str) -> None:
        # an agent's message may span lines (a rules parse error): the CLI's is one
        super().__init__(" ".join(message.split()))


async def attempt(failure: str, call: Awaitable[T]) -> T:
    """The agent's answer, or Fail(`<failure>: <the agent's error>`), Consul's wording
    for every failed request ("Failed to create new token: Unexpected response code:
    403 (...)")."""
    try:
        return await call
    except APIError as exc:
        raise Fail(f"{failure}: {exc.message}") from None


async def run_list(argv: list[str], path: str, failure: str, pretty: Callable[[Any], str]) -> int:
    """`mesh acl token|policy|role list`: one GET, printed in the chosen format."""
    flags, _ = parse_flags(argv, {**FORMAT_FLAG})
    fmt = check_format(flags)
    async with client_for(flags) as c:
        items = await attempt(failure, c.get(path)) or []
    emit(fmt, items, pretty)
    return 0


def check_format(flags: dict[str, Any]) -> str:
    """-format: `pretty` (the default) or `json`, checked before any request."""
    fmt = flags.get("format") or "pretty"
    if fmt not in ("pretty", "json"):
        raise Fail(f"Unknown format: {fmt}")
    return fmt


def emit(fmt: str, value: Any, pretty: Callable[[Any], str]) -> None:
    """Consul's output: the API's JSON indented by four spaces, or the pretty text
    (which ends in a newline, then the UI's own newline, as Consul prints it)."""
    if fmt == "json":
        print(json.dumps(value, indent=4))
    else:
        sys.stdout.write(pretty(value) + "\n")


def load_source(arg: str) -> str:
    """Consul's data source: `@path` a file's contents, `-` standard input, else itself."""
    if arg.startswith("@"):
        try:
            with open(arg[1:], encoding="utf-8") as f:
                return f.read()
        except OSError as exc:
            raise Fail(f"Failed to read file: {exc.strerror or exc}: {arg[1:]}") from None
    if arg == "-":
        return sys.stdin.read()
    return arg


def service_identities(raw: list[str]) -> list[dict[str, Any]]:
    """-service-identity `NAME` or `NAME:DC1,DC2` as the API's ServiceIdentities."""
    out: list[dict[str, Any]] = []
    for item in raw:
        parts = item.split(":")
        if len(parts) == 1:
            out.append({"ServiceName": parts[0]})
        elif len(parts) == 2:
            out.append({"ServiceName": parts[0], "Datacenters": parts[1].split(",")})
        else:
            raise Fail(f'Malformed -service-identity argument: "{item}"')
    return out


def node_identities(raw: list[str]) -> list[dict[str, Any]]:
    """-node-identity `NODE:DC` as the API's NodeIdentities (the datacenter is required)."""
    out: list[dict[str, Any]] = []
    for item in raw:
        parts = item.split(":")
        if len(parts) != 2:
            raise Fail(f'Malformed -node-identity argument: "{item}"')
        out.append({"NodeName": parts[0], "Datacenter": parts[1]})
    return out


def ttl_flag(flags: dict[str, Any], name: str) -> str | None:
    """A Go duration flag, refused with Go's flag-package wording when malformed."""
    raw = flags.get(name)
    if raw is None or raw == "":
        return None
    try:
        seconds = parse_duration(str(raw), what=name)
    except InvalidRequest:
        raise Fail(f'invalid value "{raw}" for flag -{name}: parse error') from None
    return str(raw) if seconds > 0 else None


_LISTS = {"token": ("/v1/acl/tokens", "AccessorID"), "policy": ("/v1/acl/policies", "ID"),
          "role": ("/v1/acl/roles", "ID")}


async def full_id(c: Client, kind: str, partial: str, context: str) -> str:
    """A full ID from a unique prefix (a full-length one is taken as it is). Failures
    are Fail(`<context>: <why>`) with Consul's reasons (none or several match, or the
    listing's own error)."""
    if kind == "token" and partial == "anonymous":
        return ANONYMOUS_ACCESSOR
    if kind == "policy" and partial == MANAGEMENT_POLICY_NAME:
        return MANAGEMENT_POLICY_ID
    if len(partial) == _FULL_ID:
        return partial
    path, key = _LISTS[kind]
    items = await attempt(context, c.get(path)) or []
    matches = [str(item.get(key, "")) for item in items if str(item.get(key, "")).startswith(partial)]
    if len(matches) > 1:
        raise Fail(f"{context}: Partial {kind} ID is not unique")
    if not matches:
        raise Fail(f"{context}: No such {kind} ID with prefix: {partial}")
    return matches[0]
