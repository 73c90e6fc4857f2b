"""The server RPC transport over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest

from mesh.agent.config import ConfigError, parse_args
from mesh.agent.conn_limits import ConnLimiter
from mesh.agent.rpc import PROTOCOL_MAGIC, RPCClient, RPCError, RPCServer, _frame, hello_proof
from mesh.catalog.errors import InvalidRequest

KEY = base64.b64encode(b"r" * 32).decode()


@pytest.fixture
async def server():
    srv = RPCServer("127.0.0.1", 0, KEY)

    async def slow(args):
        await asyncio.sleep(float(args["for"]))
        return "slow"

    async def echo(args):
        return args

    async def bad(args):
        raise InvalidRequest("nope: bad input")

    srv.register("Slow", slow)
    srv.register("Echo", echo)
    srv.register("Bad", bad)
    await srv.start()
    yield srv
    await srv.stop()


async def test_a_slow_call_does_not_hold_up_others_on_the_same_connection(server):
    client = RPCClient(KEY)
    address = f"127.0.0.1:{server.port}"
    slow = asyncio.create_task(client.call(address, "Slow", {"for": 1.0}, timeout=5))
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    results = await asyncio.gather(*(client.call(address, "Echo", {"i": i}) for i in range(50)))
    assert time.monotonic() - t0 < 0.5
    assert [r["i"] for r in results] == list(range(50))
    assert await slow == "slow"
    assert len(client._conns) == 1  # one multiplexed connection
    await client.close()


async def test_errors_and_timeouts(server):
    client = RPCClient(KEY)
    address = f"127.0.0.1:{server.port}"
    with pytest.raises(RPCError, match="nope: bad input"):
        await client.call(address, "Bad", {})
    with pytest.raises(RPCError, match="unknown RPC method"):
        await client.call(address, "Missing", {})
    with pytest.raises(RPCError, match="timed out"):
        await client.call(address, "Slow", {"for": 2}, timeout=0.2)
    assert await client.call(address, "Echo", {"ok": 1}) == {"ok": 1}  # connection still usable
    with pytest.raises(RPCError):
        await client.call("127.0.0.1:1", "Echo", {}, timeout=1)
    await client.close()


async def test_wrong_key_is_refused(server):
    other = RPCClient(base64.b64encode(b"x" * 32).decode())
    with pytest.raises(RPCError):
        await other.call(f"127.0.0.1:{server.port}", "Echo", {}, timeout=2)
    await other.close()


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw connection that has read the server's greeting; returns its nonce."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    preamble = await asyncio.wait_for(reader.readexactly(len(PROTOCOL_MAGIC) + 16), 2)
    assert preamble.startswith(PROTOCOL_MAGIC)
    return reader, writer, preamble[len(PROTOCOL_MAGIC):]


async def _closed(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except ConnectionError:
        return True


async def test_garbage_bytes_close_only_that_connection(server):
    reader, writer, _ = await _raw(server.port)
    writer.write(b"\xff\xff\xff\xffgarbage" * 4)  # 44 bytes: not the 32-byte proof of the key
    await writer.drain()
    assert await _closed(reader, 2)
    writer.close()
    client = RPCClient(KEY)
    assert await client.call(f"127.0.0.1:{server.port}", "Echo", {"still": True}) == {"still": True}
    await client.close()


@pytest.fixture
async def strict():
    """A server with a short handshake timeout and at most 3 connections per client."""
    srv = RPCServer("127.0.0.1", 0, KEY, handshake_timeout=0.3, max_conns_per_client=3)
    cancelled = asyncio.Event()

    async def forever(args):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def picky(args):
        return args["x"]["y"]  # a TypeError on a list: the handler did not check its input

    async def echo(args):
        return args

    srv.register("Forever", forever)
    srv.register("Picky", picky)
    srv.register("Echo", echo)
    srv.cancelled = cancelled
    await srv.start()
    yield srv
    await srv.stop()


async def test_a_huge_declared_frame_before_authentication_is_never_buffered(strict):
    reader, writer, _ = await _raw(strict.port)
    writer.write(b"\x03\xff\xff\xff" + b"\0" * 65536)  # declares 64 MiB, then streams
    t0 = time.monotonic()
    assert await _closed(reader, 2)
    assert time.monotonic() - t0 < 0.25  # refused on the first 32 bytes, not at the timeout
    writer.close()


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(strict):
    reader, writer, _ = await _raw(strict.port)
    t0 = time.monotonic()
    assert await _closed(reader, 3)
    assert 0.25 < time.monotonic() - t0 < 2
    writer.close()


async def test_connections_past_the_per_client_cap_are_closed_at_once(strict):
    held = [await _raw(strict.port) for _ in range(3)]
    reader, writer = await asyncio.open_connection("127.0.0.1", strict.port)
    assert await _closed(reader, 0.25)  # no greeting, closed at once
    writer.close()
    held[0][1].close()
    await _closed(held[0][0], 1)
    # a slot freed: the next one is served (retried while the server notices the close)
    for _ in range(50):
        client = RPCClient(KEY)
        try:
            assert await client.call(f"127.0.0.1:{strict.port}", "Echo", {"n": 1}, timeout=1) == {"n": 1}
            break
        except RPCError:
            await asyncio.sleep(0.02)
        finally:
            await client.close()
    else:
        raise AssertionError("a freed slot was not reused")
    for _, w, _ in held[1:]:
        w.close()


async def test_a_dribbled_frame_is_dropped_but_an_idle_authenticated_connection_stays(strict):
    key = base64.b64decode(KEY)
    reader, writer, nonce = await _raw(strict.port)
    writer.write(hello_proof(key, nonce))
    frame = _frame(key, {"m": "Echo", "a": {"i": 1}, "s": 1})
    await asyncio.sleep(0.5)  # idle past the handshake timeout: allowed once authenticated
    writer.write(frame)
    await writer.drain()
    header = await asyncio.wait_for(reader.readexactly(4), 1)
    await reader.readexactly(int.from_bytes(header, "big"))
    t0 = time.monotonic()
    for byte in frame[:10]:  # a frame started and then dribbled, slower than the deadline allows
        if writer.is_closing():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.1)
    assert await _closed(reader, 2)
    assert time.monotonic() - t0 < 1.5
    writer.close()


async def test_wrong_argument_types_are_answered_invalid_and_unexpected_failures_error(strict):
    client = RPCClient(KEY)
    address = f"127.0.0.1:{strict.port}"
    with pytest.raises(RPCError) as err:
        await client.call(address, "Echo", ["not", "a", "map"], timeout=2)  # type: ignore[arg-type]
    assert err.value.kind == "invalid"
    with pytest.raises(RPCError) as err:
        await client.call(address, "Picky", {"x": ["a list"]}, timeout=2)
    assert err.value.kind == "error" and "TypeError" in str(err.value)
    assert await client.call(address, "Echo", {"ok": 1}) == {"ok": 1}
    await client.close()


async def test_a_call_the_client_gives_up_on_is_cancelled_on_the_server(strict):
    client = RPCClient(KEY)
    address = f"127.0.0.1:{strict.port}"
    with pytest.raises(RPCError, match="timed out"):
        await client.call(address, "Forever", {}, timeout=0.2)
    await asyncio.wait_for(strict.cancelled.wait(), 1)  # the connection stays open, the call does not
    assert await client.call(address, "Echo", {"ok": 2}) == {"ok": 2}
    await client.close()


async def test_closing_the_connection_cancels_its_calls(strict):
    client = RPCClient(KEY)
    address = f"127.0.0.1:{strict.port}"
    call = asyncio.create_task(client.call(address, "Forever", {}, timeout=30))
    await asyncio.sleep(0.1)
    client._conns[address].writer.transport.abort()  # the agent went away without a word
    await asyncio.wait_for(strict.cancelled.wait(), 1)
    with pytest.raises(RPCError):
        await call
    await client.close()


def test_conn_limiter_counts_per_client_and_frees_slots():
    limiter = ConnLimiter(2)
    assert limiter.acquire("10.0.0.1") and limiter.acquire("10.0.0.1")
    assert not limiter.acquire("10.0.0.1")  # the third from one address
    assert limiter.acquire("10.0.0.2")  # others are not affected
    limiter.release("10.0.0.1")
    assert limiter.acquire("10.0.0.1")
    assert limiter.total() == 3
    assert ConnLimiter(0).acquire("x")  # 0: no cap


def test_limits_block_sets_the_listener_limits_and_rejects_bad_values(tmp_path):
    conf = tmp_path / "limits.hcl"
    conf.write_text('limits {\n  rpc_handshake_timeout = "2s"\n  rpc_max_conns_per_client = 7\n'
                    '  http_max_conns_per_client = 0\n  http_header_timeout = "3s"\n  http_idle_timeout = "1m"\n'
                    '  rpc_rate = 100\n}\n')
    cfg = parse_args(["-dev", "-config-file", str(conf)])
    assert (cfg.rpc_handshake_timeout, cfg.rpc_max_conns_per_client, cfg.http_max_conns_per_client,
            cfg.http_header_timeout, cfg.http_idle_timeout) == (2.0, 7, 0, 3.0, 60.0)
    defaults = parse_args(["-dev"])
    assert (defaults.rpc_handshake_timeout, defaults.rpc_max_conns_per_client,
            defaults.http_max_conns_per_client) == (5.0, 100, 200)
    for body, error in (({"limits": {"rpc_max_conns_per_client": -1}}, "must not be negative"),
                        ({"limits": {"http_header_timeout": "0s"}}, "must be positive"),
                        ({"limits": {"rpc_handshake_timeout": "soon"}}, "limits.rpc_handshake_timeout"),
                        ({"limits": {"no_such_limit": 1}}, "unknown limits key")):
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(body))
        with pytest.raises(ConfigError, match=error):
            parse_args(["-dev", "-config-file", str(bad)])
