"""Traffic management in the http sidecar pair, in one process (issue 14): real sockets,
TLS and proxies; the agent is a stand-in (api/testing.py) that serves the config entries
as written, so each test sets exactly the resolver, splitter and limits it is about. Two
api instances: `api` (Meta version=v1) and `api2` (version=v2), each with its sidecar.
The end-to-end tests with real agents and servers are in tests/cluster/test_traffic.py."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import pytest

from mesh.api.builders import connect_entry
from mesh.catalog.chain_types import target_id
from tests.integration.test_proxy_http import HttpMesh, http_mesh, second_instance

pytestmark = pytest.mark.timeout(60)

RESOLVER = {"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1",
            "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}, "v2": {"Filter": "Service.Meta.version == v2"}}}


async def _two_versions(mesh: HttpMesh, v1_status: str = "passing") -> int:
    """api2 as a second instance with version v2; returns its app's port."""
    second, second_app = await second_instance(mesh, "api2", "api", "api2")
    mesh.agent.set_connect_endpoints("api", [
        connect_entry("api", "node-1", "127.0.0.1", mesh.api_public, meta={"version": "v1"}, status=v1_status),
        connect_entry("api", "node-2", "127.0.0.1", second, service_id="api2-sidecar-proxy", meta={"version": "v2"}),
    ])
    return second_app


async def _until(check: Any, what: str, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def _names(mesh: HttpMesh, n: int, path: str = "/who", **kw: Any) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for _ in range(n):
        status, body = await mesh.get(path, **kw)
        out[body["name"] if status == 200 else str(status)] += 1
    return out


async def test_a_splitter_sends_each_request_by_weight_and_sets_its_headers():
    async with http_mesh() as mesh:
        await _two_versions(mesh)
        mesh.agent.set_config_entry(RESOLVER)
        mesh.agent.set_config_entry({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 75, "ServiceSubset": "v1"},
            {"Weight": 25, "ServiceSubset": "v2", "RequestHeaders": {"Set": {"x-split": "canary"}}}]})
        await _until(lambda: _has(mesh, "api2"), "the splitter never sent to v2")
        names = await _names(mesh, 400)
        assert set(names) == {"api", "api2"}
        assert 60 <= names["api2"] <= 140, names  # 25% of 400 = 100, well within binomial noise
        web = mesh.proxies["web"]
        counts = {target: n for (upstream, target), n in web.traffic.targets.items() if upstream == "api"}
        assert counts[target_id("api", "v2", "dc1")] >= names["api2"]
        for _ in range(20):  # the split's own request headers reach v2 only
            status, body = await mesh.get("/who")
            assert (body["headers"].get("x-split") == "canary") == (body["name"] == "api2")


async def _has(mesh: HttpMesh, name: str) -> bool:
    return name in await _names(mesh, 20)


async def test_failover_to_another_subset_while_the_primary_has_no_healthy_instance():
    async with http_mesh() as mesh:
        await _two_versions(mesh)
        mesh.agent.set_config_entry({**RESOLVER, "Failover": {"v1": {"ServiceSubset": "v2"}}})
        await _until(lambda: _only(mesh, "api"), "v1 never became the default subset")
        await _two_versions_status(mesh, "critical")  # v1's only instance: every request fails over to v2
        await _until(lambda: _only(mesh, "api2"), "no failover to v2")
        web = mesh.proxies["web"]
        assert web.traffic.failovers[("api", target_id("api", "v2", "dc1"))] >= 1
        await _two_versions_status(mesh, "passing")
        await _until(lambda: _only(mesh, "api"), "traffic never returned to v1")


async def _two_versions_status(mesh: HttpMesh, v1_status: str) -> None:
    entries = mesh.agent.connect_endpoints("api")
    entries[0] = connect_entry("api", "node-1", "127.0.0.1", mesh.api_public, meta={"version": "v1"},
                               status=v1_status)
    mesh.agent.set_connect_endpoints("api", entries)


async def _only(mesh: HttpMesh, name: str) -> bool:
    return set(await _names(mesh, 10)) == {name}


async def test_ring_hash_keeps_a_header_value_on_one_instance():
    async with http_mesh() as mesh:
        await _two_versions(mesh)
        mesh.agent.set_config_entry({"Kind": "service-resolver", "Name": "api", "LoadBalancer": {
            "Policy": "ring_hash", "HashPolicies": [{"Field": "header", "FieldValue": "x-user"}]}})

        async def ring() -> bool:
            plan = mesh.proxies["web"].current.plans["api"]
            return plan.start.lb.policy == "ring_hash"

        await _until(ring, "the ring_hash resolver never applied")
        seen: dict[str, set[str]] = collections.defaultdict(set)
        for i in range(60):
            user = f"user-{i % 12}"
            status, body = await mesh.get("/who", headers={"x-user": user})
            seen[user].add(body["name"])
        assert all(len(names) == 1 for names in seen.values()), seen
        assert set().union(*seen.values()) == {"api", "api2"}


async def test_concurrent_requests_over_the_limit_get_503_overloaded():
    async with http_mesh(upstream_config={"limits": {"max_concurrent_requests": 2}}) as mesh:
        results = await asyncio.gather(*(mesh.session.get(mesh.url + "/slow?ms=600") for _ in range(5)))
        statuses = sorted(r.status for r in results)
        assert statuses == [200, 200, 503, 503, 503]
        assert all(r.headers.get("x-mesh-overloaded") == "true" for r in results if r.status == 503)
        for r in results:
            r.release()
        assert mesh.proxies["web"].traffic.overloads[("api", "requests")] == 3
        assert (await mesh.get("/who"))[0] == 200  # the limit counts requests in flight, not all ever


async def test_a_burst_over_the_rate_limit_gets_429_with_retry_after():
    limits = {"rate_limits": {"InstanceLevel": {"RequestsPerSecond": 1, "RequestsMaxBurst": 3,
                                                "Routes": [{"PathPrefix": "/open", "RequestsPerSecond": 1000}]}}}
    async with http_mesh(api_config=limits) as mesh:
        statuses = []
        for _ in range(6):
            async with mesh.session.get(mesh.url + "/x") as response:
                statuses.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert (await mesh.get("/open/y"))[0] == 200  # its own route and bucket
        assert mesh.proxies["api"].traffic.limited["instance"] == 3


async def test_an_instance_that_keeps_answering_5xx_is_ejected():
    passive = {"passive_health_check": {"max_failures": 2, "base_ejection_time": "30s", "interval": "1s",
                                        "max_ejection_percent": 100}}
    async with http_mesh(upstream_config=passive) as mesh:
        second_app = await _two_versions(mesh)
        async with mesh.session.put(f"http://127.0.0.1:{second_app}/admin/sick?status=500") as response:
            assert response.status == 200
        names = await _names(mesh, 20)
        assert names["500"] == 2, names  # two failures in a row from api2, then it is set aside
        assert names["api"] == 18
        web = mesh.proxies["web"]
        assert sum(b.ejected_count() for b in web.balancers.values()) == 1
