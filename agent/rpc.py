"""Agent-to-server RPC: msgpack frames over TCP on the server port (default 8300).

Frame: 4-byte big-endian length | 32-byte HMAC-SHA256 of the body | msgpack body.
Request body `{"m": method, "a": args}`, response `{"r": result}` or `{"e": message}`.
With a cluster key (-encrypt) the MAC is keyed with it, so only holders of the key can
call a server; without one (-dev) the MAC is over an empty key and only detects
corruption. Connections are reused by the client and one request is in flight per
connection at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from mesh.catalog.errors import MeshError

from .logging import get_logger
from .metrics import RPC

__all__ = ["RPCError", "RPCServer", "RPCClient", "Handler", "MAX_FRAME"]

log = get_logger("rpc")

MAX_FRAME = 64 << 20
_HEADER = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RPCError(MeshError):
    pass


def _key(encrypt: str) -> bytes:
    return base64.b64decode(encrypt) if encrypt else b""


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


async def _read_frame(reader: asyncio.StreamReader, key: bytes) -> Any:
    header = await reader.readexactly(4)
    (length,) = _HEADER.unpack(header)
    if length < 32 or length > MAX_FRAME:
        raise RPCError(f"bad frame length {length}")
    data = await reader.readexactly(length)
    mac, body = data[:32], data[32:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise RPCError("frame authentication failed (different -encrypt key?)")
    return msgpack.unpackb(body, raw=False, strict_map_key=False)


def _frame(key: bytes, obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(body) + 32) + _mac(key, body) + body


class RPCServer:
    def __init__(self, host: str, port: int, encrypt: str) -> None:
        self._host, self._port = host, port
        self._key = _key(encrypt)
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self.port = port

    def register(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2)
            except TimeoutError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await _read_frame(reader, self._key)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except (RPCError, ValueError, msgpack.UnpackException) as exc:
                    log.warning("rpc_bad_frame", peer=writer.get_extra_info("peername"), error=str(exc))
                    return
                method = request.get("m") if isinstance(request, dict) else None
                handler = self._handlers.get(method) if isinstance(method, str) else None
                if handler is None:
                    response: dict[str, Any] = {"e": f"unknown RPC method {method!r}"}
                    RPC.requests.labels(str(method)[:40], "unknown").inc()
                else:
                    try:
                        response = {"r": await handler(request.get("a") or {})}
                        RPC.requests.labels(method, "ok").inc()
                    except MeshError as exc:
                        response = {"e": str(exc)}
                        RPC.requests.labels(method, "error").inc()
                writer.write(_frame(self._key, response))
                await writer.drain()
        finally:
            writer.close()


class RPCClient:
    """Calls one method on one server address, reusing a connection per address."""

    def __init__(self, encrypt: str, timeout: float = 5.0) -> None:
        self._key = _key(encrypt)
        self._timeout = timeout
        self._conns: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Lock]] = {}

    async def call(self, address: str, method: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        timeout = timeout or self._timeout
        try:
            async with asyncio.timeout(timeout):
                reader, writer, lock = await self._conn(address)
                async with lock:
                    try:
                        writer.write(_frame(self._key, {"m": method, "a": args or {}}))
                        await writer.drain()
                        response = await _read_frame(reader, self._key)
                    except BaseException:
                        self._drop(address)
                        raise
        except TimeoutError:
            self._drop(address)
            raise RPCError(f"rpc {method} to {address}: timed out") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            self._drop(address)
            raise RPCError(f"rpc {method} to {address}: {exc.__class__.__name__}: {exc}") from None
        if not isinstance(response, dict):
            raise RPCError(f"rpc {method} to {address}: malformed response")
        if "e" in response:
            raise RPCError(str(response["e"]))
        return response.get("r")

    async def _conn(self, address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.Lock]:
        conn = self._conns.get(address)
        if conn is not None and not conn[1].is_closing():
            return conn
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise RPCError(f"invalid server address {address!r} (expected HOST:PORT)")
        reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        conn = (reader, writer, asyncio.Lock())
        self._conns[address] = conn
        return conn

    def _drop(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn[1].close()

    async def close(self) -> None:
        for address in list(self._conns):
            self._drop(address)
