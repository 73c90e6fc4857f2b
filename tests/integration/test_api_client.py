"""mesh.api against a real dev agent: every typed call parses what our agent really
answers, and FakeAgent's shapes (api.builders) have exactly the real fields, so the
proxy's unit tests run against the API the proxy will meet."""

from __future__ import annotations

import asyncio
import time

from mesh.api.agent import AgentAPI
from mesh.api.builders import connect_entry, leaf_body, roots_body, sidecar_service
from mesh.api.client import Client
from mesh.api.testing import FakeAgent
from mesh.api.watch import Watch

SIDECAR = {
    "Kind": "connect-proxy", "Name": "apitest-sidecar-proxy", "Port": 21000,
    "Proxy": {"DestinationServiceName": "apitest", "DestinationServiceID": "apitest",
              "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080, "Config": {"bind_port": 21000},
              "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]},
    "Check": {"TTL": "30s", "CheckID": "apitest-proxy-ttl"},
}


def _keys(real: dict, fake: dict, where: str) -> None:
    assert set(real) == set(fake), f"{where}: only real {set(real) - set(fake)}, only fake {set(fake) - set(real)}"


async def _until(fetch, ok, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        result = await fetch()
        if ok(result) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_typed_calls_parse_the_real_agent_and_the_fake_has_its_shapes(dev):
    async with Client(dev.http) as client, FakeAgent() as fake, Client(fake.address) as fake_client:
        api = AgentAPI(client)
        await api.service_register({"Name": "apitest", "Port": 8080})
        await api.service_register(SIDECAR)
        await api.check_pass("apitest-proxy-ttl", note="up")

        own = await api.agent_service("apitest-sidecar-proxy")
        assert own.content_hash and own.value.proxy.upstreams[0].destination_name == "db"
        assert own.value.proxy.config == {"bind_port": 21000} and own.value.datacenter == "dc1"
        fake.set_service(sidecar_service("apitest", 21000, upstreams=[{"DestinationName": "db", "LocalBindPort": 9191}],
                                         config={"bind_port": 21000}))
        real_raw = (await client.blocking_get("/v1/agent/service/apitest-sidecar-proxy")).value
        fake_raw = (await fake_client.blocking_get("/v1/agent/service/apitest-sidecar-proxy")).value
        _keys(real_raw, fake_raw, "agent service")
        _keys(real_raw["Proxy"], fake_raw["Proxy"], "agent service Proxy")
        assert (await api.agent_services())["apitest-sidecar-proxy"].port == 21000

        # a fresh agent's CA comes up a moment after its leader: wait the way a proxy does
        watch = Watch(api.roots, wait=10, min_backoff=0.05)
        while not (roots := await asyncio.wait_for(watch.next_result(), 15)).value.trust_domain:
            pass
        assert roots.index > 0 and roots.value.trust_domain.endswith(".consul") and roots.value.active()
        leaf = await api.leaf("apitest")
        assert leaf.value.service_uri.startswith(f"spiffe://{roots.value.trust_domain}/")
        assert leaf.value.valid_before > time.time() > leaf.value.valid_after - 120
        assert leaf.index == leaf.value.modify_index
        real_root = roots.value.active().root_cert
        fake.set_roots(roots_body([real_root]))
        fake.set_leaf("apitest", leaf_body("apitest", leaf.value.cert_pem, leaf.value.private_key_pem,
                                           valid_after=leaf.value.valid_after, valid_before=leaf.value.valid_before))
        for path in ("/v1/agent/connect/ca/roots", "/v1/agent/connect/ca/leaf/apitest"):
            real_raw = (await client.blocking_get(path)).value
            fake_raw = (await fake_client.blocking_get(path)).value
            _keys(real_raw, fake_raw, path)
            if "Roots" in real_raw:
                _keys(real_raw["Roots"][0], fake_raw["Roots"][0], "a root")

        entries = await _until(lambda: api.health_connect("apitest"), lambda r: bool(r.value))
        (endpoint,) = entries.value
        assert (endpoint.destination, endpoint.port, endpoint.service_id) == ("apitest", 21000, "apitest-sidecar-proxy")
        assert endpoint.passing and endpoint.address == "127.0.0.1"  # the node's, as Service.Address is empty
        real_raw = (await client.blocking_get("/v1/health/connect/apitest"))
        fake.set_connect_endpoints("apitest", [connect_entry("apitest", "n1", "", 21000, node_address="127.0.0.1")])
        fake_raw = (await fake_client.blocking_get("/v1/health/connect/apitest")).value
        for part in ("Node", "Service"):
            _keys(real_raw.value[0][part], fake_raw[0][part], f"health entry {part}")
        _keys(real_raw.value[0]["Checks"][0], fake_raw[0]["Checks"][0], "health entry check")
        assert set(real_raw.headers) >= {"X-Consul-Index", "X-Consul-KnownLeader", "X-Consul-Effective-Consistency",
                                         "X-Consul-Default-ACL-Policy"}

        await client.request("POST", "/v1/connect/intentions",
                             body={"SourceName": "web", "DestinationName": "apitest", "Action": "deny"})
        match = await api.intentions_match_destination("apitest")
        intentions, default_allow = match.value
        assert [(i.source_name, i.action) for i in intentions] == [("web", "deny")] and default_allow is True
        assert intentions[0].id and intentions[0].modify_index == match.index

        task = asyncio.create_task(api.agent_service("apitest-sidecar-proxy", hash=own.content_hash, wait=10))
        await asyncio.sleep(0.3)
        assert not task.done()
        await api.service_register(dict(SIDECAR, Port=21001))
        assert (await asyncio.wait_for(task, 5)).value.port == 21001
        await api.service_deregister("apitest-sidecar-proxy")
        await api.service_deregister("apitest")
