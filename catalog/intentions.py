"""Intentions: which service may call which (../shared/reference/consul.md §5). Pure.

Precedence (higher wins), with the namespace always `default`:

    source \\ destination   exact   *
    exact                    9      6
    *                        8      5

Ties sort by source then destination name. The first intention, in that order, whose
source and destination match decides; an intention with L7 Permissions denies for the
L4 authorize and check calls. When nothing matches, the agent's default policy applies.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidRequest
from .requests import Fields, validate_meta

__all__ = [
    "Intention",
    "Decision",
    "precedence",
    "parse_intention",
    "sort_intentions",
    "decide",
    "IntentionIndex",
]

WILDCARD = "*"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class Intention:
    id: str
    source_name: str
    destination_name: str
    action: str = ""
    description: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    source_type: str = "consul"
    permissions: tuple[dict[str, Any], ...] = ()
    precedence: int = 0
    created_at: str = ""
    updated_at: str = ""
    create_index: int = 0
    modify_index: int = 0

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": self.id,
            "Description": self.description,
            "SourceNS": "default",
            "SourceName": self.source_name,
            "DestinationNS": "default",
            "DestinationName": self.destination_name,
            "SourceType": self.source_type,
            "Action": self.action,
            "Meta": dict(self.meta),
            "Precedence": self.precedence,
            "CreatedAt": self.created_at,
            "UpdatedAt": self.updated_at,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        if self.permissions:
            out["Permissions"] = [dict(p) for p in self.permissions]
        return out

    def label(self) -> str:
        kind = self.action if self.action else "L7"
        return f"{self.source_name} => {self.destination_name} ({kind})"


def precedence(source: str, destination: str) -> int:
    top = 9 if destination != WILDCARD else 6
    return top - (0 if source != WILDCARD else 1)


def _name(value: str, what: str) -> str:
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
    src = _name(source if source is not None else f.str("SourceName"), "SourceName")
    dst = _name(destination if destination is not None else f.str("DestinationName"), "DestinationName")
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


def sort_intentions(intentions: Iterable[Intention]) -> list[Intention]:
    return sorted(intentions, key=lambda i: (-i.precedence, i.source_name, i.destination_name))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    intention: Intention | None = None


def _matches(pattern: str, name: str) -> bool:
    return pattern == WILDCARD or pattern.lower() == name.lower()


def decide(ordered: Iterable[Intention], source: str, destination: str, default_allow: bool) -> Decision:
    """First match in precedence order decides; nothing matching: the default."""
    for intention in ordered:
        if _matches(intention.destination_name, destination) and _matches(intention.source_name, source):
            if intention.permissions:
                return Decision(False, f"Matched L7 intention {intention.label()}: L4 access denied", intention)
            allowed = intention.action == "allow"
            return Decision(allowed, f"Matched L4 intention: {intention.label()}", intention)
    policy = "allow" if default_allow else "deny"
    return Decision(default_allow, f"Default behavior: no intention matched, the default policy is {policy}")


class IntentionIndex:
    """Intentions grouped by destination, each group in precedence order, so a
    decision reads only the intentions for that destination and for `*`: its cost does
    not grow with the total number of intentions."""

    def __init__(self, intentions: Iterable[Intention]) -> None:
        by_dest: dict[str, list[Intention]] = {}
        for intention in intentions:
            by_dest.setdefault(intention.destination_name.lower(), []).append(intention)
        self._by_dest = {k: sort_intentions(v) for k, v in by_dest.items()}
        self._wild = self._by_dest.get(WILDCARD, [])

    def decide(self, source: str, destination: str, default_allow: bool) -> Decision:
        exact = self._by_dest.get(destination.lower(), [])
        if exact and self._wild:
            # exact destinations (precedence 8-9) always come before wildcard ones (5-6)
            ordered: Iterable[Intention] = (*exact, *self._wild)
        else:
            ordered = exact or self._wild
        return decide(ordered, source, destination, default_allow)
