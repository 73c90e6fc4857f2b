"""HTTP/1.1 messages as the sidecar sees them: a head it may rewrite and a body it forwards.

A body arrives in pieces from the parser and is either held (until whoever forwards it
attaches) or passed straight on. Up to `REPLAY_LIMIT` bytes are also kept so a request
can be sent again on a retry; a longer body is streamed once and makes the request
unretriable after its first byte has left. Memory per message is bounded: while nobody
consumes a held body, reading from its connection is paused past `HOLD_LIMIT`.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Body", "Request", "REPLAY_LIMIT", "HOLD_LIMIT", "request_head", "response_head", "chunk"]

REPLAY_LIMIT = 64 * 1024
HOLD_LIMIT = 256 * 1024

_REASONS = {
    100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content", 400: b"Bad Request",
    403: b"Forbidden", 404: b"Not Found", 413: b"Payload Too Large", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}


class Body:
    """One message's body, in order, exactly once to one consumer."""

    __slots__ = ("_held", "_held_size", "size", "done", "_sink", "kept", "_pause", "_resume",
                 "_paused", "failed", "_on_finish")

    def __init__(self, pause: Callable[[], None] | None = None, resume: Callable[[], None] | None = None,
                 replayable: bool = True) -> None:
        self._held: list[bytes] = []
        self._held_size = 0
        self.size = 0
        self.done = False
        self.failed = False  # the connection it came on was lost before the end
        self._sink: Callable[[bytes], None] | None = None
        self.kept: list[bytes] | None = [] if replayable else None
        self._pause, self._resume = pause, resume
        self._paused = False
        self._on_finish: Callable[[], None] | None = None

    # ---- producer side (the parser) ----------------------------------------------------------
    def feed(self, data: bytes) -> None:
        self.size += len(data)
        kept = self.kept
        if kept is not None:
            if self.size <= REPLAY_LIMIT:
                kept.append(data)
            else:
                self.kept = None
        sink = self._sink
        if sink is not None:
            sink(data)
            return
        self._held.append(data)
        self._held_size += len(data)
        if self._held_size > HOLD_LIMIT and not self._paused and self._pause is not None:
            self._paused = True
            self._pause()

    def finish(self) -> None:
        self.done = True
        if self._on_finish is not None:
            callback, self._on_finish = self._on_finish, None
            callback()

    def fail(self) -> None:
        self.failed = True
        self.done = True

    # ---- consumer side -----------------------------------------------------------------------
    @property
    def replayable(self) -> bool:
        """The whole body is kept (so far): it can be sent again."""
        return self.kept is not None

    def replay(self) -> bytes:
        """Everything kept, for a retry; only while `replayable`."""
        assert self.kept is not None
        return b"".join(self.kept)

    def pipe(self, sink: Callable[[bytes], None], on_finish: Callable[[], None] | None = None) -> None:
        """From now on every piece goes to `sink` as it arrives; what was held goes first;
        `on_finish` is called once the body is complete (at once if it already is)."""
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
            sink(data)
        self._sink = sink
        if self._paused and self._resume is not None:
            self._paused = False
            self._resume()
        if on_finish is not None:
            if self.done and not self.failed:
                on_finish()
            elif not self.done:
                self._on_finish = on_finish

    def discard(self) -> None:
        """Nobody wants it (a denied or failed request): drop what comes."""
        self._held.clear()
        self._held_size = 0
        self.kept = None
        self.pipe(_drop)


def _drop(_: bytes) -> None:
    pass


class Request:
    """A parsed request head; `headers` are (name, value) pairs as received, names in
    their received case (a forwarded request keeps them)."""

    __slots__ = ("method", "target", "version", "headers", "keep_alive", "upgrade", "body", "chunked",
                 "content_length", "expect_continue", "started", "_lower")

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = True
        self.upgrade = False
        self.body: Body = Body()
        self.chunked = False
        self.content_length: int | None = None
        self.expect_continue = False
        self.started = 0.0
        self._lower: dict[str, str] | None = None

    def header_map(self) -> dict[str, str]:
        """Lower-case names to values, repeated headers joined with ","; built once, only
        when a rule looks at headers."""
        if self._lower is None:
            out: dict[str, str] = {}
            for name, value in self.headers:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                out[key] = f"{out[key]},{text}" if key in out else text
            self._lower = out
        return self._lower

    def header(self, name: str) -> str | None:
        return self.header_map().get(name)


def request_head(method: str, target: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    parts = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)]
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"\r\n")
    return b"".join(parts)


def response_head(status: int, headers: list[tuple[bytes, bytes]], reason: bytes = b"") -> bytes:
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))]
    for name, value in headers:
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (the parser hands bodies over decoded)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


def simple_response(status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None,
                    close: bool = False) -> bytes:
    """A response the sidecar itself gives (400, 403, 503, 504): a short text body."""
    body = text.encode("utf-8") + b"\n"
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(body))]
    if close:
        headers.append((b"connection", b"close"))
    if extra:
        headers.extend(extra)
    return response_head(status, headers) + body
