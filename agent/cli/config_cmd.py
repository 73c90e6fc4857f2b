"""`mesh config write|read|list|delete`: Consul's `consul config` commands.

`write` takes a config entry file in HCL or JSON (by extension; `-` reads stdin, and a
file without either extension is JSON when it starts with `{`), as Consul's command
does. `-cas -modify-index N` makes `write` and `delete` check-and-set: a write that
lost the race prints `Config entry not updated` and exits 1, as Consul's does.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from .flags import UsageError, client_for, parse_flags

__all__ = ["run_config", "load_entry"]

_USAGE = ("usage: mesh config write [-cas -modify-index N] FILE | read -kind K -name N | list -kind K | "
          "delete (-kind K -name N | -filename F) [-cas -modify-index N]")


def load_entry(path: str) -> dict[str, Any]:
    """The config entry in a file (or stdin for `-`), HCL blocks made objects again."""
    from mesh.agent.config import ConfigError, load_file

    try:
        return load_file(path, any_name=True)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _kind_name(entry: dict[str, Any]) -> tuple[str, str]:
    kind = entry.get("Kind", entry.get("kind", ""))
    name = entry.get("Name", entry.get("name", ""))
    return str(kind), str(name)


def _cas(flags: dict[str, Any]) -> dict[str, str]:
    if not flags.get("cas"):
        return {}
    index = flags.get("modify-index", "")
    if not index.isdigit():
        raise UsageError("Must specify a -modify-index index (an unsigned integer) with -cas")
    return {"cas": index}


async def run_config(argv: list[str]) -> int:
    """One `mesh config` subcommand; raises UsageError or APIError (main prints them)."""
    if not argv or argv[0] not in ("write", "read", "list", "delete"):
        raise UsageError(_USAGE)
    sub = argv[0]
    flags, args = parse_flags(argv[1:], {"cas": "bool", "modify-index": "str", "kind": "str", "name": "str",
                                    "filename": "str"})
    async with client_for(flags) as c:
        if sub == "write":
            if len(args) != 1:
                raise UsageError("usage: mesh config write [-cas -modify-index N] FILE (HCL or JSON; - for stdin)")
            entry = load_entry(args[0])
            kind, name = _kind_name(entry)
            ok, _ = await c.request("PUT", "/v1/config", params=_cas(flags), body=entry)
            if ok is not True:
                print(f"Config entry not updated: {kind}/{name}", file=sys.stderr)
                return 1
            print(f"Config entry written: {kind}/{name}")
            return 0
        if sub == "delete" and flags.get("filename"):
            if flags.get("kind") or flags.get("name"):
                raise UsageError("use either -filename or -kind and -name")
            kind, name = _kind_name(load_entry(flags["filename"]))
        else:
            kind, name = flags.get("kind", ""), flags.get("name", "")
        if not kind:
            raise UsageError("Must specify the -kind parameter")
        if sub == "list":
            for entry in sorted(await c.get(f"/v1/config/{kind}"), key=lambda e: e.get("Name", "")):
                print(entry.get("Name", ""))
            return 0
        if not name:
            raise UsageError("Must specify the -name parameter")
        if sub == "read":
            print(json.dumps(await c.get(f"/v1/config/{kind}/{name}"), indent=4))
            return 0
        params = _cas(flags)
        deleted, _ = await c.request("DELETE", f"/v1/config/{kind}/{name}", params=params)
        if params and deleted is not True:
            print(f"Config entry not deleted: {kind}/{name}", file=sys.stderr)
            return 1
        print(f"Config entry deleted: {kind}/{name}")
        return 0
