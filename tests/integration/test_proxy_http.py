"""The http sidecar pair in one process: web's upstream listener -> (HTTP/1.1 on a pooled
mTLS stream) -> api's public listener -> L7 intentions -> the HTTP test app. Real sockets
on 127.0.0.1, real TLS, real proxies; the agent is a stand-in (api/testing.py). The
end-to-end tests with real agents and config entries are in tests/cluster."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from mesh.api.builders import connect_entry, sidecar_service
from mesh.api.testing import FakeAgent
from mesh.catalog.chain_types import target_id
from mesh.proxy.app import Proxy
from tests.harness.httpapp import start_app
from tests.harness.inprocess_proxy import start_proxy
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

    def set_intentions(self, *sources: dict[str, Any]) -> None:
        self.agent.set_intentions("api", [{"DestinationName": "api", **s} for s in sources])

    async def intentions(self, *sources: dict[str, Any]) -> None:
        """Set api's intentions and wait (at most 5 s) until every running api sidecar
        decides with them."""
        before = {name: p.current.intentions for name, p in self.proxies.items() if p.current is not None}
        self.set_intentions(*sources)
        deadline = time.monotonic() + 5
        while any(self.proxies[name].current.intentions is old for name, old in before.items()
                  if self.proxies[name].current.registration.service == "api"):
            assert time.monotonic() < deadline, "the api sidecars never took the new intentions"
            await asyncio.sleep(0.02)

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as response:
            body = await response.read()
            try:
                return response.status, json.loads(body)
            except ValueError:
                return response.status, body


@contextlib.asynccontextmanager
async def http_mesh(api_config: dict[str, Any] | None = None,
                    upstream_config: dict[str, Any] | None = None) -> AsyncIterator[HttpMesh]:
    test_ca = TestCA()
    runner, app_port = await start_app("api")
    upstream_port, api_public = _free_port(), _free_port()
    async with FakeAgent() as agent, aiohttp.ClientSession() as session:
        agent.set_roots(test_ca.roots())
        agent.set_leaf("web", test_ca.leaf("web"))
        agent.set_leaf("api", test_ca.leaf("api"))
        agent.set_service(sidecar_service("web", _free_port(), local_port=1, config=HTTP, upstreams=[
            {"DestinationName": "api", "LocalBindPort": upstream_port, "Config": {**HTTP, **(upstream_config or {})}}]))
        agent.set_service(sidecar_service("api", api_public, local_port=app_port, config={**HTTP, **(api_config or {})}))
        agent.set_connect_endpoints("api", [connect_entry("api", "node-1", "127.0.0.1", api_public)])
        mesh = HttpMesh(agent, test_ca, upstream_port, api_public, app_port, session)
        mesh.set_intentions({"SourceName": "web", "Action": "allow"})
        try:
            await start_proxy(mesh, "api")
            await start_proxy(mesh, "web")
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


ADMIN_DENIED = {"SourceName": "web", "Permissions": [
    {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
    {"Action": "allow", "HTTP": {"PathPrefix": "/"}},
]}


async def test_l7_intentions_deny_a_path_and_the_connection_goes_on():
    async with http_mesh() as mesh:
        await mesh.intentions(ADMIN_DENIED)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one_conn:
            async def get(path: str) -> int:
                async with one_conn.get(mesh.url + path) as response:
                    await response.read()
                    return response.status

            assert await get("/public") == 200
            assert await get("/admin/users") == 403
            assert await get("/public/again") == 200  # same connection, still served
        api = mesh.proxies["api"]
        assert api.http_stats.route("inbound", "", "default").denied == 1


async def test_other_spellings_of_a_denied_path_are_denied_too():
    async with http_mesh() as mesh:
        await mesh.intentions(ADMIN_DENIED)
        for spelling in (b"/admin", b"/x/../admin", b"//admin", b"/%61dmin", b"/./admin", b"/admin/../admin/x",
                         b"/%2e%2e/admin", b"/x/%2E%2E/admin"):
            answer = await _raw(mesh.upstream_port, b"GET " + spelling + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 403 "), (spelling, answer[:60])
        _, calls = await mesh.get("/calls")
        assert not any("admin" in path for path in calls)


async def test_methods_and_headers_in_permissions():
    async with http_mesh() as mesh:
        await mesh.intentions({"SourceName": "web", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/api", "Methods": ["GET"],
                                         "Header": [{"Name": "x-team", "Exact": "blue"}]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
        ]})
        assert (await mesh.get("/api/x", headers={"X-Team": "blue"}))[0] == 200
        assert (await mesh.get("/api/x", headers={"X-Team": "red"}))[0] == 403
        async with mesh.session.delete(mesh.url + "/api/x", headers={"X-Team": "blue"}) as response:
            assert response.status == 403


async def test_an_l4_deny_answers_403_per_request_on_an_http_service():
    async with http_mesh() as mesh:
        await mesh.intentions({"SourceName": "web", "Action": "deny"})
        assert (await mesh.get("/x"))[0] == 403
        await mesh.intentions({"SourceName": "web", "Action": "allow"})
        assert (await mesh.get("/x"))[0] == 200


def _router(*routes: dict[str, Any]) -> dict[str, Any]:
    return {"Kind": "service-router", "Name": "api", "Routes": list(routes)}


async def _routed(mesh: HttpMesh, entry: dict[str, Any]) -> None:
    """Write a router and wait until web's sidecar has it."""
    mesh.agent.set_config_entry(entry)
    web = mesh.proxies["web"]
    deadline = time.monotonic() + 5
    def routes() -> int:
        plan = web.current.plans.get("api") if web.current is not None else None
        return len(plan.router.routes) if plan is not None and plan.router is not None else -1

    while routes() != len(entry.get("Routes") or []):
        assert time.monotonic() < deadline, "web's sidecar never took the router"
        await asyncio.sleep(0.02)


async def test_an_idempotent_request_is_retried_and_a_post_is_not():
    async with http_mesh() as mesh:
        await _routed(mesh, _router({"Match": {"HTTP": {"PathPrefix": "/fail"}},
                                     "Destination": {"NumRetries": 2, "RetryOnStatusCodes": [503]}}))
        status, body = await mesh.get("/fail/get-once?times=1")
        assert status == 200 and body["failed_before"] == 1
        async with mesh.session.post(mesh.url + "/fail/post-once?times=1", data=b"x") as response:
            assert response.status == 503  # may have changed something: never sent twice
        status, body = await mesh.get("/fail/get-thrice?times=3")
        assert status == 503  # two retries, then the third failure is the answer
        stats = mesh.proxies["web"].http_stats.route("outbound", "api", "route-0")
        assert stats.retries == 3


async def test_the_route_timeout_answers_504_at_its_time():
    async with http_mesh() as mesh:
        await _routed(mesh, _router({"Match": {"HTTP": {"PathPrefix": "/slow"}},
                                     "Destination": {"RequestTimeout": "300ms"}}))
        started = time.monotonic()
        status, _ = await mesh.get("/slow?ms=3000")
        took = time.monotonic() - started
        assert status == 504
        assert 0.25 < took < 1.5, took
        assert (await mesh.get("/after"))[0] == 200


async def test_local_request_timeout_bounds_the_app():
    async with http_mesh(api_config={"local_request_timeout_ms": 300}) as mesh:
        started = time.monotonic()
        status, _ = await mesh.get("/slow?ms=3000")
        assert status == 504 and time.monotonic() - started < 1.5


async def test_prefix_rewrite_and_header_operations():
    async with http_mesh() as mesh:
        await _routed(mesh, _router({
            "Match": {"HTTP": {"PathPrefix": "/v2/"}},
            "Destination": {"PrefixRewrite": "/", "RequestHeaders": {"Set": {"X-Routed": "yes"}, "Remove": ["X-Secret"]},
                            "ResponseHeaders": {"Add": {"X-Via": "mesh"}}}}))
        async with mesh.session.get(mesh.url + "/v2/items?q=1", headers={"X-Secret": "s"}) as response:
            body = await response.json()
            assert response.headers["X-Via"] == "mesh"
        assert body["path"] == "/items" and body["query"] == "q=1"
        assert body["headers"]["x-routed"] == "yes" and "x-secret" not in body["headers"]


async def test_the_trace_id_reaches_the_app_and_a_trace_starts_when_none_comes():
    async with http_mesh() as mesh:
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        _, body = await mesh.get("/t", headers={"traceparent": parent})
        assert body["headers"]["traceparent"] == parent  # not exporting: passed through as it was
        _, body = await mesh.get("/t", headers={"b3": "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"})
        assert body["headers"]["b3"].startswith("80f198ee56343ba864fe8b2a57d3eff7-")
        _, body = await mesh.get("/t")
        started = body["headers"]["traceparent"].split("-")
        assert len(started) == 4 and len(started[1]) == 32 and started[1] != "0" * 32


async def test_access_log_lines_are_json_with_the_request(tmp_path):
    path = tmp_path / "access.log"
    async with http_mesh() as mesh:
        api = mesh.agent.services["api-sidecar-proxy"]
        mesh.agent.set_service({**api, "Proxy": {**api["Proxy"], "AccessLogs": {
            "Enabled": True, "Type": "file", "Path": str(path)}}})
        deadline = time.monotonic() + 5
        while not mesh.proxies["api"].current.registration.access_logs:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        await mesh.get("/logged?a=1", headers={"traceparent": parent, "User-Agent": "probe"})
        await mesh.intentions(ADMIN_DENIED)
        await mesh.get("/admin")
        deadline = time.monotonic() + 3
        while len(path.read_text().splitlines()) < 2:  # lines are flushed within half a second
            assert time.monotonic() < deadline, "access log lines never appeared"
            await asyncio.sleep(0.05)
        lines = [json.loads(line) for line in path.read_text().splitlines()]
        first, denied = lines[-2], lines[-1]
        assert first["method"] == "GET" and first["path"] == "/logged?a=1" and first["response_code"] == 200
        assert first["source"] == "web" and first["destination"] == "api"
        assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736" and first["user_agent"] == "probe"
        assert first["authz"] == "allow" and first["bytes_sent"] > 0 and first["duration"] >= 0
        assert first["upstream_host"] == f"127.0.0.1:{mesh.app_port}"
        assert denied["response_code"] == 403 and denied["authz"] == "deny" and "L7 intention" in denied["authz_reason"]
        assert len(denied["trace_id"]) == 32 and denied["bytes_sent"] > 0  # refused lines carry both too
        assert re.fullmatch(r"127\.0\.0\.1:\d+", first["downstream_remote_address"])


async def second_instance(mesh: HttpMesh, parent: str, service: str, app_name: str) -> tuple[int, int]:
    """Another app with its own sidecar (instance of `service`); returns its public port
    and its app's port."""
    runner, port = await start_app(app_name)
    mesh.extra.append(runner)
    public = _free_port()
    mesh.agent.set_leaf(service, mesh.ca.leaf(service))
    mesh.agent.set_service(sidecar_service(parent, public, parent_name=service, local_port=port, config=HTTP))
    await start_proxy(mesh, parent)
    return public, port


async def test_a_failed_attempt_moves_to_another_instance():
    async with http_mesh() as mesh:
        second, second_app = await second_instance(mesh, "api2", "api", "api2")
        mesh.agent.set_connect_endpoints("api", [
            connect_entry("api", "node-1", "127.0.0.1", mesh.api_public),
            connect_entry("api", "node-2", "127.0.0.1", second, service_id="api2-sidecar-proxy"),
        ])
        await _routed(mesh, _router({"Match": {"HTTP": {"PathPrefix": "/fail"}},
                                     "Destination": {"NumRetries": 1, "RetryOn": ["5xx"]}}))
        deadline = time.monotonic() + 5
        while len(mesh.proxies["web"].current.endpoints.get(target_id("api", "", "dc1"), ())) != 2:
            assert time.monotonic() < deadline, "web's sidecar never saw both api instances"
            await asyncio.sleep(0.02)
        # api2 has had its one failure for each key already (asked directly): whichever
        # instance is tried first, api2 answers, so a retry never goes back to api
        for i in range(6):
            async with mesh.session.get(f"http://127.0.0.1:{second_app}/fail/k{i}?times=1") as response:
                assert response.status == 503
        for i in range(6):
            status, body = await mesh.get(f"/fail/k{i}?times=1")
            assert status == 200 and body["name"] == "api2", body
        assert mesh.proxies["web"].http_stats.route("outbound", "api", "route-0").retries >= 1


async def test_a_route_sends_a_path_to_another_service():
    async with http_mesh() as mesh:
        canary, _ = await second_instance(mesh, "canary", "api-canary", "canary")
        mesh.agent.set_connect_endpoints("api-canary", [
            connect_entry("api-canary", "node-3", "127.0.0.1", canary, service_id="canary-sidecar-proxy")])
        mesh.agent.set_intentions("api-canary", [{"SourceName": "web", "DestinationName": "api-canary",
                                                  "Action": "allow"}])
        await _routed(mesh, _router({"Match": {"HTTP": {"PathPrefix": "/beta", "Header": [{"Name": "x-canary", "Present": True}]}},
                                     "Destination": {"Service": "api-canary"}}))
        deadline = time.monotonic() + 5
        while not mesh.proxies["web"].current.endpoints.get(target_id("api-canary", "", "dc1")):
            assert time.monotonic() < deadline, "web's sidecar never watched api-canary"
            await asyncio.sleep(0.02)
        assert (await mesh.get("/beta/x", headers={"x-canary": "1"}))[1]["name"] == "canary"
        assert (await mesh.get("/beta/x"))[1]["name"] == "api"
        assert (await mesh.get("/other", headers={"x-canary": "1"}))[1]["name"] == "api"


async def test_a_protocol_change_applies_to_new_connections():
    async with http_mesh() as mesh:
        assert (await mesh.get("/x"))[0] == 200
        web = mesh.agent.services["web-sidecar-proxy"]
        mesh.agent.set_service({**web, "Proxy": {**web["Proxy"], "Upstreams": [
            {"DestinationName": "api", "LocalBindPort": mesh.upstream_port, "Config": {"protocol": "tcp"}}]}})
        deadline = time.monotonic() + 5
        while mesh.proxies["web"].current.registration.upstreams[0].protocol != "tcp":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        async with aiohttp.ClientSession() as fresh:  # a new connection: spliced at L4 now
            async with fresh.get(mesh.url + "/x") as response:
                assert response.status == 200
        assert mesh.proxies["web"].http_stats.route("outbound", "api", "default").count == 1


async def test_spans_go_to_an_otlp_collector_and_metrics_render(tmp_path):
    from aiohttp import web

    received: list[dict[str, Any]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
    tracing = {"tracing": {"sampling": 100, "otlp_endpoint": f"http://127.0.0.1:{port}/v1/traces"}}
    try:
        async with http_mesh(api_config=tracing) as mesh:
            parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            _, body = await mesh.get("/spanned", headers={"traceparent": parent})
            # api's sidecar exports: it made a span of its own, the caller's is its parent
            forwarded = body["headers"]["traceparent"].split("-")
            assert forwarded[1] == "4bf92f3577b34da6a3ce929d0e0e4736" and forwarded[2] != "00f067aa0ba902b7"
            deadline = time.monotonic() + 5
            while not received:
                assert time.monotonic() < deadline, "no span reached the collector"
                await asyncio.sleep(0.05)
            spans = [s for batch in received for rs in batch["resourceSpans"] for ss in rs["scopeSpans"]
                     for s in ss["spans"]]
            span = next(s for s in spans if s["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736")
            assert span["parentSpanId"] == "00f067aa0ba902b7" and span["spanId"] == forwarded[2]
            assert span["kind"] == 2 and any(a["key"] == "url.path" and a["value"]["stringValue"] == "/spanned"
                                             for a in span["attributes"])
            text = mesh.proxies["web"].metrics.render().decode()
            assert 'mesh_proxy_http_requests_total{class="2xx",direction="outbound",route="default",upstream="api"} 1.0' in text
            assert "mesh_proxy_http_request_seconds_bucket" in text
    finally:
        await runner.cleanup()
