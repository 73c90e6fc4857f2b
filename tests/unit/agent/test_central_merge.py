"""Config entries merged into local proxy rows (agent/local/central.py)."""

from __future__ import annotations

from mesh.agent.local.central import CentralConfig, merge_central
from mesh.catalog.structs import Service


def _sidecar(config=None, upstreams=(), access_logs=None) -> Service:
    proxy = {"DestinationServiceName": "web", "DestinationServiceID": "web", "Config": dict(config or {}),
             "Upstreams": [dict(u) for u in upstreams]}
    if access_logs is not None:
        proxy["AccessLogs"] = access_logs
    return Service(id="web-sidecar-proxy", service="web-sidecar-proxy", kind="connect-proxy", port=21000, proxy=proxy)


def test_no_entries_leaves_the_row_alone():
    row = _sidecar({"x": 1})
    assert merge_central(row, CentralConfig()) is row


def test_plain_services_are_never_touched():
    row = Service(id="web", service="web", port=80)
    central = CentralConfig(proxy_defaults={"Config": {"protocol": "http"}})
    assert merge_central(row, central) is row


def test_service_defaults_protocol_and_timeouts_fill_the_config():
    central = CentralConfig(service_defaults={"web": {"Protocol": "http", "LocalRequestTimeoutMs": 2500,
                                                      "LocalConnectTimeoutMs": 300, "MaxInboundConnections": 7}})
    merged = merge_central(_sidecar(), central)
    assert merged.proxy["Config"] == {"protocol": "http", "local_request_timeout_ms": 2500,
                                      "local_connect_timeout_ms": 300, "max_inbound_connections": 7}


def test_service_defaults_outrank_proxy_defaults_and_the_registration_outranks_both():
    central = CentralConfig(proxy_defaults={"Config": {"protocol": "tcp", "idle_timeout_ms": 9}},
                            service_defaults={"web": {"Protocol": "http"}})
    assert merge_central(_sidecar(), central).proxy["Config"] == {"protocol": "http", "idle_timeout_ms": 9}
    pinned = merge_central(_sidecar({"protocol": "tcp"}), central)
    assert pinned.proxy["Config"]["protocol"] == "tcp"


def test_service_names_compare_without_case():
    central = CentralConfig(service_defaults={"web": {"Protocol": "http"}})
    row = _sidecar()
    row = Service(id=row.id, service=row.service, kind=row.kind, port=row.port,
                  proxy={**row.proxy, "DestinationServiceName": "Web"})
    assert merge_central(row, central).proxy["Config"]["protocol"] == "http"


def test_upstreams_get_their_destinations_protocol():
    central = CentralConfig(proxy_defaults={"Config": {"protocol": "http"}},
                            service_defaults={"db": {"Protocol": "tcp"}})
    row = _sidecar(upstreams=[{"DestinationName": "api", "LocalBindPort": 1},
                              {"DestinationName": "db", "LocalBindPort": 2},
                              {"DestinationName": "cache", "LocalBindPort": 3, "Config": {"protocol": "tcp"}}])
    ups = merge_central(row, central).proxy["Upstreams"]
    assert [u["Config"]["protocol"] for u in ups] == ["http", "tcp", "tcp"]


def test_access_logs_come_from_proxy_defaults_unless_the_registration_enables_its_own():
    logs = {"Enabled": True, "Type": "stderr"}
    central = CentralConfig(proxy_defaults={"AccessLogs": logs})
    assert merge_central(_sidecar(), central).proxy["AccessLogs"] == logs
    own = {"Enabled": True, "Type": "file", "Path": "/tmp/x"}
    assert merge_central(_sidecar(access_logs=own), central).proxy["AccessLogs"] == own


UPSTREAM_CONFIG = {
    "Defaults": {"ConnectTimeoutMs": 500, "Limits": {"MaxConnections": 10, "MaxPendingRequests": 0},
                 "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 3}},
    "Overrides": [{"Name": "api", "ConnectTimeoutMs": 250, "Protocol": "http",
                   "PassiveHealthCheck": {"Interval": "1s", "EnforcingConsecutive5xx": 50, "MaxEjectionPercent": 20,
                                          "BaseEjectionTime": "30s"}},
                  {"Name": "other", "ConnectTimeoutMs": 1}]}


def test_upstream_config_defaults_then_the_override_named_like_the_upstream():
    central = CentralConfig(service_defaults={"web": {"UpstreamConfig": UPSTREAM_CONFIG},
                                              "db": {"Protocol": "tcp"}})
    row = _sidecar(upstreams=[{"DestinationName": "API", "LocalBindPort": 1},
                              {"DestinationName": "db", "LocalBindPort": 2},
                              {"DestinationName": "cache", "LocalBindPort": 3,
                               "Config": {"connect_timeout_ms": 7, "limits": {"max_connections": 1}}},
                              {"DestinationName": "q", "DestinationType": "prepared_query", "LocalBindPort": 4}])
    api, db, cache, query = merge_central(row, central).proxy["Upstreams"]
    # the override replaces a whole key (PassiveHealthCheck), not its fields
    assert api["Config"] == {"connect_timeout_ms": 250, "limits": {"max_connections": 10, "max_pending_requests": 0},
                             "passive_health_check": {"interval": "1s", "enforcing_consecutive_5xx": 50,
                                                      "max_ejection_percent": 20, "base_ejection_time": "30s"},
                             "protocol": "http"}
    # the destination's own protocol outranks UpstreamConfig's; the defaults apply to every service upstream
    assert db["Config"] == {"connect_timeout_ms": 500, "limits": {"max_connections": 10, "max_pending_requests": 0},
                            "passive_health_check": {"interval": "10s", "max_failures": 3}, "protocol": "tcp"}
    # what the registration says wins, key by key
    assert cache["Config"]["connect_timeout_ms"] == 7 and cache["Config"]["limits"] == {"max_connections": 1}
    assert cache["Config"]["passive_health_check"] == {"interval": "10s", "max_failures": 3}
    assert "Config" not in query


def test_upstream_config_of_another_service_does_not_apply():
    central = CentralConfig(service_defaults={"api": {"UpstreamConfig": UPSTREAM_CONFIG}})
    row = _sidecar(upstreams=[{"DestinationName": "db", "LocalBindPort": 1}])
    assert "Config" not in merge_central(row, central).proxy["Upstreams"][0]


def test_rate_limits_go_to_the_proxy_config_unless_the_registration_has_its_own():
    limits = {"InstanceLevel": {"RequestsPerSecond": 10, "Routes": [{"PathPrefix": "/a", "RequestsPerSecond": 1}]}}
    central = CentralConfig(service_defaults={"web": {"RateLimits": limits}})
    assert merge_central(_sidecar(), central).proxy["Config"] == {"rate_limits": limits}
    own = {"InstanceLevel": {"RequestsPerSecond": 99}}
    assert merge_central(_sidecar({"rate_limits": own}), central).proxy["Config"]["rate_limits"] == own
