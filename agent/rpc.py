"""Agent-to-server RPC: msgpack frames over TCP on the server port (default 8300).

Handshake (protocol 1): on accept the server sends `MESHRPC1` and a 16-byte random
nonce; the client answers with HMAC-SHA256(key, "mesh-rpc-hello" | nonce), 32 bytes.
Only then does the server read frames. Until a peer has proven the key the server
buffers at most those 32 bytes, for at most `handshake_timeout` seconds (Consul's
`limits.rpc_handshake_timeout`), so connections without the key cost nothing but a
descriptor, and `max_conns_per_client` (`limits.rpc_max_conns_per_client`) caps those
per source IP. The nonce makes a recorded connection useless to replay. Both ends are
ours, so the handshake changes with the code: an agent and a server from before it
cannot talk (upgrade servers and agents together).

Frame: 4-byte big-endian length | 32-byte HMAC-SHA256 of the body | msgpack body.
Request body `{"m": method, "a": args, "s": seq}`, response `{"s": seq, "r": result}` or
`{"s": seq, "e": message, "k": kind}`; `{"x": seq}` cancels a call the client gave up
on (a blocking read whose HTTP caller left). Connections are multiplexed: a client
keeps one connection per server with any number of calls in flight (a 5-minute
blocking read does not hold up heartbeats), and the server runs each request
concurrently. An authenticated connection may sit idle as long as it likes, but a
frame, once its first byte has arrived, must be complete within `handshake_timeout`
(a peer dribbling bytes is dropped).
With a cluster key (-encrypt) the MAC is keyed with it, so only holders of the key can
call a server; without one (-dev) the MAC is over an empty key and only detects
corruption.

TLS (agent/tls.py): a server with auto_encrypt.allow_tls accepts TLS connections
without a client certificate, since that is how a new client asks for one; such a
connection may call only `cert_optional_methods` (AutoEncrypt.Sign, Status.Ping), every
other call is refused as "denied". `peer_check` refuses a verified certificate that is
not an agent's (a Connect service leaf), and `set_ssl_context` changes the trusted
roots for new handshakes without touching established connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from mesh.catalog.errors import InvalidRequest, MeshError, NotFound, PermissionDenied, RateLimited

from .conn_limits import ConnLimiter
from .logging import get_logger, per_peer_limiter
from .metrics import RPC

__all__ = ["RPCError", "RPCServer", "RPCClient", "Handler", "MAX_FRAME", "PROTOCOL_MAGIC"]

log = get_logger("rpc")

MAX_FRAME = 64 << 20
MAX_INFLIGHT = 4096  # concurrent requests per connection before the server stops reading
PROTOCOL_MAGIC = b"MESHRPC1"
_NONCE_BYTES = 16
_HELLO_CONTEXT = b"mesh-rpc-hello\0"
_HEADER = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class RPCError(MeshError):
    """A failed call. `kind` says what the server answered: "invalid" (bad input),
    "notfound", "noleader", "ratelimit", "denied" (ACLs), "error" (other server-side failure), or "transport" when
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
    if isinstance(exc, PermissionDenied):
        return "denied"
    if type(exc).__name__ == "NoLeader":
        return "noleader"
    return "error"


def _key(encrypt: str) -> bytes:
    return base64.b64decode(encrypt) if encrypt else b""


def _mac(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, body, hashlib.sha256).digest()


def hello_proof(key: bytes, nonce: bytes) -> bytes:
    """The client's answer to the server's nonce: proves the key without sending it."""
    return _mac(key, _HELLO_CONTEXT + nonce)


async def _read_frame(reader: asyncio.StreamReader, key: bytes, deadline: float | None = None) -> Any:
    """One frame. With `deadline`, waiting for a frame to start is unbounded (an idle
    connection is fine) but the rest of it must arrive within `deadline` seconds."""
    first = await reader.readexactly(1)
    async with asyncio.timeout(deadline):
        header = first + await reader.readexactly(3)
        (length,) = _HEADER.unpack(header)
        if length < 32 or length > MAX_FRAME:
            raise RPCError(f"bad frame length {length}")
        data = await reader.readexactly(length)
    mac, body = data[:32], data[32:]
    if not hmac.compare_digest(mac, _mac(key, body)):
        raise RPCError("frame authentication failed (different -encrypt key?)")
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several types (ValueError, StackError, ExtraData, ...)
        raise RPCError(f"frame is not msgpack ({type(exc).__name__})") from None


def _frame(key: bytes, obj: Any) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return _HEADER.pack(len(body) + 32) + _mac(key, body) + body


def _peer_ip(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


class RPCServer:
    def __init__(self, host: str, port: int, encrypt: str, ssl_context: ssl.SSLContext | None = None, *,
                 handshake_timeout: float = 5.0, max_conns_per_client: int = 100,
                 cert_optional_methods: frozenset[str] = frozenset(),
                 peer_check: Callable[[bytes], str | None] | None = None) -> None:
        self._host, self._port = host, port
        self._ssl = ssl_context
        self._current_ssl = ssl_context
        if ssl_context is not None:
            # called for every ClientHello (SNI or not): hands the handshake to the
            # current context, so new roots apply without restarting the listener
            ssl_context.sni_callback = self._choose_context
        self._cert_optional = cert_optional_methods
        self._peer_check = peer_check
        self._key = _key(encrypt)
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.AbstractServer | None = None
        self.handshake_timeout = handshake_timeout
        self._conns = ConnLimiter(max_conns_per_client)
        self._log_throttle = per_peer_limiter()
        self.port = port

    def register(self, method: str, handler: Handler) -> None:
        self._handlers[method] = handler

    def set_ssl_context(self, context: ssl.SSLContext) -> None:
        """New handshakes use `context` (same verify mode, new trust); open connections
        keep theirs."""
        if self._ssl is None:
            raise RuntimeError("the RPC listener was started without TLS")
        self._current_ssl = context

    def _choose_context(self, ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current_ssl
        if current is not None and current is not context:
            ssl_object.context = current

    def _uncertified(self, writer: asyncio.StreamWriter, ip: str) -> bool | None:
        """True for a TLS connection without a client certificate, None for one whose
        certificate `peer_check` refuses (the connection is dropped)."""
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None:
            return False
        der = ssl_object.getpeercert(binary_form=True)
        if der is None:
            return True
        problem = self._peer_check(der) if self._peer_check is not None else None
        if problem is not None:
            RPC.rejected.labels("peer_identity").inc()
            self._quiet("rpc_peer_refused", ip, error=problem)
            return None
        return False

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

    def _quiet(self, event: str, ip: str, **kw: Any) -> None:
        """One warning per event and client address a minute: these come from the network."""
        if self._log_throttle.allow((event, ip)) is not None:
            log.warning(event, peer=ip, **kw)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ip = _peer_ip(writer)
        if not self._conns.acquire(ip):
            RPC.rejected.labels("per_client_limit").inc()
            self._quiet("rpc_conn_limit", ip, limit=self._conns.max_per_client)
            writer.transport.abort()
            return
        RPC.connections.inc()
        try:
            uncertified = self._uncertified(writer, ip)
            if uncertified is not None and await self._handshake(reader, writer, ip):
                await self._requests(reader, writer, ip, uncertified)
        finally:
            RPC.connections.dec()
            self._conns.release(ip)
            writer.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str) -> bool:
        nonce = os.urandom(_NONCE_BYTES)
        writer.write(PROTOCOL_MAGIC + nonce)
        try:
            async with asyncio.timeout(self.handshake_timeout):
                proof = await reader.readexactly(32)
        except TimeoutError:
            RPC.rejected.labels("handshake_timeout").inc()
            self._quiet("rpc_handshake_timeout", ip, timeout=self.handshake_timeout)
            return False
        except (asyncio.IncompleteReadError, OSError):
            return False
        if not hmac.compare_digest(proof, hello_proof(self._key, nonce)):
            RPC.rejected.labels("handshake_failed").inc()
            self._quiet("rpc_handshake_failed", ip, error="peer did not prove the key (different -encrypt key?)")
            return False
        return True

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ip: str,
                        uncertified: bool = False) -> None:
        """Requests on one connection run concurrently (a blocking read must not hold up
        the heartbeats behind it); responses carry the request's sequence number."""
        inflight: set[asyncio.Task[None]] = set()
        by_seq: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                try:
                    request = await _read_frame(reader, self._key, self.handshake_timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except TimeoutError:
                    RPC.rejected.labels("frame_timeout").inc()
                    self._quiet("rpc_frame_timeout", ip, timeout=self.handshake_timeout)
                    return
                except (RPCError, ValueError) as exc:
                    RPC.rejected.labels("bad_frame").inc()
                    self._quiet("rpc_bad_frame", ip, error=str(exc))
                    return
                if isinstance(request, dict) and "x" in request and "m" not in request:
                    task = by_seq.get(request["x"]) if isinstance(request["x"], int) else None
                    if task is not None:
                        task.cancel()  # the caller gave up: stop its blocking read now
                    continue
                if len(inflight) >= MAX_INFLIGHT:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.get_running_loop().create_task(self._handle(request, writer, uncertified))
                inflight.add(task)
                seq = request.get("s") if isinstance(request, dict) else None
                if isinstance(seq, int):
                    by_seq[seq] = task
                task.add_done_callback(lambda t, seq=seq: self._done(t, seq, inflight, by_seq))
        finally:
            for task in inflight:
                task.cancel()

    @staticmethod
    def _done(task: asyncio.Task[None], seq: Any, inflight: set[asyncio.Task[None]],
              by_seq: dict[int, asyncio.Task[None]]) -> None:
        inflight.discard(task)
        if isinstance(seq, int) and by_seq.get(seq) is task:
            del by_seq[seq]

    async def _handle(self, request: Any, writer: asyncio.StreamWriter, uncertified: bool = False) -> None:
        """Every request gets an answer: wrong-shaped input is "invalid", a failure the
        handler did not expect is "error" (logged once a minute per method, with its
        traceback: that is a bug to fix, not input to ignore)."""
        RPC.inflight.inc()
        try:
            response = await self._dispatch(request, uncertified)
        finally:
            RPC.inflight.dec()
        response["s"] = request.get("s") if isinstance(request, dict) else None
        if writer.is_closing():
            return
        try:
            writer.write(_frame(self._key, response))
            await writer.drain()
        except ConnectionError:
            pass

    async def _dispatch(self, request: Any, uncertified: bool = False) -> dict[str, Any]:
        method = request.get("m") if isinstance(request, dict) else None
        if uncertified and method not in self._cert_optional:
            RPC.uncertified_denied.inc()
            allowed = " and ".join(sorted(self._cert_optional)) or "nothing"
            return {"e": f"{str(method)[:100]}: this TLS connection has no client certificate, so it may call "
                         f"{allowed} only (auto_encrypt)", "k": "denied"}
        handler = self._handlers.get(method) if isinstance(method, str) else None
        if handler is None:
            RPC.requests.labels(str(method)[:40], "unknown").inc()
            return {"e": f"unknown RPC method {str(method)[:100]!r}", "k": "error"}
        args = request.get("a")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            RPC.requests.labels(method, "invalid").inc()
            return {"e": f"{method}: arguments must be a map, not {type(args).__name__}", "k": "invalid"}
        try:
            response = {"r": await handler(args)}
            RPC.requests.labels(method, "ok").inc()
        except MeshError as exc:
            response = {"e": str(exc), "k": _kind(exc)}
            RPC.requests.labels(method, "error").inc()
        except Exception as exc:
            RPC.requests.labels(method, "failed").inc()
            if self._log_throttle.allow(("rpc_handler_failed", method, type(exc).__name__)) is not None:
                log.error("rpc_handler_failed", method=method, error=f"{type(exc).__name__}: {exc}"[:500], exc_info=True)
            response = {"e": f"{method}: internal error ({type(exc).__name__})", "k": "error"}
        return response


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
        except (asyncio.IncompleteReadError, OSError, RPCError, ValueError) as exc:
            error = exc
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
        except asyncio.CancelledError:
            # timed out or the caller went away: tell the server, so a blocking read
            # does not wait out its full wait there
            answered = fut.done() and not fut.cancelled()
            if not answered and not self.writer.is_closing():
                self.writer.write(_frame(self._key, {"x": seq}))
            raise
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

    def set_ssl_context(self, context: ssl.SSLContext | None, drop_open: bool = False) -> None:
        """New connections use `context` (a renewed auto_encrypt certificate); open
        ones keep the one they were made with unless `drop_open`."""
        self._ssl = context
        if drop_open:
            for address in list(self._conns):
                self._drop(address)

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
            try:
                preamble = await reader.readexactly(len(PROTOCOL_MAGIC) + _NONCE_BYTES)
            except BaseException:
                writer.close()
                raise
            if not preamble.startswith(PROTOCOL_MAGIC):
                writer.close()
                raise RPCError(f"{address} does not speak mesh RPC protocol 1 (a different mesh version?)")
            writer.write(hello_proof(self._key, preamble[len(PROTOCOL_MAGIC):]))
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
