"""Agent-to-server RPC: msgpack frames over TCP on the server port (default 8300).

Frame: 4-byte big-endian length | 32-byte HMAC-SHA256 of the body | msgpack body.
Request body `{"m": method, "a": args, "s": seq}`, response `{"s": seq, "r": result}` or
`{"s": seq, "e": message}`. Connections are multiplexed: a client keeps one connection
per server with any number of calls in flight (a 5-minute blocking read does not hold
up heartbeats), and the server runs each request concurrently.
With a cluster key (-encrypt) the MAC is keyed with it, so only holders of the key can
call a server; without one (-dev) the MAC is over an empty key and only detects
corruption.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from mesh.catalog.errors import InvalidRequest, MeshError, NotFound, RateLimited

from .logging import get_logger
from .metrics import RPC

__all__ = ["RPCError", "RPCServer", "RPCClient", "Handler", "MAX_FRAME"]

log = get_logger("rpc")

MAX_FRAME = 64 << 20
MAX_INFLIGHT = 4096  # concurrent requests per connection before the server stops reading
_HEADER = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RPCError(MeshError):
    """A failed call. `kind` says what the server answered: "invalid" (bad input),
    "notfound", "noleader", "ratelimit", "error" (other server-side failure), or "transport" when
    the server could not be reached at all (then another server may be tried)."""

    def __init__(self, message: str, kind: str = "transport") -> None:
        super().__init__(message)
        self.kind = kind


def _kind(exc: MeshError) -> str:
    if isinstance(exc, InvalidRequest):
        return "invalid"
    if isinstance(exc, NotFound):
        return "notfound"
    if isinstance(exc, RateLimited):
        return "ratelimit"
    if type(exc).__name__ == "NoLeader":
        return "noleader"
    return "error"


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
    def __init__(self, host: str, port: int, encrypt: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._key = _key(encrypt)
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self.port = port

    def register(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, ssl=self._ssl,
                                                  ssl_handshake_timeout=5 if self._ssl else None)
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
        """Requests on one connection run concurrently (a blocking read must not hold up
        the heartbeats behind it); responses carry the request's sequence number."""
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    request = await _read_frame(reader, self._key)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except (RPCError, ValueError, msgpack.UnpackException) as exc:
                    log.warning("rpc_bad_frame", peer=writer.get_extra_info("peername"), error=str(exc))
                    return
                if len(inflight) >= MAX_INFLIGHT:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.get_running_loop().create_task(self._handle(request, writer))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
        finally:
            for task in inflight:
                task.cancel()
            writer.close()

    async def _handle(self, request: Any, writer: asyncio.StreamWriter) -> None:
        seq = request.get("s") if isinstance(request, dict) else None
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
                response = {"e": str(exc), "k": _kind(exc)}
                RPC.requests.labels(method, "error").inc()
        response["s"] = seq
        if writer.is_closing():
            return
        writer.write(_frame(self._key, response))
        try:
            await writer.drain()
        except ConnectionError:
            pass


class _Connection:
    """One multiplexed connection: many calls in flight, matched by sequence number."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes) -> None:
        self.writer = writer
        self._key = key
        self._seq = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader_task = asyncio.get_running_loop().create_task(self._read_loop(reader))

    @property
    def closed(self) -> bool:
        return self.writer.is_closing() or self._reader_task.done()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        error: Exception = ConnectionResetError("connection closed")
        try:
            while True:
                response = await _read_frame(reader, self._key)
                fut = self._pending.pop(response.get("s"), None) if isinstance(response, dict) else None
                if fut is not None and not fut.done():
                    fut.set_result(response)
        except (asyncio.IncompleteReadError, OSError, RPCError, ValueError, msgpack.UnpackException) as exc:
            error = exc if isinstance(exc, Exception) else error
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionResetError(f"connection lost: {error}"))
            self._pending.clear()
            self.writer.close()

    async def call(self, method: str, args: dict[str, Any]) -> Any:
        self._seq += 1
        seq = self._seq
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            self.writer.write(_frame(self._key, {"m": method, "a": args, "s": seq}))
            await self.writer.drain()
            return await fut
        finally:
            self._pending.pop(seq, None)

    def close(self) -> None:
        self.writer.close()
        self._reader_task.cancel()


class RPCClient:
    """Calls methods on servers over one multiplexed connection per address."""

    def __init__(self, encrypt: str, timeout: float = 5.0, ssl_context: ssl.SSLContext | None = None) -> None:
        self._key = _key(encrypt)
        self._ssl = ssl_context
        self._timeout = timeout
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Lock] = {}

    async def call(self, address: str, method: str, args: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        timeout = timeout or self._timeout
        try:
            async with asyncio.timeout(timeout):
                conn = await self._conn(address)
                response = await conn.call(method, args or {})
        except TimeoutError:
            raise RPCError(f"rpc {method} to {address}: timed out") from None
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            self._drop(address)
            raise RPCError(f"rpc {method} to {address}: {exc.__class__.__name__}: {exc}") from None
        if not isinstance(response, dict):
            raise RPCError(f"rpc {method} to {address}: malformed response")
        if "e" in response:
            raise RPCError(str(response["e"]), str(response.get("k", "error")))
        return response.get("r")

    async def _conn(self, address: str) -> _Connection:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(address, asyncio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is not None and not conn.closed:
                return conn
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise RPCError(f"invalid server address {address!r} (expected HOST:PORT)")
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=self._ssl)
            conn = _Connection(reader, writer, self._key)
            self._conns[address] = conn
            return conn

    def _drop(self, address: str) -> None:
        conn = self._conns.pop(address, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        for address in list(self._conns):
            self._drop(address)
