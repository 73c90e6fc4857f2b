"""FakeAgent itself: the agent going away and coming back on the same port with a
watch riding through it, and the details the proxy's tests will rely on."""

from __future__ import annotations

import asyncio
import functools

import pytest

from mesh.api.agent import AgentAPI
from mesh.api.builders import roots_body, sidecar_service
from mesh.api.client import Client
from mesh.api.errors import APIError
from mesh.api.testing import FakeAgent
from mesh.api.watch import Watch
from mesh.catalog.intentions import parse_intention

CERT = "-----BEGIN CERTIFICATE-----\nMIIB{}\n-----END CERTIFICATE-----\n"


async def test_stop_cuts_blocked_requests_and_start_serves_the_same_port_again():
    async with FakeAgent() as fake, Client(fake.address) as client:
        api = AgentAPI(client)
        port = fake.port
        fake.set_roots(roots_body([CERT.format(1)]))
        first = await api.roots()
        blocked = asyncio.create_task(api.roots(index=first.index, wait=30))
        await asyncio.sleep(0.2)
        await asyncio.wait_for(fake.stop(), 5)
        with pytest.raises(APIError) as info:
            await asyncio.wait_for(blocked, 5)
        assert info.value.status == 0
        with pytest.raises(APIError):
            await api.roots()
        await fake.start()
        assert fake.port == port
        assert (await api.roots()).value == first.value  # state survives, as the agent's data-dir


async def test_a_watch_recovers_when_the_agent_comes_back():
    async with FakeAgent() as fake, Client(fake.address) as client:
        api = AgentAPI(client)
        fake.set_roots(roots_body([CERT.format(1)]))
        watch = Watch(functools.partial(api.roots), wait=30, name="roots", min_backoff=0.05, max_backoff=0.2)
        seen: asyncio.Queue = asyncio.Queue()

        async def consume() -> None:
            async for roots in watch:
                await seen.put(roots)

        task = asyncio.create_task(consume())
        try:
            assert (await asyncio.wait_for(seen.get(), 5)).active().root_cert == CERT.format(1)
            await fake.stop()
            for _ in range(100):
                if watch.failures >= 2:
                    break
                await asyncio.sleep(0.05)
            assert watch.last_error is not None and watch.last_error.status == 0 and watch.age() > 0
            fake.set_roots(roots_body([CERT.format(1), CERT.format(2)]))  # changed while it was down
            await fake.start()
            rotated = await asyncio.wait_for(seen.get(), 5)
            assert rotated.active().root_cert == CERT.format(2) and len(rotated.bundle()) == 2
            assert watch.last_error is None and watch.age() < 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_hash_watch_on_the_proxys_own_registration():
    async with FakeAgent() as fake, Client(fake.address) as client:
        api = AgentAPI(client)
        fake.set_service(sidecar_service("web", 21000))
        watch = Watch(functools.partial(api.agent_service, "web-sidecar-proxy"), mode="hash", wait=30)
        it = watch.__aiter__()
        assert (await asyncio.wait_for(it.__anext__(), 5)).port == 21000
        nxt = asyncio.create_task(it.__anext__())
        await asyncio.sleep(0.2)
        assert not nxt.done()
        fake.set_service(sidecar_service("web", 21000, config={"bind_port": 21500}))
        assert (await asyncio.wait_for(nxt, 5)).proxy.config == {"bind_port": 21500}


async def test_every_answer_carries_the_default_policy_and_bad_queries_are_400():
    async with FakeAgent() as fake, Client(fake.address) as client:
        fake.set_intentions("api", [], default_allow=False)
        for path, params in [("/v1/agent/services", {}), ("/v1/agent/connect/ca/roots", {"index": "x"}),
                             ("/v1/agent/connect/ca/roots", {"index": "1", "wait": "10"}), ("/v1/nothing", {})]:
            try:
                _, headers = await client.request("GET", path, params=params)
            except APIError as exc:
                assert exc.status in (400, 404), exc
                assert fake.requests[-1].path == path
                continue
            assert headers["X-Consul-Default-ACL-Policy"] == "deny"
        with pytest.raises(APIError, match="400 .Invalid wait time"):
            await client.request("GET", "/v1/agent/connect/ca/roots", params={"index": "1", "wait": "10"})


async def test_intention_match_includes_wildcards_in_precedence_order():
    async with FakeAgent() as fake, Client(fake.address) as client:
        fake.set_intentions("*", [parse_intention({"SourceName": "*", "DestinationName": "*", "Action": "deny"})])
        fake.set_intentions("api", [{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                                    parse_intention({"SourceName": "*", "DestinationName": "api", "Action": "allow"})])
        fake.set_intentions("db", [parse_intention({"SourceName": "web", "DestinationName": "db", "Action": "deny"})])
        body = await client.get("/v1/connect/intentions/match", by="destination", name="api")
        assert [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in body["api"]] == [
            ("web", "api", 9), ("*", "api", 8), ("*", "*", 5)]
        assert fake.default_allow is True  # kept when not given


async def test_leaf_for_an_unknown_service_fails_until_set():
    async with FakeAgent() as fake, Client(fake.address) as client:
        with pytest.raises(APIError) as info:
            await AgentAPI(client).leaf("web")
        assert info.value.status == 500 and "no leaf set" in info.value.message
