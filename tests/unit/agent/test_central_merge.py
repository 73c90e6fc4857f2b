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
