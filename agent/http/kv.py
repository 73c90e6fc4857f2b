"""/v1/kv/:key and /v1/txn, as Consul answers them.

Writes are KV commands (catalog.kv.run_op decides them in the state machine); the
receiving server stamps the time lock delays compare with. Reads are the named
queries `kv.get`, `kv.list`, `kv.keys` (blocking per key or per prefix) and
`kv.txn_read` for a transaction of reads only.

Keys are the path after /v1/kv/, percent-decoded, kept byte for byte: `a//b`, spaces
and unicode are keys like any other. A key may not start with `/` (Consul's rule),
hold a control character, or be longer than MAX_KEY_BYTES.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from mesh.catalog import jsonbody
from mesh.catalog.commands import KVOp, KVRequest, MessageType
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fields import Fields
from mesh.catalog.kv import KV_VERBS, KV_WRITE_VERBS

from .query import json_response, read, read_body, read_response

__all__ = ["routes", "MAX_KEY_BYTES", "MAX_TXN_OPS", "validate_key"]

routes = web.RouteTableDef()

MAX_KEY_BYTES = 2048
MAX_TXN_OPS = 64
_LIMIT_DOC = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"


class PayloadTooLarge(web.HTTPRequestEntityTooLarge):
    """413 with Consul's own text (aiohttp's would name its own limit)."""

    def __init__(self, text: str) -> None:
        web.HTTPException.__init__(self, text=text, content_type="text/plain")


def validate_key(key: str, *, allow_empty: bool = False) -> None:
    if not key:
        if allow_empty:
            return
        raise InvalidRequest("Missing key name")
    if key.startswith("/"):
        raise InvalidRequest("key must not begin with a '/'")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidRequest(f"Key too long: {len(key.encode('utf-8', 'surrogatepass'))} bytes, at most {MAX_KEY_BYTES}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidRequest("key contains a control character")


def _key(request: web.Request) -> str:
    return request.match_info["key"]


def _uint(request: web.Request, name: str) -> int:
    raw = request.query.get(name, "")
    try:
        value = int(raw, 10)
    except ValueError:
        raise InvalidRequest(f"Invalid {name}: {raw!r} is not an unsigned integer") from None
    if not 0 <= value < 1 << 64:
        raise InvalidRequest(f"Invalid {name}: {raw!r} is not an unsigned 64-bit integer")
    return value


def _conflicting(request: web.Request, *names: str) -> None:
    if sum(1 for n in names if n in request.query) > 1:
        raise InvalidRequest(f"Conflicting flags: {urlencode(sorted(request.query.items()))}")


async def _apply(request: web.Request, op: KVOp) -> Any:
    return await request.app["agent"].apply(MessageType.KV_APPLY, KVRequest((op,)))


@routes.get("/v1/kv/{key:.*}")
async def kv_get(request: web.Request) -> web.StreamResponse:
    key = _key(request)
    validate_key(key, allow_empty=True)
    if "keys" in request.query:
        separator = request.query.get("separator", request.query.get("seperator", ""))
        result = await read(request, "kv.keys", {"prefix": key, "separator": separator})
        if not result.value and key:
            return _not_found(request, result)
        return read_response(request, result)
    recurse = "recurse" in request.query  # Consul: present means recurse, whatever its value
    if recurse:
        result = await read(request, "kv.list", {"prefix": key})
    else:
        if not key:
            raise InvalidRequest("Missing key name")
        result = await read(request, "kv.get", {"key": key})
    if not result.value:
        return _not_found(request, result)
    if "raw" in request.query and not recurse:
        encoded = result.value[0]["Value"]
        resp = web.Response(body=base64.b64decode(encoded) if encoded else b"", content_type="text/plain")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = "sandbox"
        request.app["agent"].set_read_headers(resp, result.index, "", result.known_leader, result.last_contact_ms)
        return resp
    return read_response(request, result)


def _not_found(request: web.Request, result: Any) -> web.Response:
    """Consul's miss: 404, an empty body, and still X-Consul-Index (clients need it)."""
    resp = web.Response(status=404)
    request.app["agent"].set_read_headers(resp, result.index, "", result.known_leader, result.last_contact_ms)
    return resp


@routes.put("/v1/kv/{key:.*}")
async def kv_put(request: web.Request) -> web.Response:
    key = _key(request)
    validate_key(key)
    _conflicting(request, "cas", "acquire", "release")
    flags = _uint(request, "flags") if "flags" in request.query else 0
    verb, index, session = "set", 0, ""
    if "cas" in request.query:
        verb, index = "cas", _uint(request, "cas")
    if "acquire" in request.query:
        verb, session = "lock", request.query["acquire"]
    if "release" in request.query:
        verb, session = "unlock", request.query["release"]
    limit = request.app["agent"].cfg.kv_max_value_size
    value = await read_body(request, limit, lambda size: (
        f"Request body({size} bytes) too large, max size: {limit} bytes. See {_LIMIT_DOC}."))
    ok = await _apply(request, KVOp(verb, key, value, flags, index, session))
    return json_response(request, True if verb == "set" else bool(ok))


@routes.delete("/v1/kv/{key:.*}")
async def kv_delete(request: web.Request) -> web.Response:
    key = _key(request)
    recurse = "recurse" in request.query
    validate_key(key, allow_empty=recurse)
    _conflicting(request, "recurse", "cas")
    verb, index = ("delete-tree" if recurse else "delete"), 0
    if "cas" in request.query:
        verb, index = "delete-cas", _uint(request, "cas")
    ok = await _apply(request, KVOp(verb, key, b"", 0, index, ""))
    return json_response(request, bool(ok) if verb == "delete-cas" else True)


# ---- /v1/txn ----------------------------------------------------------------------------
def parse_txn(body: Any, max_value: int) -> list[KVOp]:
    """A /v1/txn body as KV operations; 400 (or 413) for what Consul refuses before
    running anything. Verbs are not checked here: an unknown one fails its op (409)."""
    if not isinstance(body, list):
        raise InvalidRequest("Failed to parse body: a transaction is a JSON array of operations")
    if len(body) > MAX_TXN_OPS:
        raise PayloadTooLarge(f"Transaction contains too many operations ({len(body)} > {MAX_TXN_OPS})")
    ops = []
    for position, item in enumerate(body):
        try:
            ops.append(_parse_op(item, max_value))
        except InvalidRequest as exc:
            raise InvalidRequest(f"Failed to parse body: {exc} (operation {position})") from None
    return ops


def _parse_op(item: Any, max_value: int) -> KVOp:
    op = Fields(item, "operation")
    if not op.has("KV"):
        other = [name for name in ("Node", "Service", "Check") if op.has(name)]
        if other:
            raise InvalidRequest(f"mesh transactions hold KV operations only, not {other[0]}")
        raise InvalidRequest("no KV object")
    kv = Fields(op.obj("KV"), "KV")
    verb, key, session, raw = kv.str("Verb"), kv.str("Key"), kv.str("Session"), kv.str("Value")
    flags, index = (kv.int(name, lo=0, hi=(1 << 64) - 1) for name in ("Flags", "Index"))
    try:
        value = base64.b64decode(raw, validate=True) if raw else b""
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"failed to decode value: {exc}") from None
    if len(value) > max_value:
        raise PayloadTooLarge(f'Value for key "{key}" is too large ({len(value)} > {max_value} bytes)')
    validate_key(key, allow_empty=verb in ("get-tree", "delete-tree") or verb not in KV_VERBS)
    return KVOp(verb, key, value, flags, index, session)


@routes.put("/v1/txn")
async def txn(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    limit = max(agent.cfg.txn_max_req_len, agent.cfg.kv_max_value_size)
    raw = await read_body(request, limit, lambda size: f"Request body too large, max size: {limit} bytes")
    if not raw.strip():
        raise InvalidRequest("Failed to parse body: empty body")
    ops = parse_txn(jsonbody.loads(raw), agent.cfg.kv_max_value_size)
    if all(op.verb not in KV_WRITE_VERBS for op in ops):
        result = await read(request, "kv.txn_read",
                            {"ops": [[op.verb, op.key, op.index, op.session] for op in ops]})
        resp = json_response(request, result.value, status=409 if result.value["Errors"] else 200)
        resp.headers["X-Consul-KnownLeader"] = "true" if result.known_leader else "false"
        resp.headers["X-Consul-LastContact"] = str(result.last_contact_ms)
        return resp
    reply = await agent.apply(MessageType.TXN, KVRequest(tuple(ops)))
    return json_response(request, reply, status=409 if reply.get("Errors") else 200)
