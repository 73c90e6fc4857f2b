"""The leader's CA duties, as pure functions over the replicated CA state (a dict).

`initial_state` creates the cluster's trust domain and first root; `sign_csr` checks a
CSR against the service it claims and signs it with the active root. The caller
supplies time, serial (a Raft index) and the cluster secret; it runs them off the event
loop (key generation and signing are CPU work).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from mesh.catalog.errors import InvalidRequest

from . import x509 as certs
from .spiffe import ServiceID, parse_service_id, trust_domain_for

__all__ = ["DEFAULT_CONFIG", "initial_state", "roots_api", "sign_csr", "RFC3339"]

DEFAULT_CONFIG = {"LeafCertTTL": "72h", "RootCertTTL": "87600h", "IntermediateCertTTL": "8760h",
                  "PrivateKeyType": "ec", "PrivateKeyBits": 256}
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def _hours(text: str) -> datetime.timedelta:
    return datetime.timedelta(hours=float(str(text).rstrip("h")))


def initial_state(now: datetime.datetime, secret: str, serial: int, config: dict[str, Any] | None = None) -> dict[str, Any]:
    config = {**DEFAULT_CONFIG, **(config or {})}
    cluster_id = str(uuid.uuid4())
    trust_domain = trust_domain_for(cluster_id)
    key = certs.generate_key(str(config["PrivateKeyType"]), int(config["PrivateKeyBits"]))
    root = certs.build_root(key, trust_domain, serial, now, _hours(config["RootCertTTL"]),
                            common_name=f"pri-{cluster_id[:8]}.consul.ca.{cluster_id[:8]}.consul")
    root_id = certs.fingerprint(root)
    return {
        "cluster_id": cluster_id,
        "trust_domain": trust_domain,
        "active_root_id": root_id,
        "config": config,
        "roots": [{
            "ID": root_id,
            "Name": "Consul CA Root Cert",
            "SerialNumber": serial,
            "SigningKeyID": certs.serial_hex(int.from_bytes(root.fingerprint(certs.hashes.SHA256())[:20], "big")),
            "ExternalTrustDomain": cluster_id,
            "NotBefore": root.not_valid_before_utc.strftime(RFC3339),
            "NotAfter": root.not_valid_after_utc.strftime(RFC3339),
            "RootCert": certs.pem(root),
            "IntermediateCerts": None,
            "PrivateKeyType": config["PrivateKeyType"],
            "PrivateKeyBits": config["PrivateKeyBits"],
            "SigningKey": certs.seal_key(certs.key_pem(key), secret),
        }],
    }


def roots_api(state: dict[str, Any], index: int) -> dict[str, Any]:
    """/v1/connect/ca/roots: every root (clients must trust all), private parts removed."""
    roots = []
    for root in state.get("roots", []):
        row = {k: v for k, v in root.items() if k != "SigningKey"}
        row.update(Active=root["ID"] == state.get("active_root_id"), RotatedOutAt="0001-01-01T00:00:00Z",
                   CreateIndex=state.get("index", index), ModifyIndex=state.get("index", index))
        roots.append(row)
    return {"ActiveRootID": state.get("active_root_id", ""), "TrustDomain": state.get("trust_domain", ""),
            "Roots": roots}


def sign_csr(state: dict[str, Any], csr_pem: str, service: str, datacenter: str, serial: int,
             now: datetime.datetime, secret: str) -> dict[str, Any]:
    """Sign a leaf for `service`; the CSR must name exactly that service in this
    cluster's trust domain and datacenter."""
    if not state.get("roots"):
        raise InvalidRequest("the CA is not initialized yet")
    csr, uri = certs.csr_service_uri(csr_pem.encode())
    sid = parse_service_id(uri)
    expected = ServiceID(state["trust_domain"], "default", datacenter, service)
    if sid != expected:
        raise InvalidRequest(f"CSR SPIFFE ID {uri!r} does not match the requested service {expected.uri()!r}")
    root = next(r for r in state["roots"] if r["ID"] == state["active_root_id"])
    key = certs.unseal_key(root["SigningKey"], secret)
    root_cert = certs.load_cert(root["RootCert"])
    leaf = certs.sign_leaf(csr, uri, key, root_cert, serial, now, _hours(state["config"]["LeafCertTTL"]))
    return {
        "SerialNumber": certs.serial_hex(serial),
        "CertPEM": certs.pem(leaf),
        "Service": service,
        "ServiceURI": uri,
        "ValidAfter": leaf.not_valid_before_utc.strftime(RFC3339),
        "ValidBefore": leaf.not_valid_after_utc.strftime(RFC3339),
        "Namespace": "default",
    }
