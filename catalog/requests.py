"""Decoding Consul request bodies into validated catalog requests.

Consul decodes request JSON case-insensitively and also takes snake_case for many keys,
so lookups here fold case and underscores. User maps (Meta, NodeMeta, TaggedAddresses)
keep their keys exactly. Every problem raises InvalidRequest with a message naming the
field, which the HTTP layer sends back as a 400.
"""

from __future__ import annotations

import math
import re
import uuid
from typing import Any

from .commands import DeregisterRequest, RegisterRequest
from .errors import InvalidRequest
from .structs import CRITICAL, HEALTH_STATES, Check, Node, Service

__all__ = ["Fields", "as_int", "INT64_MIN", "INT64_MAX", "parse_register", "parse_deregister", "parse_service", "validate_meta"]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
_META_MAX_PAIRS = 64
_META_KEY_MAX = 128
_META_VALUE_MAX = 512
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")
_SERVICE_KINDS = {"", "connect-proxy", "mesh-gateway", "terminating-gateway", "ingress-gateway", "api-gateway"}


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


class Fields:
    """Case- and underscore-insensitive view of one JSON object."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise InvalidRequest(f"{what} must be a JSON object")
        self.what = what
        self._data = {_fold(k): v for k, v in data.items() if isinstance(k, str)}

    def has(self, *names: str) -> bool:
        return any(_fold(n) in self._data and self._data[_fold(n)] is not None for n in names)

    def raw(self, *names: str) -> Any:
        for name in names:
            value = self._data.get(_fold(name))
            if value is not None:
                return value
        return None

    def str(self, *names: str, default: str = "") -> str:
        value = self.raw(*names)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a string, got {type(value).__name__}")
        return value

    def int(self, *names: str, default: int = 0, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(*names)
        if value is None:
            return default
        return as_int(value, f"{self.what}.{names[0]}", lo=lo, hi=hi)

    def bool(self, *names: str, default: bool = False) -> bool:
        value = self.raw(*names)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a boolean, got {value!r}")
        return value

    def str_list(self, *names: str) -> tuple[str, ...]:
        value = self.raw(*names)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a list of strings")
        return tuple(value)

    def str_map(self, *names: str) -> dict[str, str]:
        value = self.raw(*names)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidRequest(f"{self.what}.{names[0]} must be an object of strings")
        return dict(value)

    def obj(self, *names: str) -> dict[str, Any]:
        value = self.raw(*names)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidRequest(f"{self.what}.{names[0]} must be an object")
        return value


def as_int(value: Any, what: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer field of a request: a JSON integer, or a float with an integral value
    (JSON has one number type; 8080.0 is 8080). NaN, infinities, fractions, booleans and
    values outside [lo, hi] (by default Go's int64, what Consul's fields hold) raise
    InvalidRequest naming `what`; int() of a non-finite float must never be reached."""
    lo = INT64_MIN if lo is None else lo
    hi = INT64_MAX if hi is None else hi
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be an integer, got {_short(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidRequest(f"{what} must be an integer, got {_short(value)}")
    # compared before int(): int(1e300) would be a 1000-bit integer
    if not lo <= value <= hi:
        raise InvalidRequest(f"{what} out of range: {_short(value)} (must be between {lo} and {hi})")
    return int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_meta(meta: dict[str, str], what: str) -> dict[str, str]:
    if len(meta) > _META_MAX_PAIRS:
        raise InvalidRequest(f"{what}: at most {_META_MAX_PAIRS} meta pairs are allowed")
    for key, value in meta.items():
        if not key or len(key) > _META_KEY_MAX or not _META_KEY.match(key):
            raise InvalidRequest(f"{what}: invalid meta key {key!r}")
        if key.startswith("consul-"):
            raise InvalidRequest(f"{what}: meta key {key!r} uses the reserved prefix 'consul-'")
        if len(value) > _META_VALUE_MAX:
            raise InvalidRequest(f"{what}: meta value for {key!r} is longer than {_META_VALUE_MAX}")
    return meta


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
        proxy=f.obj("Proxy"),
        connect=f.obj("Connect"),
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
