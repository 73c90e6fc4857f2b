"""The http mesh end to end with real processes (issue 13): 3 servers, 2 client agents
supervising the sidecars, the HTTP test app (tests/harness/httpapp.py) as `inventory` on
c2 and as `shop` on c1. The test plays shop's code: it calls shop's sidecar upstream
listener for inventory on c1. Config entries are written through different servers, and
each one must change the running sidecars' behaviour within a second.

    test (as shop) -> shop's sidecar (c1) ==mTLS, HTTP/1.1 on a pooled stream==>
                      inventory's sidecar (c2) -> L7 intentions -> inventory app
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.cluster import Agent, Cluster, free_port, kill_proxies, retry, sidecar_range
from tests.harness.httpapp import spawn_app, stop_apps

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]

SIDECAR = "{}-sidecar-proxy".format


@dataclass
class HttpMesh:
    cluster: Cluster
    c1: Agent
    c2: Agent
    tmp: Path
    upstream: int
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.upstream}"

    def server(self, i: int) -> Agent:
        return self.cluster.agents[i]

    def write(self, server: int, entry: dict[str, Any]) -> float:
        """Write a config entry through server `server`; returns when it was acknowledged."""
        assert self.server(server).put("/v1/config", entry) is True
        return time.monotonic()

    def cleanup(self) -> None:
        self.cluster.stop()
        kill_proxies([self.c1, self.c2], self.pids)
        stop_apps(self.apps)


def _register(agent: Agent, name: str, port: int, sidecar: dict[str, Any]) -> None:
    agent.put("/v1/agent/service/register", {
        "ID": name, "Name": name, "Port": port,
        "Check": {"CheckID": f"{name}-tcp", "TCP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"},
        "Connect": {"SidecarService": sidecar}})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[HttpMesh]:
    tmp = tmp_path_factory.mktemp("meshhttp")
    policy = ["-default-intention-policy", "deny"]
    cluster = Cluster(tmp, 3, extra_args=policy)
    m = HttpMesh(cluster, None, None, tmp, free_port())  # type: ignore[arg-type]
    try:
        cluster.start()
        first = sidecar_range(4)
        second = sidecar_range(4, first)
        m.c1 = cluster.start_client("c1", [*policy, "-sidecar-min-port", str(first), "-sidecar-max-port", str(first + 3)])
        m.c2 = cluster.start_client("c2", [*policy, "-sidecar-min-port", str(second),
                                          "-sidecar-max-port", str(second + 3)])
        inventory, shop = free_port(), free_port()
        m.apps.append(spawn_app("inventory", inventory, tmp / "inventory.log"))
        m.apps.append(spawn_app("shop", shop, tmp / "shop.log"))
        _register(m.c2, "inventory", inventory, {})
        _register(m.c1, "shop", shop, {"Proxy": {"Upstreams": [{"DestinationName": "inventory",
                                                                "LocalBindPort": m.upstream}]}})

        def ready(agent: Agent, name: str) -> bool:
            found = agent.get("/v1/agent/mesh/proxies", timeout=5)
            m.pids.update(p["PID"] for p in found.values() if p.get("PID"))
            return found.get(SIDECAR(name), {}).get("State") == "ready"

        retry(lambda: ready(m.c1, "shop") and ready(m.c2, "inventory"), 30, 0.1, "both sidecars ready")
        retry(lambda: len(m.c1.get("/v1/health/connect/inventory?passing")) == 1, 20, 0.1, "inventory passing")
        yield m
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        m.cleanup()


async def _get(url: str, **kw: Any) -> tuple[int, Any]:
    """(status, JSON or bytes); (0, the error) when no HTTP answer came (an L4 refusal)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, **kw) as response:
            body = await response.read()
    except aiohttp.ClientError as exc:
        return 0, str(exc)
    with contextlib.suppress(ValueError):
        return response.status, json.loads(body)
    return response.status, body


def _within(seconds: float, since: float, check: Any, what: str) -> None:
    """`check()` must hold within `seconds` of `since` (polled every 20 ms)."""
    while True:
        if check():
            return
        assert time.monotonic() - since < seconds, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def test_config_entries_through_different_servers_change_running_sidecars_within_a_second(mesh):
    assert asyncio.run(_get(mesh.url + "/items"))[0] == 0  # tcp, no intention: refused at L4 (default deny)
    # http for inventory through s1: both sidecars take it (inbound parses, upstream routes)
    written = mesh.write(0, {"Kind": "service-defaults", "Name": "inventory", "Protocol": "http"})

    def sidecars_http() -> bool:
        inbound = (mesh.c2.get(f"/v1/agent/service/{SIDECAR('inventory')}")["Proxy"].get("Config") or {}).get("protocol")
        upstream = mesh.c1.get(f"/v1/agent/service/{SIDECAR('shop')}")["Proxy"]["Upstreams"][0]
        return inbound == "http" and (upstream.get("Config") or {}).get("protocol") == "http"

    _within(1.0, written, sidecars_http, "the protocol merged into both sidecars")
    # an http service denied by default answers 403 per request now
    _within(2.0, written, lambda: asyncio.run(_get(mesh.url + "/items"))[0] == 403, "403 from inventory's sidecar")
    # L7 intentions as a service-intentions entry through s2
    written = mesh.write(1, {"Kind": "service-intentions", "Name": "inventory", "Sources": [
        {"Name": "shop", "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/admin"}},
            {"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]})
    _within(1.0, written, lambda: asyncio.run(_get(mesh.url + "/items"))[0] == 200, "the allowed path served")
    assert asyncio.run(_get(mesh.url + "/admin/users"))[0] == 403
    # the same rows through the intentions API
    listed = mesh.c1.get("/v1/connect/intentions/match?by=destination&name=inventory")["inventory"]
    assert listed[0]["SourceName"] == "shop" and len(listed[0]["Permissions"]) == 2


def test_a_denied_path_and_an_allowed_one_share_a_connection_and_spellings_do_not_slip_through(mesh):
    async def run() -> list[int]:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            out = []
            for path in ("/ok", "/admin", "/ok/again"):
                async with session.get(mesh.url + path) as response:
                    await response.read()
                    out.append(response.status)
            return out

    assert asyncio.run(run()) == [200, 403, 200]
    for spelling in (b"/x/../admin", b"//admin", b"/%61dmin", b"/./admin/x"):
        with socket.create_connection(("127.0.0.1", mesh.upstream), timeout=5) as s:
            s.sendall(b"GET " + spelling + b" HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 403 "), (spelling, answer[:80])


def test_router_retries_timeouts_and_the_trace_id(mesh):
    written = mesh.write(2, {"Kind": "service-router", "Name": "inventory", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/fail"}}, "Destination": {"NumRetries": 2, "RetryOnStatusCodes": [503]}},
        {"Match": {"HTTP": {"PathPrefix": "/slow"}}, "Destination": {"RequestTimeout": "500ms"}},
    ]})
    _within(1.0, written, lambda: asyncio.run(_get(mesh.url + "/fail/probe?times=1"))[0] == 200,
            "the router's retry in force")
    status, body = asyncio.run(_get(mesh.url + "/fail/get-once?times=1"))
    assert status == 200 and body["failed_before"] == 1

    async def post() -> int:
        async with aiohttp.ClientSession() as session, session.post(mesh.url + "/fail/post-once?times=1",
                                                                    data=b"order") as response:
            return response.status

    assert asyncio.run(post()) == 503  # not idempotent: never sent twice
    started = time.monotonic()
    assert asyncio.run(_get(mesh.url + "/slow?ms=4000"))[0] == 504
    assert 0.45 < time.monotonic() - started < 2.0
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, body = asyncio.run(_get(mesh.url + "/traced", headers={"traceparent": trace}))
    assert body["headers"]["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"


def test_access_logs_keep_alive_chunked_and_websocket(mesh):
    log = mesh.tmp / "access.log"
    written = mesh.write(0, {"Kind": "proxy-defaults", "Name": "global",
                             "AccessLogs": {"Enabled": True, "Type": "file", "Path": str(log)}})

    async def traffic() -> None:
        async with aiohttp.ClientSession() as session:
            for i in range(5):  # keep-alive: one connection
                async with session.get(mesh.url + f"/logged/{i}") as response:
                    assert response.status == 200
            async with session.get(mesh.url + "/stream?chunks=4") as response:
                assert await response.read() == b"piece-0;piece-1;piece-2;piece-3;"
            async with session.ws_connect(mesh.url + "/ws") as ws:
                await ws.send_str("hello")
                assert await ws.receive_str() == "inventory:hello"

    def lines() -> list[dict[str, Any]]:
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line]

    deadline = time.monotonic() + 3
    while not any(e.get("path") == "/logged/4" for e in lines()):
        assert time.monotonic() < deadline, f"no access log line (written {time.monotonic() - written:.1f} s ago)"
        asyncio.run(traffic())
        time.sleep(0.6)  # lines are flushed within half a second
    mine = [e for e in lines() if e["path"] == "/logged/4"]
    directions = {(e["source"], e["destination"]) for e in mine}
    assert directions == {("shop", "inventory")}
    assert len(mine) >= 2  # a line from each sidecar: shop's outbound and inventory's inbound
    for entry in mine:
        assert entry["method"] == "GET" and entry["response_code"] == 200 and entry["bytes_sent"] > 0
        assert len(entry["trace_id"]) == 32 and entry["authz"] == "allow"
        assert set(entry) >= {"start_time", "duration", "bytes_received", "upstream_host", "retries"}
    assert len({e["trace_id"] for e in mine if e["path"] == "/logged/4"}) <= len(mine)


def test_with_every_server_stopped_the_sidecars_go_on_with_what_they_have(mesh):
    """Last: it stops the servers. The agents and sidecars keep the routes, L7 intentions
    and retries they had; requests keep being answered and judged."""
    for server in list(mesh.cluster.agents):
        server.kill()
    time.sleep(1.0)  # the watches fail and back off meanwhile
    for _ in range(5):
        assert asyncio.run(_get(mesh.url + "/still"))[0] == 200
        assert asyncio.run(_get(mesh.url + "/admin"))[0] == 403
    assert asyncio.run(_get(mesh.url + "/fail/offline?times=1"))[0] == 200  # the router's retry
