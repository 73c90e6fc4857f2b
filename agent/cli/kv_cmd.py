"""`mesh kv put|get|delete|export|import`: Consul's `consul kv` over /v1/kv.

Output, messages and exit codes are `consul kv`'s (../shared/reference/consul.md §7.7
and its command sources): `Success! Data written to: KEY`, `Error! No key exists at:
KEY`, `Error! Did not write to KEY: CAS failed`, each error one line on stderr, exit 1.
`export` writes Consul's format (a JSON array of {"key", "flags", "value" (base64)},
tab-indented) and `import` reads it back, so the two round-trip, also with Consul's own.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

from mesh.api.client import APIError, Client
from mesh.api.errors import DecodeError
from mesh.api.lock import kv_path, parse_pairs
from mesh.catalog.kv import KVEntry

from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["run_kv"]

USAGE = "usage: mesh kv put|get|delete|export|import [options] ..."
_UINT64 = (1 << 64) - 1


class _Fail(Exception):
    """One line for stderr, exit 1 (Consul's wording, so no `Error: ` prefix added)."""


def _uint(flags: dict[str, Any], name: str) -> int:
    raw = flags.get(name)
    if raw is None:
        return 0
    text = str(raw).strip()
    try:
        value = int(text, 0) if text.lower().startswith(("0x", "0o", "0b")) else int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _UINT64:
        raise UsageError(f'invalid value "{raw}" for flag -{name}: parse error')
    return value


def _write(data: bytes) -> None:
    """Raw bytes and a newline on stdout, as Consul prints a value (binary ones too)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.buffer.flush()


def _read_source(arg: str, what: str = "file") -> bytes:
    """Consul's data argument: `@path` a file, `-` standard input, anything else itself."""
    if arg.startswith("@"):
        try:
            with open(arg[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise _Fail(f"Error! Failed to read file: {exc.strerror or exc}: {arg[1:]}") from None
    if arg == "-":
        try:
            return sys.stdin.buffer.read()
        except OSError as exc:
            raise _Fail(f"Error! Failed to read stdin: {exc.strerror or exc}") from None
    return arg.encode()


async def _get_pairs(c: Client, key: str, **params: Any) -> tuple[Any, bool]:
    """The decoded answer of GET /v1/kv/<key> (None and False when the agent says 404)."""
    try:
        value, _ = await c.request("GET", kv_path(key), params=params)
    except APIError as exc:
        if exc.status == 404 and not isinstance(exc, DecodeError):
            return None, False
        raise
    return value, True


def _detailed(pair: KVEntry, b64: bool) -> bytes:
    """Consul's `-detailed` table (its tabwriter pads the names to 17 columns)."""
    rows = [("CreateIndex", str(pair.create_index)), ("Flags", str(pair.flags)), ("Key", pair.key),
            ("LockIndex", str(pair.lock_index)), ("ModifyIndex", str(pair.modify_index)),
            ("Session", pair.session or "-")]
    lines = [f"{name:<17}{value}".encode() for name, value in rows]
    value = base64.b64encode(pair.value) if b64 else pair.value
    lines.append(b"Value            " + value)
    return b"\n".join(lines)


def _key_arg(args: list[str], *, strip: bool = True) -> str:
    if len(args) > 1:
        raise _Fail(f"Too many arguments (expected 1, got {len(args)})")
    key = args[0] if args else ""
    return key[1:] if strip and key.startswith("/") else key


async def _get(argv: list[str]) -> int:
    flags, args = _parse(argv, {"recurse": "bool", "keys": "bool", "separator": "str", "detailed": "bool",
                                "base64": "bool", "stale": "bool"})
    key = _key_arg(args)
    if not key and not (flags.get("recurse") or flags.get("keys")):
        raise _Fail("Error! Missing KEY argument")
    common = {"stale": ""} if flags.get("stale") else {}
    b64 = bool(flags.get("base64"))
    async with _client(flags) as c:
        try:
            if flags.get("keys"):
                separator = flags.get("separator", "/")
                params = {"keys": "", **({"separator": separator} if separator else {}), **common}
                keys, _ = await _get_pairs(c, key, **params)
                if keys is not None and (not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)):
                    raise DecodeError("KV keys answer must be a list of strings")
                for k in keys or []:
                    print(k)
                return 0
            if flags.get("recurse"):
                body, _ = await _get_pairs(c, key, recurse="", **common)
                pairs = parse_pairs(body)
                for i, pair in enumerate(pairs):
                    if flags.get("detailed"):
                        _write(_detailed(pair, b64))
                        if i < len(pairs) - 1:
                            print(flush=True)
                    else:
                        _write(pair.key.encode() + b":" + (base64.b64encode(pair.value) if b64 else pair.value))
                return 0
            body, found = await _get_pairs(c, key, **common)
        except APIError as exc:
            raise _Fail(f"Error querying Consul agent: {exc.message}") from None
    pairs = parse_pairs(body) if found else []
    if not pairs:
        raise _Fail(f"Error! No key exists at: {key}")
    pair = pairs[0]
    if flags.get("detailed"):
        _write(_detailed(pair, b64))
    else:
        _write(base64.b64encode(pair.value) if b64 else pair.value)
    return 0


async def _put(argv: list[str]) -> int:
    flags, args = _parse(argv, {"cas": "bool", "modify-index": "str", "flags": "str", "base64": "bool",
                                "session": "str", "acquire": "bool", "release": "bool"})
    if not args:
        raise _Fail("Error! Missing KEY argument")
    if len(args) > 2:
        raise _Fail(f"Error! Too many arguments (expected 1 or 2, got {len(args)})")
    key = args[0]
    data = _read_source(args[1]) if len(args) == 2 and args[1] else b""
    if flags.get("base64"):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Fail(f"Error! Cannot base 64 decode data: {exc}") from None
    session = flags.get("session", "")
    acquire, release, cas = flags.get("acquire"), flags.get("release"), flags.get("cas")
    if (acquire or release) and not session:
        raise _Fail("Error! Missing -session (required with -acquire and -release)")
    modify_index, kv_flags = _uint(flags, "modify-index"), _uint(flags, "flags")
    if key.startswith("/"):
        raise _Fail(f"Error! Failed writing data: Invalid key. Key must not begin with a '/': {key}")
    params: dict[str, Any] = {"flags": kv_flags} if kv_flags else {}
    if cas:
        params["cas"] = modify_index
    elif acquire:
        params["acquire"] = session
    elif release:
        params["release"] = session
    async with _client(flags) as c:
        try:
            answer, _ = await c.request("PUT", kv_path(key), params=params, data=data)
        except APIError as exc:
            if cas:
                raise _Fail(f"Error! Did not write to {key}: {exc.message}") from None
            raise _Fail(f"Error! Failed writing data: {exc.message}") from None
    ok = answer is True or (isinstance(answer, bytes) and answer.strip() == b"true")
    if cas:
        if not ok and modify_index == 0:
            raise _Fail(f"Error! Did not write to {key}: CAS performed with index=0 and key already exists.")
        if not ok:
            raise _Fail(f"Error! Did not write to {key}: CAS failed")
        print(f"Success! Data written to: {key}")
    elif acquire:
        if not ok:
            raise _Fail("Error! Did not acquire lock")
        print(f"Success! Lock acquired on: {key}")
    elif release:
        if not ok:
            raise _Fail("Error! Did not release lock")
        print(f"Success! Lock released on: {key}")
    else:
        print(f"Success! Data written to: {key}")
    return 0


async def _delete(argv: list[str]) -> int:
    flags, args = _parse(argv, {"cas": "bool", "modify-index": "str", "recurse": "bool"})
    key = _key_arg(args)
    recurse, cas = flags.get("recurse"), flags.get("cas")
    if not key and not recurse:
        raise _Fail("Error! Missing KEY argument")
    modify_index = _uint(flags, "modify-index")
    if cas and modify_index == 0:
        raise _Fail("Cannot delete a key that does not exist. Provide a -modify-index greater than 0.")
    if modify_index and not cas:
        raise _Fail("Cannot specify -modify-index without -cas!")
    if recurse and cas:
        raise _Fail("Cannot specify both -cas and -recurse!")
    params: dict[str, Any] = {"recurse": ""} if recurse else {"cas": modify_index} if cas else {}
    async with _client(flags) as c:
        try:
            answer, _ = await c.request("DELETE", kv_path(key), params=params)
        except APIError as exc:
            if recurse:
                raise _Fail(f"Error! Did not delete prefix {key}: {exc.message}") from None
            if cas:
                raise _Fail(f"Error! Did not delete key {key}: {exc.message}") from None
            raise _Fail(f"Error deleting key {key}: {exc.message}") from None
    if recurse:
        print(f"Success! Deleted keys with prefix: {key}")
        return 0
    ok = answer is True or (isinstance(answer, bytes) and answer.strip() == b"true")
    if cas and not ok:
        raise _Fail(f"Error! Did not delete key {key}: CAS failed")
    print(f"Success! Deleted key: {key}")
    return 0


def export_json(pairs: list[KVEntry]) -> str:
    """Consul's export document: Go's json.MarshalIndent with a tab, HTML characters
    escaped as Go escapes them."""
    entries = [{"key": p.key, "flags": p.flags, "value": base64.b64encode(p.value).decode()} for p in pairs]
    text = json.dumps(entries, indent="\t", ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def parse_import(text: bytes) -> list[tuple[str, int, bytes]]:
    """(key, flags, value) of each entry of an export document; _Fail naming the problem."""
    try:
        entries = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _Fail(f"Cannot unmarshal data: {str(exc).splitlines()[0] if str(exc) else 'invalid JSON'}") from None
    if not isinstance(entries, list):
        raise _Fail("Cannot unmarshal data: expected a JSON array of {\"key\", \"flags\", \"value\"}")
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise _Fail("Cannot unmarshal data: every entry must be an object {\"key\", \"flags\", \"value\"}")
        fields = {k.lower(): v for k, v in entry.items()}  # Go matches field names case-insensitively
        key, flags, value = fields.get("key", ""), fields.get("flags", 0), fields.get("value", "")
        if not isinstance(key, str) or not isinstance(value, str) or value is None:
            raise _Fail("Cannot unmarshal data: \"key\" and \"value\" must be strings")
        if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags <= _UINT64:
            raise _Fail(f"Cannot unmarshal data: \"flags\" of {key} must be an unsigned 64-bit integer")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _Fail(f"Error base 64 decoding value for key {key}: {exc}") from None
        out.append((key, flags, raw))
    return out


async def _export(argv: list[str]) -> int:
    flags, args = _parse(argv, {"stale": "bool"})
    prefix = _key_arg(args)
    async with _client(flags) as c:
        try:
            body, _ = await _get_pairs(c, prefix, recurse="", **({"stale": ""} if flags.get("stale") else {}))
            pairs = parse_pairs(body)
        except APIError as exc:
            raise _Fail(f"Error querying Consul agent: {exc.message}") from None
    print(export_json(pairs))
    return 0


async def _import(argv: list[str]) -> int:
    flags, args = _parse(argv, {})
    if not args:
        raise _Fail("Error! Missing DATA argument")
    if len(args) > 1:
        raise _Fail(f"Error! Too many arguments (expected 1, got {len(args)})")
    if not args[0]:
        raise _Fail("Error! Empty DATA argument")
    entries = parse_import(_read_source(args[0]))
    async with _client(flags) as c:
        for key, kv_flags, value in entries:
            try:
                await c.request("PUT", kv_path(key), params={"flags": kv_flags} if kv_flags else {}, data=value)
            except APIError as exc:
                raise _Fail(f"Error! Failed writing data for key {key}: {exc.message}") from None
            print(f"Imported: {key}", flush=True)
    return 0


_SUB = {"get": _get, "put": _put, "delete": _delete, "export": _export, "import": _import}


async def run_kv(argv: list[str]) -> int:
    if not argv or argv[0] not in _SUB:
        raise UsageError(USAGE)
    try:
        return await _SUB[argv[0]](argv[1:])
    except _Fail as exc:
        print(str(exc), file=sys.stderr)
        return 1
    except DecodeError as exc:
        print(f"Error! {exc.message}", file=sys.stderr)
        return 1
