"""Issue 10, the server RPC port, replayed against a real single server with -encrypt.

Before the fix the port buffered up to 64 MiB per connection before checking the
frame's MAC, with no read timeout and no connection limit (6 connections held 418 MiB
indefinitely), and an RPC with arguments of the wrong type never answered.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time

import pytest

from mesh.agent.rpc import PROTOCOL_MAGIC, RPCClient, RPCError, _frame, hello_proof
from tests.harness.cluster import KEY, Agent, closed_within, free_port, metric_value, retry, rss_kib

HANDSHAKE = 1.0  # limits.rpc_handshake_timeout for these tests (default 5s)
PER_CLIENT = 20  # limits.rpc_max_conns_per_client (default 100)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rpc-limits")
    conf = tmp / "limits.json"
    conf.write_text(json.dumps({"limits": {"rpc_handshake_timeout": f"{HANDSHAKE}s",
                                           "rpc_max_conns_per_client": PER_CLIENT}}))
    agent = Agent("s1", str(tmp / "data"), free_port(), free_port(), free_port(), [], str(tmp / "s1.log"))
    agent.args = ["-server", "-bootstrap-expect", "1", "-node", "s1", "-data-dir", agent.data_dir,
                  "-bind", "127.0.0.1", "-encrypt", KEY, "-http-port", str(agent.http_port),
                  "-server-port", str(agent.server_port), "-raft-port", str(agent.raft_port),
                  "-dns-port", "-1", "-config-file", str(conf)]
    agent.start()
    try:
        retry(lambda: agent.leader(), 20, 0.05, "single server leader")
        yield agent
    finally:
        agent.kill()


def metric(agent: Agent, name: str, **labels: str) -> float:
    data = agent.get("/v1/agent/metrics")
    return metric_value(data, name, **labels)


def connect(agent: Agent) -> socket.socket:
    return socket.create_connection(("127.0.0.1", agent.server_port), timeout=5)


def test_unauthenticated_connections_cannot_hold_memory_and_are_closed(server):
    """Six connections each declaring a 64 MiB frame and streaming it: refused on the
    first 32 bytes; silent ones are closed after the handshake timeout."""
    before = rss_kib(server)
    chunk = b"\0" * (1 << 20)
    for _ in range(6):
        s = connect(server)
        s.settimeout(2)
        sent = 0
        try:
            s.sendall(b"\x03\xff\xff\xff")  # a 64 MiB frame follows...
            while sent < 64:
                s.sendall(chunk)
                sent += 1
        except OSError:
            pass  # the server hung up: what should happen
        assert sent < 16, f"the server took {sent} MiB from a peer that never proved the key"
        assert closed_within(s, 2)
        s.close()
    silent = [connect(server) for _ in range(10)]
    t0 = time.monotonic()
    assert all(closed_within(s, HANDSHAKE + 3) for s in silent)
    assert time.monotonic() - t0 < HANDSHAKE + 3
    for s in silent:
        s.close()
    growth_mib = (rss_kib(server) - before) / 1024
    assert growth_mib < 32, f"RSS grew by {growth_mib:.0f} MiB"
    assert metric(server, "mesh.rpc.connections.rejected", reason="handshake_timeout") >= 10
    assert metric(server, "mesh.rpc.connections.rejected", reason="handshake_failed") >= 6


def test_connections_past_the_per_client_limit_are_closed_at_once(server):
    held = []
    try:
        for _ in range(PER_CLIENT):
            s = connect(server)
            assert s.recv(len(PROTOCOL_MAGIC)) == PROTOCOL_MAGIC  # accepted and greeted
            held.append(s)
        extra = connect(server)
        t0 = time.monotonic()
        assert closed_within(extra, 1)
        assert time.monotonic() - t0 < 0.5
        extra.close()
        assert metric(server, "mesh.rpc.connections.rejected", reason="per_client_limit") >= 1
    finally:
        for s in held:
            s.close()

    async def call() -> object:
        client = RPCClient(KEY)
        try:
            return await client.call(server.rpc, "Status.Ping", {}, timeout=2)
        finally:
            await client.close()

    assert retry(lambda: asyncio.run(call()), 5, 0.05, "a call once the slots are free") is True


def test_a_dribbled_frame_is_dropped_after_authentication_too(server):
    key = base64.b64decode(KEY)
    s = connect(server)
    greeting = s.recv(len(PROTOCOL_MAGIC) + 16, socket.MSG_WAITALL)
    s.sendall(hello_proof(key, greeting[len(PROTOCOL_MAGIC):]))
    frame = _frame(key, {"m": "Status.Ping", "a": {}, "s": 1})
    t0 = time.monotonic()
    for byte in frame[:6]:
        try:
            s.sendall(bytes([byte]))
        except OSError:
            break
        time.sleep(0.3)  # slower than any frame may take
    assert closed_within(s, HANDSHAKE + 2)
    assert time.monotonic() - t0 < HANDSHAKE + 2.5
    s.close()
    assert metric(server, "mesh.rpc.connections.rejected", reason="frame_timeout") >= 1


WRONG_ARGS = [
    ("Read", {"q": "catalog.service", "p": "not a map"}),
    ("Read", {"q": {"a": 1}}),
    ("Read", {"q": "catalog.service", "p": {"name": ["web"]}}),
    ("Read", {"q": "catalog.service", "p": {}}),  # no name
    ("Read", {"q": "catalog.nodes", "o": {"i": "abc"}}),
    ("Read", {"q": "catalog.nodes", "o": [1, 2]}),
    ("Node.Heartbeat", {"node": {"a": 1}}),
    ("Node.Heartbeat", {"node": "n1", "tagged": [["lan", "1.2.3.4"]]}),
    ("Node.Leave", {"node": 1}),
    ("ConnectCA.Sign", {"service": ["web"], "node": "n1", "csr": "x"}),
    ("ConnectCA.Configure", {"body": "x"}),
    ("Server.Join", {"raft": "127.0.0.1:1", "node": 5}),
    ("Server.Remove", {"raft": {"x": 1}}),
    ("Catalog.Apply", {"raw": b"\x01\x05"}),
    ("Catalog.Apply", {"raw": "text"}),
    ("Status.Ping", ["a", "list"]),
]


def test_rpc_arguments_of_the_wrong_type_are_answered_invalid_at_once(server):
    async def run() -> list[tuple[str, str, float]]:
        client = RPCClient(KEY)
        out = []
        try:
            for method, args in WRONG_ARGS:
                t0 = time.monotonic()
                try:
                    await client.call(server.rpc, method, args, timeout=3)  # type: ignore[arg-type]
                    out.append((method, "answered", time.monotonic() - t0))
                except RPCError as exc:
                    out.append((method, exc.kind, time.monotonic() - t0))
        finally:
            await client.close()
        return out

    results = asyncio.run(run())
    for (method, args), (_, kind, seconds) in zip(WRONG_ARGS, results, strict=True):
        assert kind == "invalid", f"{method} {args!r}: {kind}"
        assert seconds < 1, f"{method} {args!r} took {seconds:.1f}s"
    assert server.leader()  # still serving, and no peer was added by the bad Join
    assert len(server.get("/v1/status/peers")) == 1
    assert "Traceback" not in server.log_tail(400)


def test_blocking_reads_stop_when_the_client_gives_up_or_leaves(server):
    index = int(server.request("GET", "/v1/catalog/service/web")[1]["X-Consul-Index"])
    read = {"q": "catalog.service", "p": {"name": "web"}, "o": {"i": index, "w": 300.0}}

    async def run() -> None:
        client = RPCClient(KEY)
        # 200 reads that time out on the client: each is cancelled on the server
        calls = [client.call(server.rpc, "Read", read, timeout=0.5) for _ in range(200)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RPCError) and "timed out" in str(r) for r in results)
        await asyncio.to_thread(retry, lambda: metric(server, "mesh.rpc.inflight.requests") == 0, 3, 0.05,
                                "cancelled reads gone from the server")
        # 200 reads whose connection then closes
        tasks = [asyncio.create_task(client.call(server.rpc, "Read", read, timeout=60)) for _ in range(200)]
        await asyncio.to_thread(retry, lambda: metric(server, "mesh.rpc.inflight.requests") >= 200, 5, 0.05,
                                "200 blocking reads waiting")
        await client.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(retry, lambda: metric(server, "mesh.rpc.inflight.requests") == 0, 3, 0.05,
                                "reads of a closed connection gone from the server")

    asyncio.run(run())
    assert os.path.exists(f"/proc/{server.proc.pid}")
