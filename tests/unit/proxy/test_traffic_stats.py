"""Traffic management's metrics as Prometheus reads them (proxy/traffic_stats.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from mesh.proxy.traffic_stats import TrafficStats


def test_counts_render_with_their_labels():
    stats = TrafficStats(lambda: [("api", "v2.api.default.default.dc1", 1)])
    stats.request("api", "v1.api.default.default.dc1", failover=False)
    stats.request("api", "v2.api.default.default.dc1", failover=True)
    stats.request("api", "v2.api.default.default.dc1", failover=True)
    stats.overloaded("api", "requests")
    stats.rate_limited("route-0")
    registry = CollectorRegistry()
    registry.register(stats)
    text = generate_latest(registry).decode()
    assert 'mesh_proxy_target_requests_total{target="v1.api.default.default.dc1",upstream="api"} 1.0' in text
    assert 'mesh_proxy_target_requests_total{target="v2.api.default.default.dc1",upstream="api"} 2.0' in text
    assert 'mesh_proxy_failover_requests_total{target="v2.api.default.default.dc1",upstream="api"} 2.0' in text
    assert 'mesh_proxy_overloaded_total{limit="requests",upstream="api"} 1.0' in text
    assert 'mesh_proxy_rate_limited_total{route="route-0"} 1.0' in text
    assert 'mesh_proxy_ejected_instances{target="v2.api.default.default.dc1",upstream="api"} 1.0' in text
