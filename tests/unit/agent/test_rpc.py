"""The server RPC transport over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from mesh.agent.rpc import RPCClient, RPCError, RPCServer
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


async def test_garbage_bytes_close_only_that_connection(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"\xff\xff\xff\xffgarbage")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    client = RPCClient(KEY)
    assert await client.call(f"127.0.0.1:{server.port}", "Echo", {"still": True}) == {"still": True}
    await client.close()
