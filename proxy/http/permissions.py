"""L7 intentions: may this request from `source` reach `destination`? Pure.

Consul's evaluation, per request:

1. The intentions for the destination (and for `*`) are tried in precedence order
   (catalog.authz.IntentionIndex, the same index the L4 path uses); the first whose
   source matches decides. Nothing matching: the default policy.
2. An L4 intention (an `Action`) decides by its action.
3. An L7 intention (`Permissions`) tries its permissions in order; the first whose
   `HTTP` rule matches the request decides by its `Action`. When none matches, the
   default policy decides (the request is not "matched" by that intention; Consul
   documents the same fall-through to the default).

Rules are compiled (rules.py) once per L7 intention of an index and kept with the
index (a weak reference: a new index from a new intention list gets its own, the old
one goes with the old index), so a request only runs comparisons.

A denied request gets `403` with the body `DENIED_BODY`, as Envoy's RBAC filter
answers; the decision's `reason` is for the access log, never for the caller (it would
tell a prober which rule to get around).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from mesh.catalog.authz import IntentionIndex
from mesh.catalog.structs import Intention

from .request_view import RequestView
from .rules import HttpMatch

__all__ = ["DENIED_BODY", "DENIED_STATUS", "L7Decision", "authorize", "compiled_permissions"]

DENIED_STATUS = 403
DENIED_BODY = "RBAC: access denied"


@dataclass(frozen=True, slots=True)
class L7Decision:
    """The outcome for one request: `reason` for the access log, `intention` and
    `permission` (1-based, None for an L4 intention or the default) say what decided."""

    allowed: bool
    reason: str
    intention: Intention | None = None
    permission: int | None = None

    @property
    def authz(self) -> str:
        """"allow" or "deny", as the access log records it."""
        return "allow" if self.allowed else "deny"


@dataclass(frozen=True, slots=True)
class _CompiledIntention:
    """An L7 intention's permissions with their decisions made up front: a request
    only runs comparisons and returns one of these prebuilt values."""

    permissions: tuple[tuple[HttpMatch, L7Decision], ...]
    no_match: tuple[L7Decision, L7Decision]  # by default_allow: False, True


_CACHE: weakref.WeakKeyDictionary[IntentionIndex, dict[int, _CompiledIntention]] = weakref.WeakKeyDictionary()


def _compile(intention: Intention) -> _CompiledIntention:
    label = f"{intention.source_name} => {intention.destination_name}"
    permissions = []
    for number, permission in enumerate(intention.permissions, 1):
        allow = str(permission.get("Action", "")).lower() == "allow"
        verdict = "allowed" if allow else "denied"
        decision = L7Decision(allow, f"{verdict} by L7 intention {label}, permission {number}", intention, number)
        permissions.append((HttpMatch(permission.get("HTTP")), decision))
    why = f"no permission of L7 intention {label} matched"
    return _CompiledIntention(tuple(permissions), (_default(False, why, intention), _default(True, why, intention)))


def compiled_permissions(index: IntentionIndex, intention: Intention) -> _CompiledIntention:
    """The compiled permissions of an L7 intention of `index` (compiled on first use).
    Keyed by the intention object: the index holds it, so its id stays its own."""
    per_index = _CACHE.get(index)
    if per_index is None:
        per_index = _CACHE[index] = {}
    compiled = per_index.get(id(intention))
    if compiled is None:
        compiled = per_index[id(intention)] = _compile(intention)
    return compiled


def authorize(
    index: IntentionIndex, source: str, destination: str, default_allow: bool, view: RequestView
) -> L7Decision:
    """The decision for one request (see the module docstring for the order)."""
    intention = index.decide(source, destination, default_allow).intention
    if intention is None:
        return _NOTHING_MATCHED[default_allow]
    if not intention.permissions:
        allowed = intention.action.lower() == "allow"
        verdict = "allowed" if allowed else "denied"
        return L7Decision(allowed, f"{verdict} by intention {intention.source_name} => {intention.destination_name}",
                          intention)
    compiled = compiled_permissions(index, intention)
    for match, decision in compiled.permissions:
        if match.matches(view):
            return decision
    return compiled.no_match[default_allow]


def _default(default_allow: bool, why: str, intention: Intention | None = None) -> L7Decision:
    verdict = "allowed" if default_allow else "denied"
    return L7Decision(default_allow, f"{verdict} by default policy ({why})", intention)


_NOTHING_MATCHED = (_default(False, "no intention matched"), _default(True, "no intention matched"))
