"""JSON bodies in the agent's exact shapes, for tests that feed FakeAgent.

One place that knows what a sidecar registration, a /v1/health/connect entry, a leaf
and a roots list look like on the wire (consul.md §1.1, §4, §6.6; ca/manager.py
`sign_csr` and `roots_api`, agent/leaf_cache.py), so tests of the proxy do not each
invent a slightly wrong one. Pure.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterable
from typing import Any

from mesh.catalog.structs import PASSING

__all__ = ["sidecar_service", "connect_entry", "leaf_body", "roots_body", "rfc3339"]

TRUST_DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
_WEIGHTS = {"Passing": 1, "Warning": 1}


def rfc3339(epoch: float) -> str:
    """The agent's time format (ca.manager.RFC3339)."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _colon_hex(data: bytes) -> str:
    return ":".join(f"{b:02x}" for b in data)


def _upstream(spec: tuple[str, int] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(spec, dict):
        return spec
    name, port = spec
    return {"DestinationType": "service", "DestinationName": name, "LocalBindAddress": "127.0.0.1",
            "LocalBindPort": port, "Config": {}}


def sidecar_service(parent_id: str, port: int, *, parent_name: str = "", local_port: int = 8080,
                    upstreams: Iterable[tuple[str, int] | dict[str, Any]] = (), config: dict[str, Any] | None = None,
                    address: str = "", tags: Iterable[str] = (), meta: dict[str, str] | None = None) -> dict[str, Any]:
    """The AgentService of `<parent_id>-sidecar-proxy` as the agent expands
    `connect { sidecar_service {} }`; upstreams as (name, local port) or full dicts."""
    name = parent_name or parent_id
    return {
        "Kind": "connect-proxy", "ID": f"{parent_id}-sidecar-proxy", "Service": f"{name}-sidecar-proxy",
        "Tags": list(tags), "Meta": dict(meta or {}), "Port": port, "Address": address, "Weights": dict(_WEIGHTS),
        "EnableTagOverride": False,
        "Proxy": {"DestinationServiceName": name, "DestinationServiceID": parent_id,
                  "LocalServiceAddress": "127.0.0.1", "LocalServicePort": local_port, "Config": dict(config or {}),
                  "Upstreams": [_upstream(u) for u in upstreams], "MeshGateway": {}, "Expose": {}},
    }


def _check(node: str, check_id: str, name: str, status: str, service_id: str = "", service_name: str = "",
           output: str = "") -> dict[str, Any]:
    return {"Node": node, "CheckID": check_id, "Name": name, "Status": status, "Notes": "", "Output": output,
            "ServiceID": service_id, "ServiceName": service_name, "ServiceTags": [], "Type": "",
            "Definition": {}, "CreateIndex": 1, "ModifyIndex": 1}


def connect_entry(destination: str, node: str, address: str, port: int, *, status: str = PASSING,
                  datacenter: str = "dc1", service_id: str = "", node_address: str = "",
                  native: bool = False, meta: dict[str, str] | None = None) -> dict[str, Any]:
    """One /v1/health/connect/<destination> entry: the node, a sidecar of
    `destination` at address:port (or the Connect-native service itself), and its
    checks (the node's serfHealth, passing, and the instance's with `status`).
    An empty `address` leaves Service.Address empty, so clients use the node's."""
    node_body = {"ID": "", "Node": node, "Address": node_address or address or "127.0.0.1",
                 "Datacenter": datacenter, "TaggedAddresses": {}, "Meta": {}, "CreateIndex": 1, "ModifyIndex": 1}
    if native:
        sid = service_id or destination
        service: dict[str, Any] = {"ID": sid, "Service": destination, "Connect": {"Native": True}}
    else:
        sid = service_id or f"{destination}-sidecar-proxy"
        service = {"Kind": "connect-proxy", "ID": sid, "Service": f"{destination}-sidecar-proxy",
                   "Proxy": {"DestinationServiceName": destination, "DestinationServiceID": destination,
                             "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080, "MeshGateway": {},
                             "Expose": {}}}
    service.update({"Tags": [], "Address": address, "Meta": dict(meta or {}), "Port": port, "Weights": dict(_WEIGHTS),
                    "EnableTagOverride": False, "CreateIndex": 1, "ModifyIndex": 1})
    checks = [_check(node, "serfHealth", "Serf Health Status", PASSING, output="Agent alive and reachable"),
              _check(node, f"service:{sid}", f"Service '{service['Service']}' check", status, sid, service["Service"])]
    return {"Node": node_body, "Service": service, "Checks": checks}


def leaf_body(service: str, cert_pem: str, private_key_pem: str, *, valid_after: float, valid_before: float,
              serial: int = 1, trust_domain: str = TRUST_DOMAIN, datacenter: str = "dc1") -> dict[str, Any]:
    """A /v1/agent/connect/ca/leaf/<service> body (FakeAgent.set_leaf adds the indexes)."""
    raw_serial = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return {"SerialNumber": _colon_hex(raw_serial), "CertPEM": cert_pem, "PrivateKeyPEM": private_key_pem,
            "Service": service, "ServiceURI": f"spiffe://{trust_domain}/ns/default/dc/{datacenter}/svc/{service}",
            "ValidAfter": rfc3339(valid_after), "ValidBefore": rfc3339(valid_before), "Namespace": "default"}


def roots_body(root_pems: Iterable[str], *, trust_domain: str = TRUST_DOMAIN, active: int = -1,
               intermediates: dict[int, list[str]] | None = None, not_after: float = 4102444800.0) -> dict[str, Any]:
    """A /v1/agent/connect/ca/roots body: every PEM a root, `active` the index of the
    active one (the last by default), `intermediates` the cross-signed certificates of
    a root by position. IDs are derived from the PEM text (stable, not the real
    SHA-1 of the DER: nothing parses them)."""
    pems = list(root_pems)
    ids = [_colon_hex(hashlib.sha1(p.encode()).digest()) for p in pems]  # noqa: S324 - an identifier
    active_id = ids[active] if pems else ""
    roots = []
    for i, (pem, root_id) in enumerate(zip(pems, ids, strict=True)):
        roots.append({
            "ID": root_id, "Name": "Consul CA Root Cert", "SerialNumber": i + 1, "SigningKeyID": root_id,
            "ExternalTrustDomain": trust_domain.split(".")[0], "NotBefore": rfc3339(0), "NotAfter": rfc3339(not_after),
            "RootCert": pem, "IntermediateCerts": (intermediates or {}).get(i), "PrivateKeyType": "ec",
            "PrivateKeyBits": 256, "Active": root_id == active_id, "RotatedOutAt": "0001-01-01T00:00:00Z",
            "CreateIndex": 1, "ModifyIndex": 1,
        })
    return {"ActiveRootID": active_id, "TrustDomain": trust_domain, "Roots": roots}
