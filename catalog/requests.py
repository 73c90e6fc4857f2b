"""Decoding Consul request bodies into validated catalog requests.

Field reading (case- and underscore-insensitive, int64 bounds, meta rules) is in
catalog.fields; this module builds RegisterRequest and DeregisterRequest from it. Every
problem raises InvalidRequest naming the field, which the HTTP layer sends back as a 400.
"""

from __future__ import annotations

import uuid
from typing import Any

from .commands import DeregisterRequest, RegisterRequest
from .connect import canonical_connect, canonical_proxy
from .errors import InvalidRequest
from .fields import INT64_MAX, INT64_MIN, Fields, as_int, validate_meta
from .structs import CRITICAL, HEALTH_STATES, Check, Node, Service

__all__ = ["Fields", "as_int", "INT64_MIN", "INT64_MAX", "parse_register", "parse_deregister", "parse_service", "validate_meta"]

_SERVICE_KINDS = {"", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"}


def _weights(f: Fields) -> dict[str, int]:
    raw = f.raw("Weights")
    if raw is None:
        return {"Passing": 1, "Warning": 1}
    w = Fields(raw, f"{f.what}.Weights")
    # DNS carries a weight in 16 bits (SRV): a larger one could not be answered
    return {"Passing": w.int("Passing", default=1, lo=1, hi=65535),
            "Warning": w.int("Warning", default=1, lo=0, hi=65535)}


def parse_service(data: Any, what: str = "Service", *, require_port: bool = False) -> Service:
    f = Fields(data, what)
    name = f.str("Service", "Name")
    if not name:
        raise InvalidRequest(f"{what}.Service: missing service name")
    if "/" in name or "\n" in name:
        raise InvalidRequest(f"{what}.Service: invalid service name {name!r}")
    kind = f.str("Kind")
    if kind not in _SERVICE_KINDS:
        raise InvalidRequest(f"{what}.Kind: unknown service kind {kind!r}")
    port = f.int("Port", lo=0, hi=65535)
    tagged = f.obj("TaggedAddresses")
    return Service(
        id=f.str("ID") or name,
        service=name,
        tags=f.str_list("Tags"),
        address=f.str("Address"),
        port=port,
        meta=validate_meta(f.str_map("Meta"), f"{what}.Meta"),
        kind=kind,
        proxy=canonical_proxy(f.obj("Proxy"), f"{what}.Proxy"),
        connect=canonical_connect(f.obj("Connect"), f"{what}.Connect"),
        weights=_weights(f),
        enable_tag_override=f.bool("EnableTagOverride"),
        tagged_addresses=tagged,
    )


def _parse_check(data: Any, what: str, node: str) -> Check:
    f = Fields(data, what)
    check_id = f.str("CheckID", "ID")
    name = f.str("Name")
    if not check_id:
        check_id = name
    if not check_id:
        raise InvalidRequest(f"{what}: a check needs a CheckID or a Name")
    status = f.str("Status", default=CRITICAL) or CRITICAL
    if status not in HEALTH_STATES:
        raise InvalidRequest(f"{what}.Status: must be one of passing, warning, critical; got {status!r}")
    definition = f.obj("Definition")
    return Check(
        check_id=check_id,
        name=name or check_id,
        node=node,
        status=status,
        notes=f.str("Notes"),
        output=f.str("Output"),
        service_id=f.str("ServiceID"),
        type=f.str("Type"),
        definition=definition,
    )


def parse_register(data: Any) -> RegisterRequest:
    """Body of PUT /v1/catalog/register."""
    f = Fields(data, "body")
    node_name = f.str("Node")
    if not node_name:
        raise InvalidRequest("Must provide node")
    address = f.str("Address")
    skip = f.bool("SkipNodeUpdate")
    if not address and not skip:
        raise InvalidRequest("Must provide address if SkipNodeUpdate is not set")
    node_id = f.str("ID")
    if node_id:
        try:
            uuid.UUID(node_id)
        except ValueError:
            raise InvalidRequest(f"Invalid node ID {node_id!r}: must be a UUID") from None
    node = Node(
        node=node_name,
        address=address,
        id=node_id.lower(),
        datacenter=f.str("Datacenter"),
        tagged_addresses=f.str_map("TaggedAddresses"),
        meta=validate_meta(f.str_map("NodeMeta"), "NodeMeta"),
    )
    service = parse_service(f.raw("Service"), "Service") if f.has("Service") else None
    checks: list[Check] = []
    if f.has("Check"):
        checks.append(_parse_check(f.raw("Check"), "Check", node_name))
    raw_checks = f.raw("Checks")
    if raw_checks is not None:
        if not isinstance(raw_checks, list):
            raise InvalidRequest("Checks must be a list")
        checks.extend(_parse_check(c, f"Checks[{i}]", node_name) for i, c in enumerate(raw_checks))
    return RegisterRequest(node=node, service=service, checks=tuple(checks), skip_node_update=skip)


def parse_deregister(data: Any) -> DeregisterRequest:
    """Body of PUT /v1/catalog/deregister."""
    f = Fields(data, "body")
    node = f.str("Node")
    if not node:
        raise InvalidRequest("Must provide node")
    return DeregisterRequest(node=node, service_id=f.str("ServiceID"), check_id=f.str("CheckID"))
