"""Config entries merged into the agent's proxy registrations (agent/central_config.py,
agent/local/central.py) on a real dev agent: a sidecar's row gets its service's protocol,
timeouts and the proxy-defaults, its blocked reader wakes within a second, what the
registration pins stays, and deleting the entries takes it all back."""

from __future__ import annotations

import threading
import time

import pytest

from tests.harness.cluster import dev_agent, retry


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    a = dev_agent(tmp_path_factory.mktemp("central"), extra=["-supervise-proxies=false"])
    try:
        yield a
    finally:
        a.kill()


def _register(agent, sid: str, config: dict | None = None) -> None:
    agent.put("/v1/agent/service/register", {
        "ID": sid, "Name": sid, "Port": 9000,
        "Connect": {"SidecarService": {"Proxy": {
            "Config": config or {}, "Upstreams": [{"DestinationName": f"{sid}-db", "LocalBindPort": 19001}]}}}})


def test_entries_reach_a_blocked_sidecar_read_within_a_second_and_go_away_with_their_deletion(agent):
    _register(agent, "cc-web")
    row, headers = agent.request("GET", "/v1/agent/service/cc-web-sidecar-proxy")
    assert "protocol" not in row["Proxy"]["Config"]
    woke: list[tuple[float, dict]] = []

    def block() -> None:
        answer, _ = agent.request("GET", f"/v1/agent/service/cc-web-sidecar-proxy?hash={headers['X-Consul-ContentHash']}"
                                         "&wait=10s", timeout=15)
        woke.append((time.monotonic(), answer))

    thread = threading.Thread(target=block)
    thread.start()
    time.sleep(0.3)
    assert not woke, "the read must block until an entry changes the row"
    written = time.monotonic()
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "cc-web", "Protocol": "http",
                                    "LocalRequestTimeoutMs": 2500, "MaxInboundConnections": 50}) is True
    thread.join(15)
    assert woke and woke[0][0] - written < 1.0, "the sidecar's blocked read did not wake within a second"
    config = woke[0][1]["Proxy"]["Config"]
    assert config == {"protocol": "http", "local_request_timeout_ms": 2500, "max_inbound_connections": 50}

    assert agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global",
                                    "Config": {"tracing": {"sampling": 10}},
                                    "AccessLogs": {"Enabled": True, "Type": "stderr"}}) is True
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "cc-web-db", "Protocol": "http"}) is True

    def merged() -> dict:
        proxy = agent.get("/v1/agent/service/cc-web-sidecar-proxy")["Proxy"]
        ok = proxy.get("AccessLogs", {}).get("Enabled") and proxy["Upstreams"][0].get("Config", {}).get("protocol")
        return proxy if ok else {}

    proxy = retry(merged, 5, 0.05, "proxy-defaults and the upstream's protocol merged")
    assert proxy["Config"]["tracing"] == {"sampling": 10}
    assert proxy["Upstreams"][0]["Config"] == {"protocol": "http"}
    # anti-entropy carries the merged row to the catalog
    retry(lambda: agent.get("/v1/catalog/service/cc-web-sidecar-proxy")[0]["ServiceProxy"]["Config"].get("protocol")
          == "http", 10, 0.1, "the merged row in the catalog")

    for kind, name in (("service-defaults", "cc-web"), ("service-defaults", "cc-web-db"), ("proxy-defaults", "global")):
        agent.request("DELETE", f"/v1/config/{kind}/{name}")
    retry(lambda: agent.get("/v1/agent/service/cc-web-sidecar-proxy")["Proxy"]["Config"] == {}, 5, 0.05,
          "the entries' values gone with them")


def test_what_the_registration_says_wins(agent):
    _register(agent, "cc-pinned", {"protocol": "tcp", "local_request_timeout_ms": 100})
    assert agent.put("/v1/config", {"Kind": "service-defaults", "Name": "cc-pinned", "Protocol": "http",
                                    "LocalRequestTimeoutMs": 9000, "MaxInboundConnections": 7}) is True
    # the value the registration leaves open arrives: the merge happened
    config = retry(lambda: (c := agent.get("/v1/agent/service/cc-pinned-sidecar-proxy")["Proxy"]["Config"])
                   .get("max_inbound_connections") and c, 5, 0.05, "the entry merged")
    assert config == {"protocol": "tcp", "local_request_timeout_ms": 100, "max_inbound_connections": 7}
    agent.request("DELETE", "/v1/config/service-defaults/cc-pinned")


@pytest.mark.parametrize("body, words", [
    ({"Config": {"tracing": {"sampling": 500}}}, "sampling"),
    ({"Config": {"tracing": {"otlp_endpoint": "ftp://x"}}}, "otlp_endpoint"),
    ({"Config": {"tracing": {"colour": "blue"}}}, "colour"),
    ({"AccessLogs": {"Enabled": True, "TextFormat": "%START_TIME% %BOGUS%"}}, "BOGUS"),
    ({"AccessLogs": {"Enabled": True, "JSONFormat": "{not json"}}, "JSONFormat"),
])
def test_proxy_defaults_the_sidecars_could_not_use_are_refused_on_write(agent, body, words):
    from tests.harness.cluster import HTTPError

    with pytest.raises(HTTPError) as err:
        agent.put("/v1/config", {"Kind": "proxy-defaults", "Name": "global", **body})
    assert err.value.status == 400 and words in err.value.body
    with pytest.raises(HTTPError):
        agent.get("/v1/config/proxy-defaults/global")  # nothing was written
