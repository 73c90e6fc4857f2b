"""One request forwarded on one connection, and its response carried back.

`Attempt` is the response's receiver: it holds the response head until the exchange has
decided (forward it, or throw it away and retry elsewhere), then writes the head and
streams the body to the caller with the caller's flow control. Headers are touched only
where HTTP/1.1 requires it of a proxy (RFC 9110 §7.6.1): hop-by-hop fields are dropped,
the body framing is re-stated (llhttp hands bodies over decoded), and `Connection:
close` is added when the caller's connection ends with this response.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

from .client_conn import HttpClientConn, ResponseHead
from .message import LAST_CHUNK, Request, chunk, request_head, response_head
from .server_conn import HttpServerConn

__all__ = ["Attempt", "ConnPool", "forward_request_head", "HOP_BY_HOP"]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization"})
_FRAMING = frozenset({b"content-length"})


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Names listed in Connection are hop-by-hop too."""
    listed: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            listed.update(token.strip().lower() for token in value.split(b","))
    listed.discard(b"host")
    listed.discard(b"close")
    listed.discard(b"keep-alive")
    listed.discard(b"upgrade")
    return frozenset(listed)


_DROPPED = HOP_BY_HOP | _FRAMING
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close", b"upgrade"})  # list no other header


def end_to_end(headers: list[tuple[bytes, bytes]], keep_upgrade: bool = False) -> list[tuple[bytes, bytes]]:
    """The headers a proxy passes on, without the framing ones (re-stated by the sender).
    One pass in the common case; a second only when a Connection header lists names."""
    out = []
    connection = False
    for pair in headers:
        lower = pair[0].lower()
        if lower in _DROPPED:
            if lower == b"connection" and pair[1].lower() not in _PLAIN_CONNECTION:
                connection = True
            elif keep_upgrade and lower == b"upgrade":
                out.append(pair)
            continue
        out.append(pair)
    if connection:
        listed = _connection_listed(headers)
        if listed:
            out = [pair for pair in out if pair[0].lower() not in listed]
    return out


def forward_request_head(request: Request, target: bytes, headers: list[tuple[bytes, bytes]],
                         body_length: int | None) -> bytes:
    """The head sent on: `body_length` None means chunked (a body still arriving), 0 none."""
    out = list(headers)
    if request.upgrade:
        out.append((b"connection", b"upgrade"))
    if body_length is None:
        out.append((b"transfer-encoding", b"chunked"))
    elif body_length or request.method in ("POST", "PUT", "PATCH"):
        out.append((b"content-length", b"%d" % body_length))
    return request_head(request.method, target, out)


def send_request(request: Request, conn: HttpClientConn, head: bytes, replay: bool, sink: Any) -> None:
    """The head and the body: in one write when the body is kept, else the body streamed
    as chunks after the head."""
    body = request.body
    if replay:
        conn.send(head + body.replay() if body.size else head, request.method, sink)
        return
    conn.send(head, request.method, sink)
    body.pipe(lambda data: conn.write(chunk(data)), lambda: conn.write(LAST_CHUNK))


class Attempt:
    """Receives one response from `conn` for `downstream`'s current request and tells the
    exchange by callbacks, from the connection's own data callbacks (no task, no future):
    `on_head` once, when the final response head arrived or the attempt failed before it
    (`head` None, `failure` says why); after a commit, `on_end` once, when the response
    is out or broke off (`failure` set)."""

    __slots__ = ("downstream", "conn", "request", "head", "_held", "_committed", "_chunked", "failure",
                 "bytes_out", "request_source", "_close_after", "_loop", "expect_continue_sent", "_done", "_timer",
                 "on_head", "on_end", "_idle", "_idle_seen", "_out")

    def __init__(self, downstream: HttpServerConn, request: Request, conn: HttpClientConn,
                 on_head: Callable[[Attempt], None]) -> None:
        self.downstream = downstream
        self.conn = conn
        self.request = request
        self.head: ResponseHead | None = None
        self._held: list[bytes] = []
        self._committed = False
        self._chunked = False
        self._loop = downstream.loop
        self._done = False
        self._timer: Any = None
        self.failure = ""
        self.bytes_out = 0
        self.request_source: Any = downstream.transport  # paused when the app is not reading
        self._close_after = False
        self.expect_continue_sent = False
        self.on_head: Callable[[Attempt], None] | None = on_head
        self.on_end: Callable[[Attempt], None] | None = None
        self._idle = 0.0
        self._idle_seen = -1
        self._out: list[bytes] = []  # for the caller, written once per read from the upstream (flush)

    # ---- ResponseSink ----------------------------------------------------------------------------
    def response_head(self, head: ResponseHead) -> None:
        if 100 <= head.status < 200 and head.status != 101:
            if self.request.expect_continue and not self.expect_continue_sent:
                self.expect_continue_sent = True
                self.downstream.write(response_head(head.status, [], head.reason))
            return
        self.head = head
        callback, self.on_head = self.on_head, None
        if callback is not None:
            callback(self)

    def response_body(self, data: bytes) -> None:
        if not self._committed:
            self._held.append(data)
            return
        self.bytes_out += len(data)
        self._out.append(chunk(data) if self._chunked else data)

    def response_done(self) -> None:
        if self._committed and self._chunked:
            self._out.append(LAST_CHUNK)
        self.flush()
        self._ended()

    def flush(self) -> None:
        """What this read of the upstream brought, to the caller in one write: a head and
        a small body parsed from one read are one system call (and one frame), not two."""
        out = self._out
        if out:
            self.downstream.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    def response_failed(self, reason: str) -> None:
        self.failure = reason
        self.flush()
        self._ended()

    def _ended(self) -> None:
        if self._done:
            return
        self._done = True
        self._cancel_timer()
        if self.head is None or not self._committed:
            callback, self.on_head = self.on_head, None
            if callback is not None:
                callback(self)
            return
        self.downstream.release_source()
        callback, self.on_end = self.on_end, None
        if callback is not None:
            callback(self)

    def _timed_out(self) -> None:
        """The deadline passed (or the response stalled past its idle timeout): the attempt
        ends as a timeout, its connection is dropped."""
        self._timer = None
        if self._done:
            return
        self.failure = "timeout"
        self.conn.abort()
        self._ended()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---- for the exchange -----------------------------------------------------------------------
    def deadline_at(self, loop_time: float | None) -> None:
        """End the attempt as a timeout at `loop_time` (give or take a tick of the
        loop's deadline wheel: cheaper than a timer or a timeout context per attempt)."""
        self._cancel_timer()
        if loop_time is not None and not self._done:
            self._timer = _wheel(self._loop).add(loop_time, self._timed_out)

    def idle_timeout(self, seconds: float, deadline: float | None) -> None:
        """End the attempt when its response goes `seconds` without a byte (the route's
        IdleTimeout), or at `deadline` (loop time) whichever comes first."""
        self._idle = seconds
        self._arm_idle(deadline)

    def _arm_idle(self, deadline: float | None) -> None:
        self._cancel_timer()
        at = self._loop.time() + self._idle
        if deadline is not None and deadline <= at:
            self._timer = _wheel(self._loop).add(deadline, self._timed_out)
            return
        self._idle_seen = self.bytes_out
        self._timer = _wheel(self._loop).add(at, lambda: self._idle_check(deadline))

    def _idle_check(self, deadline: float | None) -> None:
        self._timer = None
        if self._done:
            return
        if self.bytes_out == self._idle_seen:
            self._timed_out()
        else:
            self._arm_idle(deadline)

    @property
    def done(self) -> bool:
        return self._done

    def drop(self) -> None:
        """The exchange does not want this response (a retry follows): no more callbacks,
        and the connection goes (its response is half read)."""
        self.on_head = self.on_end = None
        self._done = True
        self._cancel_timer()
        self.conn.abort()

    def commit(self, extra: list[tuple[bytes, bytes]] | None = None,
               edit: Any = None) -> None:
        """Send the response head to the caller and stream the body from now on."""
        head = self.head
        assert head is not None
        downstream = self.downstream
        headers = end_to_end(head.headers, keep_upgrade=head.status == 101)
        if edit is not None:
            headers = edit(headers)
        if extra:
            headers.extend(extra)
        length = _content_length(head.headers)
        no_body = self.request.method == "HEAD" or head.status in (204, 304) or head.status == 101
        if head.status == 101:
            headers.append((b"connection", b"upgrade"))
        elif length is not None:
            headers.append((b"content-length", b"%d" % length))
        elif not no_body:
            if self.request.version == "1.1":
                self._chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                self._close_after = True  # an HTTP/1.0 caller reads to the close
        if not self.request.keep_alive or self._close_after or downstream.draining:
            headers.append((b"connection", b"close"))
            self.request.keep_alive = False
        downstream.attach_source(self.conn.transport)
        self._committed = True
        if self._done:
            downstream.release_source()
        data = response_head(head.status, headers, head.reason)
        if self._held:
            held = b"".join(self._held)
            self._held.clear()
            self.bytes_out += len(held)
            data += chunk(held) if self._chunked else held
        if self._done and self._chunked and not self.failure:
            data += LAST_CHUNK
        self._out.append(data)

    def finish(self) -> None:
        self.downstream.release_source()
        self._cancel_timer()


class _Entry:
    __slots__ = ("callback", "bucket", "wheel")

    def __init__(self, callback: Any, bucket: int, wheel: DeadlineWheel) -> None:
        self.callback, self.bucket, self.wheel = callback, bucket, wheel

    def cancel(self) -> None:
        entries = self.wheel.buckets.get(self.bucket)
        if entries is not None:
            entries.discard(self)


class DeadlineWheel:
    """Deadlines in buckets of `TICK` seconds, one timer for the whole loop: adding and
    cancelling are a set operation, a tick costs only the deadlines it expires."""

    TICK = 0.025

    def __init__(self, loop: Any) -> None:
        self.loop = loop
        self.buckets: dict[int, set[_Entry]] = {}
        self._handle: Any = None

    def add(self, loop_time: float, callback: Any) -> _Entry:
        bucket = int(loop_time / self.TICK) + 1  # never early
        entry = _Entry(callback, bucket, self)
        self.buckets.setdefault(bucket, set()).add(entry)
        if self._handle is None:
            self._handle = self.loop.call_later(self.TICK, self._tick)
        return entry

    def _tick(self) -> None:
        now = int(self.loop.time() / self.TICK)
        for bucket in [b for b in self.buckets if b <= now]:
            for entry in self.buckets.pop(bucket):
                entry.callback()
        for bucket in [b for b, entries in self.buckets.items() if not entries]:
            del self.buckets[bucket]
        self._handle = self.loop.call_later(self.TICK, self._tick) if self.buckets else None


_wheels: weakref.WeakKeyDictionary[Any, DeadlineWheel] = weakref.WeakKeyDictionary()


def _wheel(loop: Any) -> DeadlineWheel:
    wheel = _wheels.get(loop)
    if wheel is None:
        wheel = _wheels[loop] = DeadlineWheel(loop)
    return wheel


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class ConnPool:
    """Idle keep-alive connections, most recently used first, per key (the local app, or
    one instance's sidecar). A connection made under an older TLS context generation is
    not reused."""

    MAX_IDLE_PER_KEY = 256

    def __init__(self) -> None:
        self._idle: dict[str, list[HttpClientConn]] = {}
        self._all: set[HttpClientConn] = set()

    def get(self, key: str, generation: int = 0) -> HttpClientConn | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.dead:
                continue
            if conn.generation != generation:
                conn.close()
                continue
            return conn
        return None

    def adopt(self, conn: HttpClientConn) -> None:
        """Track a new connection: it comes back through its on_idle."""
        self._all.add(conn)
        conn.on_idle = self._put
        conn.on_lost = self._lost

    def _put(self, conn: HttpClientConn) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.MAX_IDLE_PER_KEY:
            conn.close()
            return
        idle.append(conn)

    def _lost(self, conn: HttpClientConn) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def prune(self, idle_seconds: float, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        closed = 0
        for key, idle in list(self._idle.items()):
            for conn in list(idle):
                if now - conn.idle_since > idle_seconds:
                    idle.remove(conn)
                    conn.close()
                    closed += 1
            if not idle:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()

    @property
    def size(self) -> int:
        return len(self._all)
