"""MuxConnection and MuxStream over a real mutual-TLS connection on 127.0.0.1, on the
default asyncio loop and on uvloop: many echoing streams, backpressure from a slow
reader to the writer, resets, refusals, the end of the TLS connection, keepalive."""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl
from collections.abc import Awaitable, Callable

import pytest
import uvloop

from mesh.ca import x509 as cax
from mesh.proxy.mux import ALPN
from mesh.proxy.mux_frame import HEADER_SIZE, INITIAL_WINDOW, Frame, FrameDecoder, encode_frame
from mesh.proxy.mux_stream import (
    MuxClosedError,
    MuxLimits,
    MuxStream,
    StreamRefusedError,
    StreamResetError,
)
from mesh.proxy.mux_transport import DEFER, MuxConnection, mux_negotiated

TD = "11111111-2222-3333-4444-555555555555.consul"


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for `api`, client context for `web`), both offering our ALPN."""
    now = datetime.datetime.now(datetime.UTC)
    key = cax.generate_key("ec", 256)
    root = cax.build_root(key, TD, 1, now, datetime.timedelta(days=1))
    directory = tmp_path_factory.mktemp("mux-tls")
    contexts = []
    for serial, (side, svc) in enumerate([(ssl.PROTOCOL_TLS_SERVER, "api"),
                                          (ssl.PROTOCOL_TLS_CLIENT, "web")], start=10):
        uri = f"spiffe://{TD}/ns/default/dc/dc1/svc/{svc}"
        key_pem, csr_pem = cax.make_csr(uri)
        csr, _ = cax.csr_service_uri(csr_pem.encode())
        leaf = cax.sign_leaf(csr, uri, key, root, serial, now, datetime.timedelta(hours=1))
        (directory / f"{svc}.crt").write_text(cax.pem(leaf))
        (directory / f"{svc}.key").write_text(key_pem)
        ctx = ssl.SSLContext(side)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_cert_chain(directory / f"{svc}.crt", directory / f"{svc}.key")
        ctx.load_verify_locations(cadata=cax.pem(root))
        ctx.set_alpn_protocols([ALPN])
        contexts.append(ctx)
    return contexts[0], contexts[1]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request) -> Callable[[Awaitable[None]], None]:
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(coro: Awaitable[None]) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await coro

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(bounded())
    return runner


class Recording(MuxConnection):
    """Keeps its TLS transport where a test can reach it, and says when it has one."""

    def __init__(self, made: asyncio.Future[None], **kw) -> None:
        super().__init__(**kw)
        self.made = made

    def connection_made(self, transport):
        self.tls_transport = transport
        super().connection_made(transport)
        if not self.made.done():
            self.made.set_result(None)


class Pair:
    """A mux server and one client connection to it."""

    def __init__(self) -> None:
        self.servers: list[MuxConnection] = []
        self.client: MuxConnection
        self.transport: asyncio.BaseTransport
        self.listener: asyncio.Server

    @classmethod
    async def start(cls, tls, on_stream, limits: MuxLimits | None = None,
                    client_limits: MuxLimits | None = None) -> Pair:
        pair, loop = cls(), asyncio.get_running_loop()
        made = loop.create_future()

        def server_side() -> MuxConnection:
            conn = Recording(made, client=False, on_stream=on_stream, limits=limits)
            pair.servers.append(conn)
            return conn
        pair.listener = await loop.create_server(server_side, "127.0.0.1", 0, ssl=tls[0])
        port = pair.listener.sockets[0].getsockname()[1]
        pair.transport, pair.client = await loop.create_connection(
            lambda: MuxConnection(client=True, limits=client_limits), "127.0.0.1", port, ssl=tls[1])
        await made  # TLS 1.3: the server side finishes its handshake after the client
        return pair

    async def stop(self) -> None:
        self.client.close()
        self.listener.close()
        await self.client.wait_closed()
        for conn in self.servers:
            await conn.wait_closed()


class Echo(asyncio.Protocol):
    """Echoes with backpressure, half-closes when the peer does."""

    def connection_made(self, transport):
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        self.transport.write_eof()
        return True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


class Sender(asyncio.Protocol):
    """Writes `payload` respecting pause_writing, then FIN; collects what comes back."""

    def __init__(self, payload: bytes = b"", chunk: int = 64 * 1024) -> None:
        self.payload, self.chunk, self.pos = memoryview(payload), chunk, 0
        self.got = bytearray()
        self.paused = False
        self.pauses = self.resumes = 0
        self.max_buffered = 0
        self.eof = False
        self.lost = asyncio.get_running_loop().create_future()
        self.changed = asyncio.Event()
        self.paused_once = asyncio.Event()

    def connection_made(self, transport):
        self.transport = transport
        self.pump()

    def pump(self):
        while not self.paused and self.pos < len(self.payload):
            self.transport.write(self.payload[self.pos:self.pos + self.chunk])
            self.pos += self.chunk
            self.max_buffered = max(self.max_buffered, self.transport.get_write_buffer_size())
        if self.payload and self.pos >= len(self.payload) and not self.paused:
            self.transport.write_eof()

    def pause_writing(self):
        self.paused = True
        self.pauses += 1
        self.paused_once.set()

    def resume_writing(self):
        self.paused = False
        self.resumes += 1
        self.pump()

    def data_received(self, data):
        self.got += data
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        while len(self.got) < n:
            self.changed.clear()
            await self.changed.wait()

    def eof_received(self):
        self.eof = True
        return True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


def test_fifty_streams_echo_megabytes_intact(run, tls):
    async def main():
        pair = await Pair.start(tls, lambda stream: Echo())
        assert mux_negotiated(pair.transport) and pair.client.usable
        rng = random.Random(12)
        payloads = [rng.randbytes(2 * 1024 * 1024 + i) for i in range(50)]
        streams = [pair.client.open_stream(lambda p=p: Sender(p)) for p in payloads]
        assert [s.get_extra_info("mux_stream_id") for s in streams] == list(range(1, 101, 2))
        assert pair.client.idle_since is None and pair.client.active_streams == 50
        results = await asyncio.gather(*(s.get_protocol().lost for s in streams))
        assert results == [None] * 50
        for stream, payload in zip(streams, payloads, strict=True):
            assert stream.get_protocol().eof and stream.get_protocol().got == payload
            assert stream.is_closing()
        assert pair.client.active_streams == 0 and pair.client.streams_opened == 50
        assert pair.client.idle_since is not None and pair.servers[0].active_streams == 0
        await pair.stop()
    run(main())


def test_a_server_that_speaks_first(run, tls):
    class Greeter(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.write(b"220 ready\r\n")

    async def main():
        pair = await Pair.start(tls, lambda stream: Greeter())
        stream = pair.client.open_stream(Sender)  # writes nothing: the SYN goes alone
        async with asyncio.timeout(5):
            await stream.get_protocol().wait_for(11)
        assert stream.get_protocol().got == b"220 ready\r\n"
        await pair.stop()
    run(main())


def test_a_slow_reader_pauses_the_writer_and_bounds_its_memory(run, tls):
    sinks: list[Sink] = []

    class Sink(Sender):
        def connection_made(self, transport):
            self.transport = transport
            transport.pause_reading()
            sinks.append(self)

    async def main():
        pair = await Pair.start(tls, lambda stream: Sink())
        payload = random.Random(3).randbytes(8 * 1024 * 1024)
        stream = pair.client.open_stream(lambda: Sender(payload))
        sender = stream.get_protocol()
        await sender.paused_once.wait()
        for _ in range(3):  # frames are ordered: after a pong, the peer has seen our data
            await pair.client.ping()
        high = stream.get_write_buffer_limits()[1]
        assert sender.paused and sinks[0].got == b""
        assert sender.max_buffered <= high + sender.chunk
        # the writer stops after one window in flight plus its own water marks
        assert INITIAL_WINDOW <= sender.pos <= INITIAL_WINDOW + high + 2 * sender.chunk
        assert pair.transport.get_write_buffer_size() <= INITIAL_WINDOW
        sinks[0].transport.resume_reading()
        await sinks[0].wait_for(len(payload))
        assert sinks[0].got == payload and sender.resumes >= 1
        assert sinks[0].eof  # the FIN waited behind the data the paused reader had not taken
        await pair.stop()
    run(main())


def test_a_peer_that_stops_reading_the_connection_pauses_every_writer(run, tls):
    sinks: list[Sender] = []
    arrived = asyncio.Event()

    def on_stream(stream):
        sinks.append(Sender())
        arrived.set()
        return sinks[-1]

    async def main():
        pair = await Pair.start(tls, on_stream)
        pair.servers[0].tls_transport.pause_reading()  # the whole connection, not a stream
        rng = random.Random(5)
        payloads = [rng.randbytes(2 * 1024 * 1024) for _ in range(40)]
        streams = [pair.client.open_stream(lambda p=p: Sender(p)) for p in payloads]
        for stream in streams:
            await stream.get_protocol().paused_once.wait()
        limits = pair.client.limits
        for stream in streams:
            assert stream.get_protocol().max_buffered <= limits.stream_high_water + 64 * 1024
        # past its high-water mark the TLS transport only got what one flush held
        assert pair.transport.get_write_buffer_size() <= (limits.transport_high_water
                                                          + 2 * limits.write_batch)
        pair.servers[0].tls_transport.resume_reading()
        while len(sinks) < len(payloads):
            arrived.clear()
            await arrived.wait()
        for sink, payload in zip(sinks, payloads, strict=True):
            await sink.wait_for(len(payload))
            assert sink.got == payload
        await pair.stop()
    run(main())


def test_resets_reach_the_other_side_as_connection_lost(run, tls):
    server_protocols: list[Echo] = []

    class AbortOnData(Echo):
        def data_received(self, data):
            self.transport.abort()

    def on_stream(stream: MuxStream):
        protocol = AbortOnData() if len(server_protocols) == 0 else Echo()
        server_protocols.append(protocol)
        return protocol

    async def main():
        pair = await Pair.start(tls, on_stream)
        first = pair.client.open_stream(lambda: Sender(b"boom"))
        assert isinstance(await first.get_protocol().lost, StreamResetError)
        assert await server_protocols[0].lost is None
        second = pair.client.open_stream(Sender)
        second.write(b"ping")
        await second.get_protocol().wait_for(4)
        second.abort()
        assert await second.get_protocol().lost is None
        assert isinstance(await server_protocols[1].lost, StreamResetError)
        assert pair.client.usable and pair.client.active_streams == 0
        await pair.stop()
    run(main())


def test_a_refused_stream_is_retryable(run, tls):
    async def main():
        pair = await Pair.start(tls, lambda stream: None)
        stream = pair.client.open_stream(lambda: Sender(b"hello"))
        assert isinstance(await stream.get_protocol().lost, StreamRefusedError)
        assert pair.client.usable
        await pair.stop()
    run(main())


def test_a_deferred_stream_is_acknowledged_only_when_accepted(run, tls):
    """The sidecar's way of telling "nothing reached the app": the server decides after
    on_stream (DEFER); the opener learns the decision from established()."""

    async def main():
        deferred: list = []
        pair = await Pair.start(tls, lambda stream: deferred.append(stream) or DEFER)
        early = pair.client.open_stream(lambda: Sender(b"sent before the ACK"))
        waiting = early.established()
        await asyncio.sleep(0.05)
        assert deferred and not waiting.done(), "no ACK before accept()"
        echo = Echo()
        deferred[0].accept(echo)
        await waiting
        sender = early.get_protocol()
        await sender.wait_for(len(b"sent before the ACK"))
        assert bytes(sender.got) == b"sent before the ACK"  # held while deferred, then delivered
        refused = pair.client.open_stream(lambda: Sender())
        await asyncio.sleep(0.05)
        deferred[1].refuse()
        with pytest.raises(StreamRefusedError):
            await refused.established()
        assert isinstance(await refused.get_protocol().lost, StreamRefusedError)
        await pair.stop()
    run(main())


@pytest.mark.parametrize("who", ["client aborts", "server closes"])
def test_the_end_of_the_tls_connection_ends_every_stream(run, tls, who):
    server_protocols: list[Echo] = []

    def on_stream(stream):
        server_protocols.append(Echo())
        return server_protocols[-1]

    async def main():
        pair = await Pair.start(tls, on_stream)
        streams = [pair.client.open_stream(Sender) for _ in range(5)]
        for s in streams:
            s.write(b"x")
            await s.get_protocol().wait_for(1)  # echoed: the server side is up
        if who == "client aborts":
            pair.client.abort()
        else:
            pair.servers[0].close()
        for protocol in [s.get_protocol() for s in streams] + server_protocols:
            assert isinstance(await protocol.lost, MuxClosedError)
        assert not pair.client.usable
        with pytest.raises(MuxClosedError):
            pair.client.open_stream(Sender)
        await pair.stop()
    run(main())


def test_stream_extra_info_comes_from_the_tls_connection(run, tls):
    async def main():
        pair = await Pair.start(tls, lambda stream: Echo())
        stream = pair.client.open_stream(Sender)
        sans = dict(stream.get_extra_info("peercert")["subjectAltName"])
        assert sans["URI"].endswith("/svc/api")
        assert stream.get_extra_info("peername")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object").selected_alpn_protocol() == ALPN
        assert stream.get_extra_info("socket") is None and stream.can_write_eof()
        assert await pair.client.ping() >= 0 and pair.client.last_rtt is not None
        await pair.stop()
    run(main())


def test_go_away_drains_then_closes(run, tls):
    async def main():
        pair = await Pair.start(tls, lambda stream: Echo())
        stream = pair.client.open_stream(Sender)
        pair.client.go_away()
        assert not pair.client.usable
        stream.write(b"still works")
        await stream.get_protocol().wait_for(11)
        stream.write_eof()
        assert await stream.get_protocol().lost is None
        await asyncio.wait_for(pair.client.wait_closed(), 5)
        await pair.stop()
    run(main())


def test_a_failing_protocol_loses_its_stream_not_the_connection(run, tls):
    errors = []

    class Broken(Sender):
        def data_received(self, data):
            raise RuntimeError("bug")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        pair = await Pair.start(tls, lambda stream: Echo())
        broken = pair.client.open_stream(Broken)
        broken.write(b"x")
        assert await broken.get_protocol().lost is None
        assert "data_received" in errors[0]["message"]
        fine = pair.client.open_stream(lambda: Sender(b"y" * 100))
        assert await fine.get_protocol().lost is None and fine.get_protocol().got == b"y" * 100
        await pair.stop()
    run(main())


async def _raw_tls_server(tls, received: list[bytes]) -> tuple[asyncio.Server, int]:
    """A TLS peer that records what it gets and never answers."""
    class Mute(asyncio.Protocol):
        def data_received(self, data):
            received.append(data)
    server = await asyncio.get_running_loop().create_server(Mute, "127.0.0.1", 0, ssl=tls[0])
    return server, server.sockets[0].getsockname()[1]


def test_keepalive_gives_up_on_a_silent_peer(run, tls):
    async def main():
        server, port = await _raw_tls_server(tls, [])
        limits = MuxLimits(keepalive_interval=0.05, keepalive_timeout=0.1)
        _, conn = await asyncio.get_running_loop().create_connection(
            lambda: MuxConnection(client=True, limits=limits), "127.0.0.1", port, ssl=tls[1])
        stream = conn.open_stream(Sender)
        error = await stream.get_protocol().lost
        assert isinstance(error, MuxClosedError) and "keepalive" in str(error)
        server.close()
    run(main())


def test_a_protocol_error_gets_go_away_and_the_connection_closed(run, tls):
    async def main():
        pair = await Pair.start(tls, lambda stream: Echo())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", pair.listener.sockets[0].getsockname()[1], ssl=tls[1])
        writer.write(encode_frame(Frame(1, 1, 1, 0)) + b"\x07" + bytes(HEADER_SIZE - 1))
        answer = await reader.read()  # until the server closes
        frames = FrameDecoder().feed(answer)
        assert frames[-1] == (3, 0, 0, 1, b"")  # GoAway(protocol error)
        writer.close()
        await pair.stop()
    run(main())


def test_close_is_fin_and_data_to_a_closed_stream_resets_it(run, tls):
    class CloseOnData(Echo):
        def data_received(self, data):
            self.transport.close()
            self.transport.write(b"dropped: written after close")

    async def main():
        pair = await Pair.start(tls, lambda stream: CloseOnData())
        stream = pair.client.open_stream(Sender)
        sender = stream.get_protocol()
        stream.write(b"request")
        await pair.client.ping()
        await pair.client.ping()
        assert sender.eof and sender.got == b""  # the server's FIN, nothing else
        stream.write(b"more")  # nobody reads it on the other side any more
        assert isinstance(await sender.lost, StreamResetError)
        await pair.stop()
    run(main())


def test_a_peer_that_never_finishes_is_reset_after_fin_timeout(run, tls):
    server_side: list[Echo] = []

    class CloseAtOnce(Echo):
        def connection_made(self, transport):
            super().connection_made(transport)
            server_side.append(self)
            transport.close()

    async def main():
        pair = await Pair.start(tls, lambda stream: CloseAtOnce(),
                                limits=MuxLimits(fin_timeout=0.1))
        loop = asyncio.get_running_loop()
        stream = pair.client.open_stream(Sender)  # its protocol keeps its half open
        started = loop.time()
        assert isinstance(await stream.get_protocol().lost, StreamResetError)
        assert loop.time() - started >= 0.099  # (uvloop keeps time in ms) the linger, not the reset for unread data
        assert await server_side[0].lost is None and stream.get_protocol().eof
        await pair.stop()
    run(main())


def test_stream_misuse(run, tls):
    errors = []

    def on_stream(stream):
        raise RuntimeError("handler bug")

    async def main():
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
        pair = await Pair.start(tls, on_stream)
        stream = pair.client.open_stream(Sender)
        stream.write_eof()
        with pytest.raises(RuntimeError, match="write_eof"):
            stream.write(b"x")
        with pytest.raises(ValueError):
            stream.set_write_buffer_limits(high=1, low=2)
        stream.set_write_buffer_limits(low=1000)
        assert stream.get_write_buffer_limits() == (1000, 4000)
        assert isinstance(await stream.get_protocol().lost, StreamRefusedError)
        assert errors[0]["message"] == "mux on_stream() failed"
        with pytest.raises(ZeroDivisionError):
            pair.client.open_stream(lambda: 1 / 0)
        assert pair.client.active_streams == 0 and pair.client.usable
        await pair.stop()
    run(main())
