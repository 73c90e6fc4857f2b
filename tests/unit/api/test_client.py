"""Client and AgentAPI against FakeAgent: blocking queries that really block, the
blocking deadline, typed answers, typed errors, the response size limit."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.api.agent import AgentAPI
from mesh.api.builders import connect_entry, leaf_body, roots_body, sidecar_service
from mesh.api.client import Client, blocking_timeout, go_duration
from mesh.api.errors import APIError, DecodeError
from mesh.api.testing import FakeAgent
from mesh.catalog.authz import IntentionIndex
from mesh.catalog.intentions import parse_intention

CERT = "-----BEGIN CERTIFICATE-----\nMIIB{}\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"


@pytest.fixture
async def fake():
    async with FakeAgent() as agent:
        yield agent


@pytest.fixture
async def api(fake):
    client = Client(fake.address, "tok-1")
    yield AgentAPI(client)
    await client.close()


def _leaf(n: int) -> dict:
    return leaf_body("web", CERT.format(n), KEY, valid_after=1714557600, valid_before=1714816800, serial=n)


async def _not_done_until(task: asyncio.Task, seconds: float) -> None:
    await asyncio.sleep(seconds)
    assert not task.done(), "a blocking query answered before anything changed"


def test_deadline_and_wait_arithmetic():
    assert blocking_timeout(300) == 300 + 300 / 16 + 5
    assert blocking_timeout(2, margin=1) == 2 + 0.125 + 1
    assert (go_duration(300), go_duration(0.0001), go_duration(0)) == ("300000ms", "1ms", "0ms")


async def test_index_blocking_query_waits_for_the_setter(fake, api):
    fake.set_leaf("web", _leaf(1))
    first = await api.leaf("web")
    assert first.value.serial_number == "01" and first.index == first.value.modify_index > 0
    task = asyncio.create_task(api.leaf("web", index=first.index, wait=10))
    await _not_done_until(task, 0.3)
    fake.set_leaf("web", _leaf(2))
    second = await asyncio.wait_for(task, 5)
    assert second.value.serial_number == "02" and second.index > first.index
    query = fake.requests_to("/v1/agent/connect/ca/leaf/web")[-1].query
    assert query["index"] == str(first.index) and query["wait"] == "10000ms"


async def test_hash_blocking_query_waits_for_the_setter(fake, api):
    fake.set_service(sidecar_service("web", 21000, upstreams=[("api", 9191)]))
    first = await api.agent_service("web-sidecar-proxy")
    assert first.content_hash and first.value.content_hash == first.content_hash and first.index == 0
    assert "hash" not in fake.requests[-1].query  # the first request must answer at once
    task = asyncio.create_task(api.agent_service("web-sidecar-proxy", hash=first.content_hash, wait=10))
    await _not_done_until(task, 0.3)
    fake.set_service(sidecar_service("web", 21000, upstreams=[("api", 9191), ("db", 9192)]))
    second = await asyncio.wait_for(task, 5)
    assert [u.destination_name for u in second.value.proxy.upstreams] == ["api", "db"]
    assert second.content_hash != first.content_hash


async def test_a_wait_answered_late_by_the_server_still_succeeds(fake, api):
    """The agent may hold a request for wait + wait/16: a client whose deadline is
    exactly `wait` fails here; ours is wait + wait/16 + a margin."""
    fake.set_roots(roots_body([CERT.format(1)]))
    first = await api.roots()
    fake.extra_wait = 0.1
    started = time.monotonic()
    again = await api.roots(index=first.index, wait=2)
    assert time.monotonic() - started >= 2.1
    assert again.index == first.index and again.value == first.value


async def test_health_connect_sends_consuls_parameters_and_filters_passing(fake, api):
    fake.set_connect_endpoints("api", [connect_entry("api", "n1", "10.0.0.1", 21000),
                                       connect_entry("api", "n2", "10.0.0.2", 21000, status="critical")])
    result = await api.health_connect("api", datacenter="dc2")
    assert [e.node for e in result.value] == ["n1"]
    query = fake.requests[-1].query
    assert query["passing"] == "1" and "stale" in query and query["dc"] == "dc2"
    every = await api.health_connect("api", passing=False, stale=False)
    assert [e.node for e in every.value] == ["n1", "n2"] and "stale" not in fake.requests[-1].query
    task = asyncio.create_task(api.health_connect("api", index=result.index, wait=10))
    await _not_done_until(task, 0.2)
    fake.set_connect_endpoints("other", [])  # another service: no wake-up
    await _not_done_until(task, 0.2)
    fake.set_connect_endpoints("api", [connect_entry("api", "n3", "10.0.0.3", 21000)])
    assert [e.node for e in (await asyncio.wait_for(task, 5)).value] == ["n3"]


async def test_intentions_match_with_the_default_policy(fake, api):
    rows = [parse_intention({"SourceName": "web", "DestinationName": "api", "Action": "allow"}),
            parse_intention({"SourceName": "*", "DestinationName": "*", "Action": "deny"})]
    fake.set_intentions("api", rows, default_allow=False)
    result = await api.intentions_match_destination("api")
    intentions, default_allow = result.value
    assert default_allow is False and len(intentions) == 2
    assert [(i.source_name, i.destination_name) for i in intentions] == [("web", "api"), ("*", "*")]
    index = IntentionIndex(intentions)
    assert index.decide("web", "api", default_allow).allowed and not index.decide("db", "api", default_allow).allowed
    query = fake.requests[-1].query
    assert query["by"] == "destination" and query["name"] == "api"


async def test_writes_and_the_token(fake, api):
    await api.service_register({"Name": "web", "ID": "web/1", "Port": 8080, "Check": {"TTL": "30s"}})
    assert fake.checks["service:web/1"]["Status"] == "critical"
    await api.check_pass("service:web/1", note="ok")
    assert fake.checks["service:web/1"] == {"ServiceID": "web/1", "Status": "passing", "Output": "ok"}
    services = await api.agent_services()
    assert services["web/1"].port == 8080 and services["web/1"].datacenter == "dc1"
    assert (await api.agent_service("web/1")).value.id == "web/1"  # an ID with a slash, escaped
    await api.service_deregister("web/1")
    assert "web/1" not in fake.services and not fake.checks
    assert {r.headers.get("X-Consul-Token") for r in fake.requests} == {"tok-1"}


async def test_errors_keep_the_status_and_consuls_message(fake, api):
    with pytest.raises(APIError) as info:
        await api.agent_service("nope")
    assert info.value.status == 404 and info.value.message == "Unexpected response code: 404 (unknown service ID: nope)"
    with pytest.raises(APIError) as info:
        await api.check_pass("nope")
    assert info.value.status == 404
    fake.set_leaf("web", dict(_leaf(1), CertPEM="garbage"))
    with pytest.raises(DecodeError, match="Leaf.CertPEM") as info:
        await api.leaf("web")
    assert info.value.status == 200


async def test_an_agent_that_is_not_there_is_status_zero():
    async with FakeAgent() as gone:
        address = gone.address
    client = Client(address)
    with pytest.raises(APIError) as info:
        await client.blocking_get("/v1/agent/connect/ca/roots")
    await client.close()
    assert info.value.status == 0 and info.value.message.startswith(f"Error connecting to agent at http://{address}")


async def test_responses_past_the_size_limit_are_refused(fake):
    fake.set_service({"Service": "big", "Meta": {f"k{i}": "x" * 500 for i in range(64)}})
    async with Client(fake.address, max_response=16 * 1024) as client:
        with pytest.raises(DecodeError, match="larger than 16384 bytes"):
            await client.get("/v1/agent/services")
        fake.set_service({"Service": "big"})
        assert "big" in await client.get("/v1/agent/services")  # the session survives


async def test_one_session_with_a_bounded_pool(fake):
    async with Client(fake.address, max_connections=8) as client:
        await client.get("/v1/agent/services")
        session = client._session
        await client.get("/v1/agent/services")
        assert client._session is session and session.connector.limit == 8
    assert client._session is None


@pytest.mark.parametrize("inject, message", [
    ({"body": "{", "content_type": "application/json"}, "Invalid JSON from agent"),
    ({"body": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"}, "Invalid JSON from agent"),
    ({"body": "{}", "content_type": "application/json", "headers": {"X-Consul-Index": "12abc"}},
     "X-Consul-Index is not a non-negative integer"),
    ({"body": "{}", "content_type": "application/json", "headers": {"X-Consul-Index": "-3"}},
     "X-Consul-Index is not a non-negative integer"),
    ({"body": "{}", "content_type": "application/json", "headers": {"X-Consul-Index": "²"}},
     "X-Consul-Index is not a non-negative integer"),
])
async def test_garbage_answers_are_decode_errors_with_their_status(fake, inject, message):
    fake.inject("/v1/agent/connect/ca/roots", status=200, **inject)
    async with Client(fake.address) as client:
        with pytest.raises(DecodeError, match=message) as info:
            await client.blocking_get("/v1/agent/connect/ca/roots")
    assert info.value.status == 200


async def test_injected_failures_run_out(fake):
    fake.inject("/v1/agent/services", status=403, body="Permission denied", times=1)
    async with Client(fake.address) as client:
        with pytest.raises(APIError) as info:
            await client.get("/v1/agent/services")
        assert info.value.status == 403 and info.value.message == "Unexpected response code: 403 (Permission denied)"
        assert await client.get("/v1/agent/services") == {}
        with pytest.raises(APIError, match="404"):
            await client.get("/v1/no/such/endpoint")
        result = await client.blocking_get("/v1/agent/services")
        assert result.index == 0 and result.status == 200 and result.value == {}
