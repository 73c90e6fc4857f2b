"""/v1/discovery-chain on one server agent over the in-memory Raft: a chain that does not
compile answers 500 with the reason (entries written past the state machine's checks,
as an old snapshot could hold them), and the named read's parameters cross the RPC."""

from __future__ import annotations

import pytest

from mesh.agent.server.queries import QUERIES
from mesh.agent.server.rpc_args import read_params
from mesh.catalog.config_entries import parse_config_entry
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.store import Store
from tests.harness.one_server import one_server


@pytest.fixture
async def server():
    cluster, agent, client = await one_server()
    yield agent, client
    await client.close()
    for raft in cluster.nodes.values():
        await raft.stop()


async def test_a_chain_that_does_not_compile_is_a_500_with_the_reason(server):
    agent, client = server
    store = agent.server.fsm.store
    store.set_config_entry(1, parse_config_entry({"Kind": "service-resolver", "Name": "a",
                                                  "Redirect": {"Service": "b"}}))
    store.set_config_entry(2, parse_config_entry({"Kind": "service-resolver", "Name": "b",
                                                  "Redirect": {"Service": "a"}}))
    resp = await client.get("/v1/discovery-chain/a")
    assert resp.status == 500
    assert (await resp.text()).strip() == (
        "detected circular resolver redirect: [a.default.default.dc1 -> b.default.default.dc1 -> "
        "a.default.default.dc1]")
    resp = await client.get("/v1/discovery-chain/other")
    assert resp.status == 200 and (await resp.json())["Chain"]["Default"] is True
    assert int(resp.headers["X-Consul-Index"]) >= 2


def test_the_named_read_and_its_parameters():
    params = {"name": "web", "compile_dc": "dc2", "override_protocol": "http", "override_connect_timeout": 1.5}
    assert read_params({"p": params}) == params
    for bad in ({"compile_dc": 1}, {"override_protocol": 2}, {"override_connect_timeout": "1s"},
                {"override_connect_timeout": True}, {"override_connect_timeout": -1}):
        with pytest.raises(InvalidRequest, match="Read: parameter"):
            read_params({"p": {**params, **bad}})
    store = Store()
    store.ca = {"trust_domain": "td.consul"}
    index, value = QUERIES["discovery_chain"].run(store, params)
    chain = value["Chain"]
    assert chain["Datacenter"] == "dc2" and chain["Protocol"] == "http"
    assert chain["Targets"]["web.default.default.dc2"]["SNI"] == "web.default.dc2.internal.td.consul"
    assert chain["Targets"]["web.default.default.dc2"]["ConnectTimeout"] == "1.5s"
    keys = QUERIES["discovery_chain"].keys(params)
    assert set(keys) == {"config.service-router", "config.service-splitter", "config.service-resolver",
                         "config.service-defaults", "config.proxy-defaults", "ca"}
