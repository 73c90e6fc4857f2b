"""/v1/health/connect over HTTP on a one-process server (the real handlers, read engine
and FSM over the in-memory Raft): a blocking read wakes for the service's sidecars and
sleeps through everything else; the agent reports its default intention policy."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from tests.harness.one_server import one_server as _server


@pytest.fixture
async def http():
    cluster, agent, client = await _server()
    yield agent, client
    await client.close()
    for raft in cluster.nodes.values():
        await raft.stop()


async def _put(client: TestClient, body: dict) -> None:
    resp = await client.put("/v1/catalog/register", json=body)
    assert resp.status == 200, await resp.text()


ADDRESSES = {"n-api": "10.0.0.7", "n-web": "10.0.0.8"}


def _sidecar(node: str, dest: str, status: str) -> dict:
    sid = f"{dest}-sidecar-proxy"
    return {"Node": node, "Address": ADDRESSES[node],
            "Service": {"ID": sid, "Service": sid, "Kind": "connect-proxy", "Port": 21000,
                        "Proxy": {"destination_service_name": dest}},  # snake_case: found all the same
            "Check": {"CheckID": "listening", "ServiceID": sid, "Status": status}}


def _plain(node: str, name: str, status: str) -> dict:
    return {"Node": node, "Address": ADDRESSES[node], "Service": {"Service": name, "Port": 80},
            "Check": {"CheckID": f"{name}-check", "ServiceID": name, "Status": status}}


async def test_a_blocking_connect_read_wakes_only_for_the_services_sidecars(http):
    agent, client = http
    await _put(client, _plain("n-api", "api", "passing"))
    await _put(client, _sidecar("n-api", "api", "passing"))
    await _put(client, _plain("n-web", "web", "passing"))
    resp = await client.get("/v1/health/connect/api")
    (entry,) = await resp.json()
    assert entry["Service"]["Proxy"]["DestinationServiceName"] == "api"
    index = int(resp.headers["X-Consul-Index"])

    waits = []
    hub_wait = agent.watch.wait

    async def counting_wait(keys, timeout):
        waits.append(list(keys))
        return await hub_wait(keys, timeout)

    agent.watch.wait = counting_wait  # type: ignore[method-assign]
    blocked = asyncio.ensure_future(client.get(f"/v1/health/connect/api?index={index}&wait=30s"))
    for _ in range(100):
        if waits:
            break
        await asyncio.sleep(0.01)
    assert waits == [["connect.api"]]

    # an unrelated service's check changes, and api's own (non-proxy) check too
    await _put(client, _plain("n-web", "web", "critical"))
    await _put(client, _plain("n-api", "api", "critical"))
    resp = await client.get("/v1/health/checks/web")
    assert [c["Status"] for c in await resp.json()] == ["critical"]  # applied and readable
    assert int(resp.headers["X-Consul-Index"]) > index
    await asyncio.sleep(0.2)
    assert not blocked.done()
    assert len(waits) == 1  # not even woken to look again

    # api's sidecar check changes: the read returns with it
    await _put(client, _sidecar("n-api", "api", "critical"))
    resp = await asyncio.wait_for(blocked, 5)
    (entry,) = await resp.json()
    assert [c["Status"] for c in entry["Checks"] if c["CheckID"] == "listening"] == ["critical"]
    assert int(resp.headers["X-Consul-Index"]) > index


async def test_a_node_level_check_where_the_sidecar_runs_wakes_it(http):
    _, client = http
    await _put(client, _sidecar("n-api", "api", "passing"))
    resp = await client.get("/v1/health/connect/api?passing")
    index = int(resp.headers["X-Consul-Index"])
    blocked = asyncio.ensure_future(client.get(f"/v1/health/connect/api?passing&index={index}&wait=30s"))
    await asyncio.sleep(0.05)
    await _put(client, {"Node": "n-api", "Address": "10.0.0.7", "Check": {"CheckID": "serfHealth",
                                                                           "Status": "critical"}})
    resp = await asyncio.wait_for(blocked, 5)
    assert await resp.json() == []  # ?passing: the node is down


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_the_default_acl_policy_header_is_the_default_intention_policy(policy):
    cluster, _, client = await _server(policy)
    try:
        for path in ("/v1/agent/self", "/v1/health/connect/api", "/v1/no/such/path"):
            resp = await client.get(path)
            assert resp.headers["X-Consul-Default-ACL-Policy"] == policy, path
    finally:
        await client.close()
        for raft in cluster.nodes.values():
            await raft.stop()
