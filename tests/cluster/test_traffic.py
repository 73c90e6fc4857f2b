"""Traffic management end to end with real processes (issue 14): a server, two client
agents supervising the sidecars, and three instances of the HTTP test app as `api` on
c2: a1 and a2 (Meta version=v1) and b1 (version=v2). The test plays `web` on c1 and
calls web's sidecar upstream listener for api. Each test writes the config entries it
needs and puts back the baseline (api speaks http, its resolver has subsets v1 and v2
with v1 the default) when it ends.

    test (as web) -> web's sidecar (c1): route, split, subset, failover, balance, limits
                  ==mTLS==> api's sidecars (c2): rate limits -> a1 | a2 | b1
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from tests.harness.cluster import Agent, Cluster, free_port, kill_proxies, retry, sidecar_range
from tests.harness.httpapp import spawn_app, stop_apps

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

INSTANCES = {"a1": "v1", "a2": "v1", "b1": "v2"}
BASE_DEFAULTS = {"Kind": "service-defaults", "Name": "api", "Protocol": "http"}
BASE_RESOLVER = {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
                 "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                             "v2": {"Filter": "Service.Meta.version == v2"}}}


@dataclass
class Traffic:
    cluster: Cluster
    c1: Agent
    c2: Agent
    upstream: int
    ports: dict[str, int] = field(default_factory=dict)  # app name -> its port
    apps: list[subprocess.Popen[bytes]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    @property
    def server(self) -> Agent:
        return self.cluster.agents[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.upstream}"

    def write(self, entry: dict[str, Any]) -> None:
        assert self.server.put("/v1/config", entry) is True

    def delete(self, kind: str, name: str) -> None:
        self.server.request("DELETE", f"/v1/config/{kind}/{name}")

    def cleanup(self) -> None:
        self.cluster.stop()
        kill_proxies([self.c1, self.c2], self.pids)
        stop_apps(self.apps)


def _config_updates(m: Traffic) -> float:
    """web's sidecar's count of configurations applied (its Prometheus text)."""
    async def go() -> str:
        url = f"http://127.0.0.1:{m.ports['web-metrics']}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return await response.text()

    for line in asyncio.run(go()).splitlines():
        if line.startswith("mesh_proxy_config_updates_total "):
            return float(line.split()[1])
    raise AssertionError("no mesh_proxy_config_updates_total in web's sidecar metrics")


def _web_defaults_applied(m: Traffic, entry: dict[str, Any], merged_key: str) -> None:
    """Write web's service-defaults and wait until its sidecar runs on them: the agent
    shows the merged key, then the sidecar applies a new configuration."""
    before = _config_updates(m)
    m.write(entry)
    retry(lambda: merged_key in str(m.c1.get("/v1/agent/service/web-sidecar-proxy")), 10, 0.1,
          f"{merged_key} merged into web's sidecar")
    retry(lambda: _config_updates(m) > before, 10, 0.05, "web's sidecar applied its new registration")


def _put_local(port: int, path: str) -> None:
    """A PUT straight to a test app (its admin switches), not through the mesh."""
    async def go() -> None:
        async with aiohttp.ClientSession() as session, session.put(f"http://127.0.0.1:{port}{path}") as response:
            assert response.status == 200

    asyncio.run(go())


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Traffic]:
    tmp = tmp_path_factory.mktemp("traffic")
    cluster = Cluster(tmp, 1)
    m = Traffic(cluster, None, None, free_port())  # type: ignore[arg-type]
    try:
        cluster.start()
        first = sidecar_range(4)
        second = sidecar_range(4, first)
        m.c1 = cluster.start_client("c1", ["-sidecar-min-port", str(first), "-sidecar-max-port", str(first + 3)])
        m.c2 = cluster.start_client("c2", ["-sidecar-min-port", str(second), "-sidecar-max-port", str(second + 3)])
        m.write(BASE_DEFAULTS)
        m.write(BASE_RESOLVER)
        for name, version in INSTANCES.items():
            port = m.ports[name] = free_port()
            m.apps.append(spawn_app(name, port, tmp / f"{name}.log"))
            m.c2.put("/v1/agent/service/register", {
                "ID": name, "Name": "api", "Port": port, "Meta": {"version": version},
                "Check": {"CheckID": f"{name}-ttl", "TTL": "600s", "Status": "passing"},
                "Connect": {"SidecarService": {}}})
        web = m.ports["web"] = free_port()
        m.ports["web-metrics"] = free_port()
        m.apps.append(spawn_app("web", web, tmp / "web.log"))
        m.c1.put("/v1/agent/service/register", {
            "ID": "web", "Name": "web", "Port": web,
            "Connect": {"SidecarService": {"Proxy": {
                "Config": {"prometheus_bind_addr": f"127.0.0.1:{m.ports['web-metrics']}"},
                "Upstreams": [{"DestinationName": "api", "LocalBindPort": m.upstream}]}}}})

        def ready() -> bool:
            up = 0
            for agent in (m.c1, m.c2):
                for p in agent.get("/v1/agent/mesh/proxies", timeout=5).values():
                    m.pids.update([p["PID"]] if p.get("PID") else [])
                    up += p.get("State") == "ready"
            return up == 4

        retry(ready, 40, 0.1, "four sidecars ready")
        retry(lambda: len(m.c1.get("/v1/health/connect/api?passing")) == 3, 20, 0.1, "api instances passing")
        retry(lambda: _names(m, 6) <= {"a1", "a2"} and len(_names(m, 6)) == 2, 20, 0.2, "v1 instances serving")
        yield m
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        m.cleanup()


async def _gets(url: str, paths: list[str], concurrency: int = 16,
                headers: list[dict[str, str]] | None = None) -> list[tuple[int, str, dict[str, str]]]:
    """(status, serving app's name or body text, response headers) for each path."""
    out: list[Any] = [None] * len(paths)
    queue = collections.deque(range(len(paths)))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.popleft()
            async with session.get(url + paths[i], headers=(headers or [{}] * len(paths))[i]) as response:
                body = await response.read()
                name = ""
                if response.status == 200:
                    name = (await response.json()).get("name", "")
                else:
                    name = body.decode("utf-8", "replace").strip()
                out[i] = (response.status, name, dict(response.headers))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return out


def _names(m: Traffic, n: int, path: str = "/who") -> set[str]:
    return {name for status, name, _ in asyncio.run(_gets(m.url, [path] * n, 1)) if status == 200}


@pytest.fixture
def baseline(mesh: Traffic) -> Iterator[Traffic]:
    yield mesh
    for kind in ("service-splitter", "service-router"):
        mesh.delete(kind, "api")
    mesh.write(BASE_RESOLVER)
    mesh.write(BASE_DEFAULTS)
    mesh.delete("service-defaults", "web")
    for name in INSTANCES:
        _put_local(mesh.ports[name], "/admin/well")
        mesh.c2.put(f"/v1/agent/check/pass/{name}-ttl")
    retry(lambda: _names(mesh, 6) == {"a1", "a2"}, 20, 0.2, "back to the baseline")


def test_a_90_10_split_over_10000_requests_lands_within_3_points(baseline: Traffic):
    m = baseline
    m.write({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 90, "ServiceSubset": "v1"}, {"Weight": 10, "ServiceSubset": "v2",
                                                "ResponseHeaders": {"Set": {"x-canary": "yes"}}}]})
    retry(lambda: "b1" in _names(m, 60), 20, 0.2, "the splitter applied")
    results = asyncio.run(_gets(m.url, ["/who"] * 10_000, 24))
    assert {status for status, _, _ in results} == {200}
    by_name = collections.Counter(name for _, name, _ in results)
    canary = by_name["b1"] / len(results) * 100
    assert 7 <= canary <= 13, by_name
    assert by_name["a1"] and by_name["a2"]  # the v1 share is balanced over both v1 instances
    assert all(h.get("x-canary") == "yes" for _, name, h in results if name == "b1")
    assert not any(h.get("x-canary") for _, name, h in results if name != "b1")


def test_failover_to_another_subset_when_the_primary_turns_critical_and_back(baseline: Traffic):
    m = baseline
    m.write({**BASE_RESOLVER, "Failover": {"v1": {"ServiceSubset": "v2"}}})
    assert _names(m, 6) == {"a1", "a2"}
    for name in ("a1", "a2"):
        m.c2.put(f"/v1/agent/check/fail/{name}-ttl")
    retry(lambda: _names(m, 10) == {"b1"}, 20, 0.1, "failover to v2")
    statuses = {status for status, _, _ in asyncio.run(_gets(m.url, ["/who"] * 50, 4))}
    assert statuses == {200}  # nothing is refused while v1 has no healthy instance
    m.c2.put("/v1/agent/check/pass/a1-ttl")
    retry(lambda: _names(m, 10) == {"a1"}, 20, 0.1, "traffic back on v1 when it recovers")


def test_an_instance_that_keeps_failing_is_ejected_and_returns_after_the_ejection_time(baseline: Traffic):
    m = baseline
    _web_defaults_applied(m, {"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Defaults": {
        "PassiveHealthCheck": {"Interval": "1s", "MaxFailures": 3, "BaseEjectionTime": "3s",
                               "MaxEjectionPercent": 100}}}}, "passive_health_check")
    _put_local(m.ports["a1"], "/admin/sick?status=500")
    results = asyncio.run(_gets(m.url, ["/who"] * 40, 1))
    failures = [i for i, (status, _, _) in enumerate(results) if status == 500]
    assert len(failures) == 3, results  # MaxFailures consecutive 5xx, then a1 is set aside
    assert all(name == "a2" for _, name, _ in results[failures[-1] + 1:])
    _put_local(m.ports["a1"], "/admin/well")
    retry(lambda: "a1" in _names(m, 6), 10, 0.2, "a1 back after its ejection time")


def test_a_burst_above_the_rate_limit_gets_429_while_the_allowed_rate_passes(baseline: Traffic):
    m = baseline
    m.write({**BASE_DEFAULTS, "RateLimits": {"InstanceLevel": {"Routes": [
        {"PathPrefix": "/limited", "RequestsPerSecond": 2, "RequestsMaxBurst": 4}]}}})
    retry(lambda: any(s == 429 for s, _, _ in asyncio.run(_gets(m.url, ["/limited"] * 30, 8))), 20, 0.5,
          "the rate limit applied")
    time.sleep(2.5)  # both v1 buckets full again (4 tokens at 2/s)
    burst = asyncio.run(_gets(m.url, ["/limited"] * 30, 8))
    passed = [r for r in burst if r[0] == 200]
    limited = [r for r in burst if r[0] == 429]
    assert 6 <= len(passed) <= 10, [s for s, _, _ in burst]  # two instances' bursts of 4, a token or two refilled
    assert len(passed) + len(limited) == 30
    assert all(int(h["Retry-After"]) >= 1 for _, _, h in limited)
    assert {s for s, _, _ in asyncio.run(_gets(m.url, ["/open"] * 30, 8))} == {200}  # other paths unlimited
    time.sleep(2.5)
    steady = []
    for _ in range(6):  # 2 per second over two instances is well within 2 per second each
        steady.extend(asyncio.run(_gets(m.url, ["/limited"], 1)))
        time.sleep(0.5)
    assert {s for s, _, _ in steady} == {200}


def test_concurrent_requests_above_the_limit_get_503_overloaded_at_once(baseline: Traffic):
    m = baseline
    _web_defaults_applied(m, {"Kind": "service-defaults", "Name": "web", "UpstreamConfig": {"Overrides": [
        {"Name": "api", "Limits": {"MaxConcurrentRequests": 2}}]}}, "max_concurrent_requests")
    started = time.monotonic()
    results = asyncio.run(_gets(m.url, ["/slow?ms=1500"] * 6, 6))
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert (len(ok), len(refused)) == (2, 4), [s for s, _, _ in results]
    assert all(h.get("x-mesh-overloaded") == "true" for _, _, h in refused)
    assert time.monotonic() - started < 3.0


def test_ring_hash_keeps_a_header_value_on_one_instance(baseline: Traffic):
    m = baseline
    m.write({**BASE_RESOLVER, "LoadBalancer": {"Policy": "ring_hash",
                                               "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}})
    users = [f"user-{i}" for i in range(20)]

    def sticky() -> dict[str, set[str]]:
        paths = ["/who"] * (len(users) * 5)
        headers = [{"x-user": users[i % len(users)]} for i in range(len(paths))]
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for i, (_, name, _) in enumerate(asyncio.run(_gets(m.url, paths, 4, headers))):
            seen[users[i % len(users)]].add(name)
        return seen

    retry(lambda: all(len(names) == 1 for names in sticky().values()), 20, 0.3, "ring_hash applied")
    seen = sticky()
    assert all(len(names) == 1 for names in seen.values()), seen
    assert set().union(*seen.values()) == {"a1", "a2"}  # the keys spread over both v1 instances


def test_large_responses_on_new_connections_never_stall_a_pooled_connection(mesh: Traffic):
    """A 1 MiB response fills the caller's socket: the sidecar stops reading the instance
    until the caller reads. Once the response ends, the connection it came from goes back
    to the pool: it must not stay paused, or the next request on it hangs until its
    timeout (a bug found by the benchmark: every other request took 15 s and got 504)."""
    import urllib.request

    def fetch() -> tuple[int, float]:
        started = time.monotonic()
        with urllib.request.urlopen(f"{mesh.url}/bytes?n=1048576", timeout=10) as response:
            return len(response.read()), time.monotonic() - started

    for _ in range(20):
        size, took = fetch()
        assert size == 1048576
        assert took < 3.0


def test_with_the_server_killed_the_sidecars_keep_splitting_and_balancing(mesh: Traffic):
    """Last in the module (it kills the only server): the sidecars hold the chain and the
    instances they last saw, so traffic keeps its split and its ring while no server
    answers."""
    m = mesh
    m.write({**BASE_RESOLVER, "LoadBalancer": {"Policy": "ring_hash",
                                               "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}})
    m.write({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]})
    retry(lambda: {"a1", "a2", "b1"} <= _names(m, 60), 20, 0.2, "the 50/50 split over both subsets")
    m.server.kill()
    users = [f"user-{i}" for i in range(10)]
    paths = ["/who"] * 300
    headers = [{"x-user": users[i % len(users)]} for i in range(len(paths))]
    results = asyncio.run(_gets(m.url, paths, 8, headers))
    assert {status for status, _, _ in results} == {200}
    by_name = collections.Counter(name for _, name, _ in results)
    assert 100 <= by_name["b1"] <= 200, by_name  # still about half to v2
    v1_names: dict[str, set[str]] = collections.defaultdict(set)
    for i, (_, name, _) in enumerate(results):
        if name != "b1":
            v1_names[users[i % len(users)]].add(name)
    assert all(len(names) == 1 for names in v1_names.values()), v1_names  # the ring still holds each user
