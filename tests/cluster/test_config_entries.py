"""Config entries across a cluster: written through one server, read through another,
written and read (blocking) through a client agent, which forwards both to the servers."""

from __future__ import annotations

import threading

import pytest

from tests.harness.cluster import Cluster, retry

pytestmark = pytest.mark.cluster


def test_an_entry_written_through_one_server_is_read_through_another_and_a_client(tmp_path):
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()
        s1, s2, _ = cluster.agents
        client = cluster.start_client("c1")
        entry = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
        assert s1.put("/v1/config", entry) is True
        got = retry(lambda: s2.get("/v1/config/service-defaults/web?stale"), 5, 0.02, "the entry on s2")
        assert got["Protocol"] == "http"
        assert client.get("/v1/config/service-defaults/web")["ModifyIndex"] == got["ModifyIndex"]
        # a blocking read on the client, woken by a write made through the client after it started
        index = got["ModifyIndex"]
        seen: dict = {}
        waiter = threading.Thread(target=lambda: seen.update(value=client.get(
            f"/v1/config/service-defaults/web?index={index}&wait=20s", timeout=30)))
        waiter.start()
        threading.Event().wait(0.3)
        assert waiter.is_alive(), "the client's read did not block"
        assert client.put("/v1/config", {**entry, "LocalRequestTimeoutMs": 5000}) is True
        waiter.join(10)
        assert seen["value"]["LocalRequestTimeoutMs"] == 5000
        router = {"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]}
        assert client.put("/v1/config", router) is True
        assert retry(lambda: s2.get("/v1/config/service-router?stale"), 5, 0.02, "router on s2")[0]["Name"] == "web"
        assert client.request("DELETE", "/v1/config/service-router/web")[0] == {}
    finally:
        cluster.stop()
