"""The leader's CA duties, as pure functions over the replicated CA state (a dict).

`initial_state` creates the cluster's trust domain and first root; `sign_csr` checks a
CSR against the service it claims and signs it with the active root. The caller
supplies time, serial (a Raft index) and the cluster secret; it runs them off the event
loop (key generation and signing are CPU work).
"""

from __future__ import annotations

import datetime
import functools
import uuid
from typing import Any

from mesh.catalog.durations import format_duration, parse_duration
from mesh.catalog.errors import InvalidRequest, MeshError

from . import x509 as certs
from .spiffe import AgentID, ServiceID, parse_agent_id, parse_service_id, trust_domain_for

__all__ = ["DEFAULT_CONFIG", "initial_state", "roots_api", "sign_csr", "RFC3339", "validate_config", "rotate",
           "config_api", "rotation_due", "prune", "parse_time", "ROTATE_AT", "reconfigure", "sign_agent_csr",
           "root_pems"]

DEFAULT_CONFIG = {"LeafCertTTL": "72h", "RootCertTTL": "87600h", "IntermediateCertTTL": "8760h",
                  "PrivateKeyType": "ec", "PrivateKeyBits": 256}
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
# The leader replaces the active root once this much of its lifetime has passed: the
# rest (at least 3/4 of a leaf lifetime, as RootCertTTL >= 3 x LeafCertTTL) is the
# time for every agent to fetch the new root and re-issue its leaves.
ROTATE_AT = 0.75
# Clock skew allowed for between servers and agents when pruning.
_PRUNE_SLACK = datetime.timedelta(minutes=1)


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, RFC3339).replace(tzinfo=datetime.UTC)


def _hours(text: str) -> datetime.timedelta:
    return datetime.timedelta(hours=float(str(text).rstrip("h")))


# CSRMaxPerSecond and CSRMaxConcurrent: far past any real limit, small enough for every
# server's arithmetic and for msgpack
_CSR_LIMIT_MAX = (1 << 31) - 1
_CONFIG_KEYS = {"LeafCertTTL", "RootCertTTL", "IntermediateCertTTL", "PrivateKeyType", "PrivateKeyBits",
                "RotationPeriod", "CSRMaxPerSecond", "CSRMaxConcurrent", "SkipValidate"}


def _ttl_hours(config: dict[str, Any], key: str) -> float:
    return parse_duration(config[key], what=f"Config.{key}") / 3600


def _hours_text(hours: float) -> str:
    """"72h"; plain digits for the large ones, where :g would write 2.56205e+06 (rounded
    up past the longest duration, and not a Go duration at all)."""
    text = f"{hours:g}"
    return f"{hours:.15g}h" if "e" in text else f"{text}h"


def validate_config(body: Any) -> dict[str, Any]:
    """PUT /v1/connect/ca/configuration: {Provider, Config}; the built-in provider only.
    Returns the full config (defaults filled in) or raises InvalidRequest with the reason."""
    if not isinstance(body, dict):
        raise InvalidRequest("body must be a JSON object")
    for flag in ("ForceRotation", "ForceWithoutCrossSigning"):
        if not isinstance(body.get(flag, False), bool):
            raise InvalidRequest(f"{flag} must be true or false")
    provider = body.get("Provider", "consul")
    if provider != "consul":
        raise InvalidRequest(f"unsupported CA provider {provider!r} (only the built-in \"consul\" provider)")
    raw = body.get("Config") or {}
    if not isinstance(raw, dict):
        raise InvalidRequest("Config must be an object")
    unknown = set(raw) - _CONFIG_KEYS
    if unknown:
        raise InvalidRequest(f"unknown CA config keys: {', '.join(sorted(unknown))}")
    config = {**DEFAULT_CONFIG, **raw}
    key_type, bits = str(config["PrivateKeyType"]), config["PrivateKeyBits"]
    if not isinstance(bits, int) or (key_type, bits) not in certs.KEY_TYPES:
        raise InvalidRequest(f"unsupported PrivateKeyType/PrivateKeyBits: {key_type} {bits} "
                             "(ec 256/384, rsa 2048/4096)")
    for key, kind in (("CSRMaxPerSecond", (int, float)), ("CSRMaxConcurrent", (int,))):
        value = config.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, kind) or not 0 <= value <= _CSR_LIMIT_MAX:
            raise InvalidRequest(f"Config.{key} must be a number from 0 (no limit) to {_CSR_LIMIT_MAX}")
    if not isinstance(config.get("SkipValidate", False), bool):
        raise InvalidRequest("Config.SkipValidate must be true or false")
    if "RotationPeriod" in config:
        # kept as given (Consul echoes it), so it must be one msgpack and every server can carry
        period = parse_duration(config["RotationPeriod"], what="Config.RotationPeriod")
        if not isinstance(config["RotationPeriod"], str):
            config["RotationPeriod"] = format_duration(period)
    leaf, root, intermediate = (_ttl_hours(config, k) for k in ("LeafCertTTL", "RootCertTTL", "IntermediateCertTTL"))
    if not 1 / 3600 * 10 <= leaf <= 8760:
        raise InvalidRequest("Config.LeafCertTTL must be between 10s and 8760h")
    if intermediate < 3 * leaf:
        raise InvalidRequest("Config.IntermediateCertTTL must be at least 3 times LeafCertTTL")
    if root < intermediate:
        raise InvalidRequest("Config.RootCertTTL must be at least IntermediateCertTTL")
    for key in ("LeafCertTTL", "RootCertTTL", "IntermediateCertTTL"):
        config[key] = _hours_text(_ttl_hours(config, key))
    return config


def config_api(state: dict[str, Any]) -> dict[str, Any]:
    index = state.get("index", 0)
    return {"Provider": "consul", "Config": dict(state.get("config", DEFAULT_CONFIG)), "State": None,
            "ForceWithoutCrossSigning": False, "CreateIndex": index, "ModifyIndex": index}


def rotate(state: dict[str, Any], config: dict[str, Any], now: datetime.datetime, secret: str,
           serial: int, without_cross_signing: bool = False) -> dict[str, Any]:
    """A new root with the new config, cross-signed by the active one. Both stay
    trusted (the old one until its leaves can have expired); new leaves chain to the
    new root through the cross-signed certificate for peers that know only the old.

    An old key that cannot be used (sealed with another cluster's key after a
    snapshot restore, say) refuses the rotation unless `without_cross_signing`, as
    Consul's ForceWithoutCrossSigning: then peers that have not fetched the new root
    yet refuse new leaves until they do."""
    old = next(r for r in state["roots"] if r["ID"] == state["active_root_id"])
    try:
        old_key = certs.unseal_key(old["SigningKey"], secret)
    except InvalidRequest as exc:
        if not without_cross_signing:
            raise InvalidRequest(f"cannot cross-sign the new root: {exc}; "
                                 "set ForceWithoutCrossSigning to rotate anyway") from None
        old_key = None
    old_cert = certs.load_cert(old["RootCert"])
    cluster_id = state["cluster_id"]
    key = certs.generate_key(str(config["PrivateKeyType"]), int(config["PrivateKeyBits"]))
    root = certs.build_root(key, state["trust_domain"], serial, now, _hours(config["RootCertTTL"]),
                            common_name=f"pri-{serial}.consul.ca.{cluster_id[:8]}.consul")
    cross = certs.cross_sign(root, old_key, old_cert, serial, now) if old_key is not None else None
    root_id = certs.fingerprint(root)
    new_root = {
        "ID": root_id, "Name": "Consul CA Root Cert", "SerialNumber": serial,
        "SigningKeyID": certs.serial_hex(int.from_bytes(root.fingerprint(certs.hashes.SHA256())[:20], "big")),
        "ExternalTrustDomain": cluster_id,
        "NotBefore": root.not_valid_before_utc.strftime(RFC3339), "NotAfter": root.not_valid_after_utc.strftime(RFC3339),
        "RootCert": certs.pem(root), "IntermediateCerts": [certs.pem(cross)] if cross is not None else None,
        "PrivateKeyType": config["PrivateKeyType"], "PrivateKeyBits": config["PrivateKeyBits"],
        "SigningKey": certs.seal_key(certs.key_pem(key), secret),
        "RotatedFrom": old["ID"],
    }
    rotated_old = dict(old, RotatedOutAt=now.strftime(RFC3339), LeafTTLAtRotation=_longest_leaf_ttl(state, old))
    others = [r for r in state["roots"] if r["ID"] != old["ID"]]
    return dict(state, config=config, active_root_id=root_id, roots=[*others, rotated_old, new_root])


def _longest_leaf_ttl(state: dict[str, Any], root: dict[str, Any]) -> float:
    """Seconds: the longest leaf lifetime this root has signed with, as far as the
    state knows (the current LeafCertTTL, or a longer one it had before a change)."""
    return max(_hours(state["config"]["LeafCertTTL"]).total_seconds(), float(root.get("LeafTTLMax", 0)))


def reconfigure(state: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """A config change that keeps the root. A shorter LeafCertTTL does not shorten
    the leaves already out there: the active root remembers the longest it has used,
    so pruning it later waits for those."""
    roots = [dict(r, LeafTTLMax=_longest_leaf_ttl(state, r)) if r["ID"] == state["active_root_id"] else r
             for r in state["roots"]]
    return dict(state, config=config, roots=roots)


def rotation_due(state: dict[str, Any], now: datetime.datetime) -> str:
    """Why the active root must be replaced now ("" if it need not): it has lived
    ROTATE_AT of its lifetime, or a new leaf would be cut short by its expiry."""
    active = next((r for r in state.get("roots", []) if r["ID"] == state.get("active_root_id")), None)
    if active is None:
        return ""
    not_before, not_after = parse_time(active["NotBefore"]), parse_time(active["NotAfter"])
    if now >= not_before + (not_after - not_before) * ROTATE_AT:
        return f"the active root expires at {active['NotAfter']}"
    return ""


def prune(state: dict[str, Any], now: datetime.datetime) -> dict[str, Any] | None:
    """The state without rotated-out roots whose leaves have all expired (their
    rotation time plus the leaf lifetime then, plus clock slack) or that expired
    themselves; a cross-signed certificate from a pruned root goes with it. None when
    nothing is due."""
    def gone(root: dict[str, Any]) -> bool:
        if root["ID"] == state.get("active_root_id"):
            return False
        if parse_time(root["NotAfter"]) <= now:
            return True
        if "RotatedOutAt" not in root:
            return False
        leaf_ttl = datetime.timedelta(seconds=float(root.get("LeafTTLAtRotation", 0)))
        leaf_ttl = max(leaf_ttl, _hours(state["config"]["LeafCertTTL"]))
        return parse_time(root["RotatedOutAt"]) + leaf_ttl + _PRUNE_SLACK <= now

    pruned = {r["ID"] for r in state.get("roots", []) if gone(r)}
    if not pruned:
        return None
    roots = []
    for root in state["roots"]:
        if root["ID"] in pruned:
            continue
        if root.get("RotatedFrom") in pruned:
            root = dict(root, IntermediateCerts=None)
        roots.append(root)
    return dict(state, roots=roots)


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


_PRIVATE_ROOT_FIELDS = frozenset({"SigningKey", "LeafTTLAtRotation", "LeafTTLMax", "RotatedFrom"})


def roots_api(state: dict[str, Any], index: int) -> dict[str, Any]:
    """/v1/connect/ca/roots: every root (clients must trust all), private parts removed."""
    roots = []
    for root in state.get("roots", []):
        row = {k: v for k, v in root.items() if k not in _PRIVATE_ROOT_FIELDS}
        row.update(Active=root["ID"] == state.get("active_root_id"),
                   RotatedOutAt=root.get("RotatedOutAt", "0001-01-01T00:00:00Z"),
                   CreateIndex=state.get("index", index), ModifyIndex=state.get("index", index))
        roots.append(row)
    return {"ActiveRootID": state.get("active_root_id", ""), "TrustDomain": state.get("trust_domain", ""),
            "Roots": roots}


@functools.lru_cache(maxsize=8)
def _signing_material(sealed_key: str, root_pem: str, secret: str) -> tuple[certs.PrivateKey, Any]:
    """Unsealing and parsing the key costs more than signing a leaf (an RSA key above
    all); the same root signs every leaf until a rotation."""
    try:
        key = certs.unseal_key(sealed_key, secret)
    except InvalidRequest as exc:
        raise MeshError(f"the CA cannot sign: {exc}") from None  # the servers' fault, not the request's
    return key, certs.load_cert(root_pem)


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
    key, root_cert = _signing_material(root["SigningKey"], root["RootCert"], secret)
    leaf = certs.sign_leaf(csr, uri, key, root_cert, serial, now, _hours(state["config"]["LeafCertTTL"]))
    chain = "".join(root.get("IntermediateCerts") or [])
    return {
        "SerialNumber": certs.serial_hex(serial),
        "CertPEM": certs.pem(leaf) + chain,
        "Service": service,
        "ServiceURI": uri,
        "ValidAfter": leaf.not_valid_before_utc.strftime(RFC3339),
        "ValidBefore": leaf.not_valid_after_utc.strftime(RFC3339),
        "Namespace": "default",
    }


def root_pems(state: dict[str, Any]) -> list[str]:
    """Every trusted root certificate (PEM), the active one included."""
    return [str(r["RootCert"]) for r in state.get("roots", [])]


def sign_agent_csr(state: dict[str, Any], csr_pem: str, node: str, datacenter: str, serial: int,
                   now: datetime.datetime, secret: str) -> dict[str, Any]:
    """Sign an agent's auto_encrypt certificate. The CSR must carry the agent identity
    of `node` in `datacenter`; its trust domain is replaced by the cluster's, as in
    Consul (a first CSR is made before the agent knows it). The certificate has the
    leaf profile (server and client auth) and the CSR's DNS and IP SANs."""
    if not state.get("roots"):
        raise InvalidRequest("the CA is not initialized yet")
    request = certs.csr_agent_request(csr_pem.encode())
    asked = parse_agent_id(request.uri)
    if (asked.datacenter, asked.node) != (datacenter, node):
        raise InvalidRequest(f"CSR SPIFFE ID {request.uri!r} is not the agent identity of node {node!r} "
                             f"in datacenter {datacenter!r}")
    uri = AgentID(state["trust_domain"], datacenter, node).uri()
    root = next(r for r in state["roots"] if r["ID"] == state["active_root_id"])
    key, root_cert = _signing_material(root["SigningKey"], root["RootCert"], secret)
    leaf = certs.sign_leaf(request.csr, uri, key, root_cert, serial, now, _hours(state["config"]["LeafCertTTL"]),
                           dns_names=request.dns_names, ip_addresses=request.ip_addresses)
    chain = "".join(root.get("IntermediateCerts") or [])
    return {
        "SerialNumber": certs.serial_hex(serial),
        "CertPEM": certs.pem(leaf) + chain,
        "Agent": node,
        "AgentURI": uri,
        "ValidAfter": leaf.not_valid_before_utc.strftime(RFC3339),
        "ValidBefore": leaf.not_valid_after_utc.strftime(RFC3339),
    }
