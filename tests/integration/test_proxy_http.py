"""The http sidecar pair in one process: web's upstream listener -> (HTTP/1.1 on a pooled
mTLS stream) -> api's public listener -> L7 intentions -> the HTTP test app. Real sockets
on 127.0.0.1, real TLS, real proxies; the agent is a stand-in (api/testing.py). The
end-to-end tests with real agents and config entries are in tests/cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import structlog

from mesh.api.builders import connect_entry, sidecar_service
from mesh.api.client import Client
from mesh.api.testing import FakeAgent
from mesh.proxy.app import Proxy, ProxyOptions
from tests.harness.httpapp import start_app
from tests.harness.testca import TestCA

pytestmark = pytest.mark.timeout(60)

HTTP = {"protocol": "http"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HttpMesh:
    agent: FakeAgent
    ca: TestCA
    upstream_port: int
    api_public: int
    app_port: int
    session: aiohttp.ClientSession
    proxies: dict[str, Proxy] = field(default_factory=dict)
    stops: dict[str, asyncio.Event] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    extra: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def intentions(self, *sources: dict[str, Any]) -> None:
        self.agent.set_intentions("api", [{"DestinationName": "api", **s} for s in sources])

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as response:
            body = await response.read()
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body


async def _start_proxy(mesh: HttpMesh, parent: str) -> None:
    client = Client(mesh.agent.address)
    proxy = Proxy(client, ProxyOptions(sidecar_for=parent, supervised=True, drain_timeout=1),
                  log=structlog.get_logger("test-proxy"))
    stop = asyncio.Event()
    mesh.proxies[parent], mesh.stops[parent] = proxy, stop

    async def run() -> None:
        try:
            await proxy.run(stop)
        finally:
            await client.close()

    mesh.tasks[parent] = asyncio.get_running_loop().create_task(run())
    deadline = time.monotonic() + 10
    while proxy.metrics.ready._value.get() != 1:  # noqa: SLF001 - the gauge is the readiness signal
        if mesh.tasks[parent].done():
            mesh.tasks[parent].result()
        assert time.monotonic() < deadline, f"{parent} proxy not ready: {proxy.builder.problem}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def http_mesh(api_config: dict[str, Any] | None = None) -> AsyncIterator[HttpMesh]:
    test_ca = TestCA()
    runner, app_port = await start_app("api")
    upstream_port, api_public = _free_port(), _free_port()
    async with FakeAgent() as agent, aiohttp.ClientSession() as session:
        agent.set_roots(test_ca.roots())
        agent.set_leaf("web", test_ca.leaf("web"))
        agent.set_leaf("api", test_ca.leaf("api"))
        agent.set_service(sidecar_service("web", _free_port(), local_port=1, config=HTTP, upstreams=[
            {"DestinationName": "api", "LocalBindPort": upstream_port, "Config": HTTP}]))
        agent.set_service(sidecar_service("api", api_public, local_port=app_port, config={**HTTP, **(api_config or {})}))
        agent.set_connect_endpoints("api", [connect_entry("api", "node-1", "127.0.0.1", api_public)])
        mesh = HttpMesh(agent, test_ca, upstream_port, api_public, app_port, session)
        mesh.intentions({"SourceName": "web", "Action": "allow"})
        try:
            await _start_proxy(mesh, "api")
            await _start_proxy(mesh, "web")
            yield mesh
        finally:
            for stop in mesh.stops.values():
                stop.set()
            await asyncio.gather(*mesh.tasks.values(), return_exceptions=True)
            await runner.cleanup()
            for other in mesh.extra:
                await other.cleanup()


async def _raw(port: int, data: bytes, until: bytes = b"", timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until `until` appears or the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        got = b""
        async with asyncio.timeout(timeout):
            while not until or until not in got:
                piece = await reader.read(65536)
                if not piece:
                    break
                got += piece
        return got
    finally:
        writer.close()


async def test_requests_pass_both_sidecars_on_one_pooled_connection():
    async with http_mesh() as mesh:
        for i in range(20):
            status, body = await mesh.get(f"/hello/{i}?x={i}", headers={"X-Test": "yes"})
            assert status == 200
            assert body["path"] == f"/hello/{i}" and body["query"] == f"x={i}"
            assert body["headers"]["x-test"] == "yes"
            assert body["headers"]["host"] == f"127.0.0.1:{mesh.upstream_port}"
        web = mesh.proxies["web"]
        assert web.dialer.mux_counts()[0] == 1
        assert web.peer_pool.size <= 2  # aiohttp's client keeps one connection: one stream carries it
        stats = web.http_stats.route("outbound", "api", "default")
        assert stats.by_class[1] == 20


async def test_bodies_chunked_and_keep_alive_pass_intact():
    async with http_mesh() as mesh:
        payload = bytes(range(256)) * 1024  # 256 KiB: streamed, not kept for retries
        async with mesh.session.post(mesh.url + "/upload", data=payload) as response:
            assert response.status == 200
            assert (await response.json())["body_size"] == len(payload)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(5):
                yield b"part-%d;" % i

        async with mesh.session.post(mesh.url + "/chunked-up", data=chunks()) as response:
            body = await response.json()
            assert body["body"] == "part-0;part-1;part-2;part-3;part-4;"
        async with mesh.session.get(mesh.url + "/stream?chunks=5") as response:
            assert response.headers.get("Transfer-Encoding") == "chunked"
            assert await response.read() == b"piece-0;piece-1;piece-2;piece-3;piece-4;"
        async with mesh.session.head(mesh.url + "/head-me") as response:
            assert response.status == 200
            assert await response.read() == b""
        status, _ = await mesh.get("/after-head")
        assert status == 200


async def test_pipelined_requests_are_answered_in_order():
    async with http_mesh() as mesh:
        requests = b"".join(b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5))
        got = await _raw(mesh.upstream_port, requests + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        paths = [json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"\r\n")[0] if b"\r\n\r\n" in part else b"{}")
                 .get("path") for part in got.split(b"HTTP/1.1 200 OK")[1:]]
        assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4", "/last"]


async def test_expect_continue_and_websocket_pass_through():
    async with http_mesh() as mesh:
        async with mesh.session.post(mesh.url + "/expect", data=b"x" * 1000, expect100=True) as response:
            assert (await response.json())["body_size"] == 1000
        async with mesh.session.ws_connect(mesh.url + "/ws") as ws:
            for i in range(3):
                await ws.send_str(f"m{i}")
                assert (await ws.receive_str()) == f"api:m{i}"
            await ws.send_bytes(b"\x00\x01")
            assert await ws.receive_bytes() == b"\x00\x01"


async def test_a_malformed_request_gets_a_400_from_the_sidecar_and_never_reaches_the_app():
    async with http_mesh() as mesh:
        answer = await _raw(mesh.upstream_port, b"GET /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        answer = await _raw(mesh.upstream_port, b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ")
        answer = await _raw(mesh.upstream_port, b"BLAH\x00 / HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        _, calls = await mesh.get("/calls")
        assert set(calls) == {"/calls"}
