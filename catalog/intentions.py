"""Intentions as requests: decoding and validating an intention body (legacy or exact
form) into the `Intention` row (catalog.structs). Pure.

`intention_from_api` reads an intention back from the JSON the API returns (ID, times
and indexes included), for programs that keep their own copy, such as the sidecar proxy.

Authorization (precedence, matching, decisions) lives in catalog.authz; its names are
re-exported here for existing callers.
"""

from __future__ import annotations

import re
from typing import Any

from .authz import WILDCARD, Decision, IntentionIndex, decide, precedence, sort_intentions
from .errors import InvalidRequest
from .fields import Fields, validate_meta
from .structs import Intention, evolve

__all__ = [
    "Intention",
    "Decision",
    "precedence",
    "parse_intention",
    "service_name",
    "intention_from_api",
    "sort_intentions",
    "decide",
    "IntentionIndex",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def service_name(value: str, what: str) -> str:
    """An intention's source or destination: a service name or `*` alone; shared with
    the service-intentions config entry (catalog.config_entries)."""
    if not value:
        raise InvalidRequest(f"{what} must be set")
    if value == WILDCARD:
        return value
    if WILDCARD in value:
        raise InvalidRequest(f"{what}: wildcard character '*' cannot be used with partial values")
    if not _NAME.match(value):
        raise InvalidRequest(f"{what}: invalid service name {value!r}")
    return value


_HTTP_MATCH = ("PathExact", "PathPrefix", "PathRegex")


def _permissions(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("Permissions must be a list")
    out = []
    for i, perm in enumerate(raw):
        f = Fields(perm, f"Permissions[{i}]")
        action = f.str("Action").lower()
        if action not in ("allow", "deny"):
            raise InvalidRequest(f"Permissions[{i}].Action must be allow or deny")
        http = f.obj("HTTP")
        if not http:
            raise InvalidRequest(f"Permissions[{i}].HTTP must be set")
        h = Fields(http, f"Permissions[{i}].HTTP")
        paths = [k for k in _HTTP_MATCH if h.str(k)]
        if len(paths) > 1:
            raise InvalidRequest(f"Permissions[{i}].HTTP: at most one of PathExact, PathPrefix, PathRegex")
        if h.str("PathRegex"):
            try:
                re.compile(h.str("PathRegex"))
            except re.error as exc:
                raise InvalidRequest(f"Permissions[{i}].HTTP.PathRegex: {exc}") from None
        for path_key in ("PathExact", "PathPrefix"):
            if h.str(path_key) and not h.str(path_key).startswith("/"):
                raise InvalidRequest(f"Permissions[{i}].HTTP.{path_key} must start with /")
        methods = h.str_list("Methods")
        rule: dict[str, Any] = {k: h.str(k) for k in paths}
        if methods:
            rule["Methods"] = [m.upper() for m in methods]
        headers = h.raw("Header")
        if headers is not None:
            if not isinstance(headers, list) or not all(isinstance(x, dict) and x.get("Name") for x in headers):
                raise InvalidRequest(f"Permissions[{i}].HTTP.Header must be a list of objects with a Name")
            rule["Header"] = headers
        out.append({"Action": action, "HTTP": rule})
    return tuple(out)


def parse_intention(data: Any, *, source: str | None = None, destination: str | None = None) -> Intention:
    """A request body (legacy or exact form) as an Intention without ID or times."""
    f = Fields(data, "body")
    src = service_name(source if source is not None else f.str("SourceName"), "SourceName")
    dst = service_name(destination if destination is not None else f.str("DestinationName"), "DestinationName")
    source_type = f.str("SourceType", default="consul") or "consul"
    if source_type != "consul":
        raise InvalidRequest(f"SourceType must be consul, got {source_type!r}")
    permissions = _permissions(f.raw("Permissions"))
    action = f.str("Action").lower()
    if permissions and action:
        raise InvalidRequest("Action must be empty when Permissions are set (L7 intention)")
    if not permissions and action not in ("allow", "deny"):
        raise InvalidRequest(f"Action must be allow or deny, got {action!r}")
    description = f.str("Description")
    if len(description) > 512:
        raise InvalidRequest("Description must be at most 512 characters")
    return Intention(
        id=f.str("ID"), source_name=src, destination_name=dst, action=action, description=description,
        meta=validate_meta(f.str_map("Meta"), "Meta"), source_type=source_type, permissions=permissions,
        precedence=precedence(src, dst),
    )


def intention_from_api(data: Any) -> Intention:
    """The row that `Intention.to_api()` rendered: the same checks as a request body
    (a malformed one raises InvalidRequest), plus the ID, times and indexes a request
    may not set. Precedence is recomputed from the names, as the server did."""
    intention = parse_intention(data)
    f = Fields(data, "intention")
    return evolve(intention, created_at=f.str("CreatedAt"), updated_at=f.str("UpdatedAt"),
                  create_index=f.int("CreateIndex", lo=0), modify_index=f.int("ModifyIndex", lo=0))
