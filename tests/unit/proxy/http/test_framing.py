"""HTTP/1.1 framing in the sidecar's protocols (server_conn, client_conn, forward), driven
byte by byte through a fake transport: no sockets, no sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.http.client_conn import HttpClientConn
from mesh.proxy.http.forward import end_to_end
from mesh.proxy.http.message import REPLAY_LIMIT, Body, Request
from mesh.proxy.http.server_conn import MAX_HEAD_BYTES, HttpServerConn


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False
        self.aborted = False
        self.paused = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def can_write_eof(self) -> bool:
        return False


def _server(answer: bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n") -> tuple[HttpServerConn, FakeTransport, list[Request]]:
    seen: list[Request] = []

    def begin(conn: HttpServerConn, request: Request) -> None:
        seen.append(request)
        request.body.discard()
        conn.write(answer)
        conn.finished(request)

    conn = HttpServerConn(begin)
    transport = FakeTransport()
    conn.connection_made(transport)
    return conn, transport, seen


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_pipelined_requests_are_handled_in_order():
    conn, transport, seen = _server()
    conn.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    await _settle()
    assert [r.target for r in seen] == [b"/a", b"/b", b"/c"]
    assert transport.written.count(b"HTTP/1.1 200 OK") == 3
    assert not transport.closed


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_a_request_split_anywhere_parses_the_same(cuts: list[int]):
    raw = (b"PUT /path/x?y=1 HTTP/1.1\r\nHost: example\r\nX-Long: " + b"v" * 50 +
           b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def run() -> tuple[list[Request], bytes]:
        conn, _, seen = _server()
        bodies: list[bytes] = []
        pos = 0
        for cut in cuts:
            if pos >= len(raw):
                break
            conn.data_received(raw[pos:pos + cut])
            pos += cut
        if pos < len(raw):
            conn.data_received(raw[pos:])
        await _settle()
        return seen, b"".join(bodies)

    seen, _ = asyncio.run(run())
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "PUT" and request.target == b"/path/x?y=1"
    assert (b"X-Long", b"v" * 50) in request.headers
    assert request.body.done and request.body.size == 11


async def test_a_head_too_large_gets_431_and_the_connection_closes():
    conn, transport, seen = _server()
    conn.data_received(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 1) + b"\r\n\r\n")
    await _settle()
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.closed and not seen


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"G\x00T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
])
async def test_ambiguous_or_broken_requests_get_400(raw: bytes):
    conn, transport, seen = _server()
    conn.data_received(raw)
    await _settle()
    assert transport.written.startswith(b"HTTP/1.1 400 "), transport.written[:40]
    assert transport.closed and not seen


async def test_an_error_after_good_requests_is_answered_after_them():
    conn, transport, seen = _server()
    conn.data_received(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    await _settle()
    assert [r.target for r in seen] == [b"/ok"]
    first, _, rest = transport.written.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 ") and rest.startswith(b"HTTP/1.1 400 ")
    assert transport.closed


async def test_connection_close_and_http10_end_the_connection():
    conn, transport, _ = _server()
    conn.data_received(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    await _settle()
    assert transport.closed
    conn, transport, _ = _server()
    conn.data_received(b"GET / HTTP/1.0\r\n\r\n")
    await _settle()
    assert transport.closed


async def test_an_upgrade_keeps_the_bytes_after_it_for_the_tunnel():
    conn, transport, seen = _server(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    tunnel = FakeTransport()

    def begin(c: HttpServerConn, request: Request) -> None:
        seen.append(request)
        tail = c.become_tunnel(tunnel)
        tunnel.write(tail)
        c.finished(request)

    conn._begin = begin  # noqa: SLF001 - the handler decides to tunnel
    conn.data_received(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nFRAME1")
    await _settle()
    conn.data_received(b"FRAME2")
    assert seen[0].upgrade
    assert tunnel.written == b"FRAME1FRAME2"


def test_a_body_is_kept_for_retries_up_to_the_limit():
    body = Body()
    body.feed(b"a" * 100)
    body.finish()
    assert body.replayable and body.replay() == b"a" * 100
    big = Body()
    big.feed(b"a" * REPLAY_LIMIT)
    assert big.replayable
    big.feed(b"a")
    assert not big.replayable


def test_a_held_body_pauses_reading_and_resumes_when_piped():
    paused: list[bool] = []
    body = Body(lambda: paused.append(True), lambda: paused.append(False))
    for _ in range(5):
        body.feed(b"x" * 100_000)
    assert paused == [True]
    got: list[bytes] = []
    body.pipe(got.append)
    assert paused == [True, False] and sum(map(len, got)) == 500_000


class Sink:
    def __init__(self) -> None:
        self.heads: list[Any] = []
        self.body = b""
        self.done = 0
        self.failed: list[str] = []

    def response_head(self, head: Any) -> None:
        self.heads.append(head)

    def response_body(self, data: bytes) -> None:
        self.body += data

    def response_done(self) -> None:
        self.done += 1

    def response_failed(self, reason: str) -> None:
        self.failed.append(reason)

    def flush(self) -> None:
        pass


def _client() -> tuple[HttpClientConn, FakeTransport, list[HttpClientConn]]:
    conn = HttpClientConn("k")
    transport = FakeTransport()
    conn.connection_made(transport)
    idle: list[HttpClientConn] = []
    conn.on_idle = idle.append
    return conn, transport, idle


def test_a_head_response_ends_at_its_head_and_the_connection_is_reused():
    conn, transport, idle = _client()
    sink = Sink()
    conn.send(b"HEAD / HTTP/1.1\r\n\r\n", "HEAD", sink)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert sink.done == 1 and sink.body == b"" and idle == [conn]
    second = Sink()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", "GET", second)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert second.done == 1 and second.body == b"ok"


def test_interim_responses_come_before_the_final_one():
    conn, _, _ = _client()
    sink = Sink()
    conn.send(b"POST / HTTP/1.1\r\n\r\n", "POST", sink)
    conn.data_received(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert [h.status for h in sink.heads] == [100, 201] and sink.done == 1


def test_a_chunked_response_split_anywhere_and_a_close_delimited_one():
    conn, _, idle = _client()
    sink = Sink()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", "GET", sink)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    for i in range(len(raw)):
        conn.data_received(raw[i:i + 1])
    assert sink.body == b"abcde" and sink.done == 1 and idle == [conn]
    conn, transport, idle = _client()
    sink = Sink()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", "GET", sink)
    conn.data_received(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    conn.eof_received()
    assert sink.body == b"until the end" and sink.done == 1 and not idle


def test_a_reset_before_the_response_fails_the_request():
    conn, _, _ = _client()
    sink = Sink()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", "GET", sink)
    conn.connection_lost(ConnectionResetError())
    assert sink.failed == ["reset"]


def test_garbage_from_the_upstream_fails_the_request():
    conn, transport, _ = _client()
    sink = Sink()
    conn.send(b"GET / HTTP/1.1\r\n\r\n", "GET", sink)
    conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    assert sink.failed == ["bad_response"] and transport.aborted


@pytest.mark.parametrize("raw", [b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                                 b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"])
async def test_framing_llhttp_lets_through_is_refused_before_any_app(raw: bytes):
    conn, transport, seen = _server()
    conn.data_received(raw)
    await _settle()
    assert not seen
    assert transport.written.startswith(b"HTTP/1.1 400 ") and transport.closed


def test_hop_by_hop_headers_are_not_forwarded_and_host_always_is():
    headers = [(b"Host", b"h"), (b"Connection", b"keep-alive, X-Private, Host"), (b"X-Private", b"1"),
               (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Transfer-Encoding", b"chunked"),
               (b"Content-Length", b"3"), (b"Proxy-Connection", b"x"), (b"Upgrade", b"websocket"), (b"X-Ok", b"1")]
    assert end_to_end(headers) == [(b"Host", b"h"), (b"X-Ok", b"1")]
    assert (b"Upgrade", b"websocket") in end_to_end(headers, keep_upgrade=True)


async def test_a_stalled_request_and_a_long_idle_connection_are_closed_by_the_sweep():
    from mesh.proxy.http.server_conn import HEAD_TIMEOUT, sweep_stalled

    stalled, stalled_transport, _ = _server()
    stalled.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # a head that stops arriving
    idle, idle_transport, seen = _server()
    idle.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await _settle()
    assert seen and not idle_transport.closed
    start = max(stalled.last_active, idle.last_active)
    assert sweep_stalled([stalled, idle], start + 10, keepalive_idle=300) == 0
    assert sweep_stalled([stalled, idle], start + HEAD_TIMEOUT + 1, keepalive_idle=300) == 1
    assert stalled_transport.closed and not idle_transport.closed
    assert sweep_stalled([idle], start + 301, keepalive_idle=300) == 1 and idle_transport.closed
