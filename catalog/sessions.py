"""Sessions: what locks are held by, and when they stop being valid.

A session belongs to a node and is linked to health checks (the node's `serfHealth` by
default). It is valid while its node is registered and none of its checks is missing
or critical; the leader invalidates one that is not, or whose TTL passed without a
renewal (agent/server/sessions.py), through a Raft command that carries the time, so
lock delays are the same on every server. Invalidation releases the session's locks
(behavior `release`, LockIndex kept) or deletes its keys (`delete`), and each such key
cannot be locked again until the session's lock delay has passed.

Parsing a `/v1/session/create` body follows Consul's quirks: LockDelay as a Go duration
or nanoseconds, a number under 1000 meaning seconds; no `Checks` key means
`["serfHealth"]`, an empty list means none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .durations import format_duration, parse_duration
from .errors import InvalidRequest
from .fields import Fields
from .health import SERF_CHECK_ID
from .kv import KVEntry
from .structs import CRITICAL

if TYPE_CHECKING:  # the store imports this package's kv module; sessions only read it
    from .store import Store

__all__ = [
    "Session",
    "parse_session",
    "session_problem",
    "invalidate_session",
    "BEHAVIORS",
    "TTL_MIN",
    "TTL_MAX",
    "DEFAULT_LOCK_DELAY",
    "MAX_LOCK_DELAY",
]

BEHAVIORS = ("release", "delete")
TTL_MIN = 10.0
TTL_MAX = 86400.0
DEFAULT_LOCK_DELAY = 15.0
MAX_LOCK_DELAY = 60.0
_NS_THRESHOLD = 1000  # Consul: a LockDelay below this many nanoseconds was meant as seconds


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    name: str = ""
    node: str = ""
    lock_delay: float = DEFAULT_LOCK_DELAY  # seconds
    behavior: str = "release"
    ttl: str = ""  # as the creator wrote it ("30s"); "" for none
    node_checks: tuple[str, ...] = ()
    service_checks: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    @property
    def ttl_seconds(self) -> float:
        return parse_duration(self.ttl) if self.ttl else 0.0

    def to_api(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": self.id,
            "Name": self.name,
            "Node": self.node,
            "LockDelay": round(self.lock_delay * 1e9),
            "Behavior": self.behavior,
            "TTL": self.ttl,
            "NodeChecks": list(self.node_checks) or None,
            "ServiceChecks": [{"ID": c, "Namespace": ""} for c in self.service_checks] or None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }
        legacy = [*self.node_checks, *self.service_checks]
        if legacy != [SERF_CHECK_ID]:
            out["Checks"] = legacy or None
        return out

    def to_wire(self) -> list[Any]:
        return [self.id, self.name, self.node, self.lock_delay, self.behavior, self.ttl, list(self.node_checks),
                list(self.service_checks), self.create_index, self.modify_index]

    @classmethod
    def from_wire(cls, v: list[Any]) -> Session:
        return cls(v[0], v[1], v[2], float(v[3]), v[4], v[5], tuple(v[6]), tuple(v[7]), int(v[8]), int(v[9]))


def _lock_delay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InvalidRequest(f"Request decode failed: invalid LockDelay {value!r}")
    if isinstance(value, str):
        seconds = parse_duration(value, what="LockDelay")
        if seconds * 1e9 < _NS_THRESHOLD:
            seconds *= 1e9
    else:
        if value < 0:
            raise InvalidRequest("Request decode failed: LockDelay is negative")
        seconds = value if value < _NS_THRESHOLD else value / 1e9
    if seconds > MAX_LOCK_DELAY:
        raise InvalidRequest(f"Lock delay must be at most {format_duration(MAX_LOCK_DELAY)}, not {format_duration(seconds)}")
    return float(seconds)


def _check_ids(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidRequest(f"Request decode failed: {what} must be a list")
    out = []
    for item in value:
        if isinstance(item, dict):  # ServiceChecks: [{"ID": ..., "Namespace": ...}]
            item = Fields(item, what).raw("ID")
        if not isinstance(item, str) or not item:
            raise InvalidRequest(f"Request decode failed: {what} entries must be check IDs")
        out.append(item)
    return out


def parse_session(body: Any, session_id: str, default_node: str, ttl_min: float = TTL_MIN) -> Session:
    """A /v1/session/create body (None: empty) as a Session with Consul's defaults;
    400 for what Consul refuses. `ttl_min` is the agent's session_ttl_min."""
    f = Fields({} if body is None else body, "Session")
    name, node, behavior, ttl = (f.str(n) for n in ("Name", "Node", "Behavior", "TTL"))
    delay = f.raw("LockDelay")
    # Consul: a `Checks` key, even an empty list, replaces the default serfHealth
    has_checks = isinstance(body, dict) and any(k.lower() == "checks" for k in body)
    checks, node_checks, service_checks = (f.raw(n) for n in ("Checks", "NodeChecks", "ServiceChecks"))
    behavior = behavior or "release"
    if behavior not in BEHAVIORS:
        raise InvalidRequest(f"Invalid Behavior setting '{behavior}'")
    ttl = ttl or ""
    if ttl:
        try:
            seconds = parse_duration(ttl, what="Session TTL")
        except InvalidRequest as exc:
            raise InvalidRequest(f"Session TTL '{ttl}' invalid: {exc}") from None
        if seconds != 0 and not ttl_min <= seconds <= TTL_MAX:
            raise InvalidRequest(f"Invalid Session TTL '{round(seconds * 1e9)}', must be between "
                                 f"[{format_duration(ttl_min)}={format_duration(TTL_MAX)}]")
        if seconds == 0:
            ttl = ""
    listed = _check_ids(checks, "Checks") if has_checks else [SERF_CHECK_ID]
    node_ids = list(dict.fromkeys(listed + _check_ids(node_checks, "NodeChecks")))
    return Session(
        id=session_id,
        name=name or "",
        node=node or default_node,
        lock_delay=_lock_delay(delay) if delay is not None else DEFAULT_LOCK_DELAY,
        behavior=behavior,
        ttl=ttl,
        node_checks=tuple(node_ids),
        service_checks=tuple(dict.fromkeys(_check_ids(service_checks, "ServiceChecks"))),
    )


def session_problem(store: Store, session: Session) -> str:
    """Why `session` may not hold locks ("" when it may): its node is gone, or one of
    its checks is missing or critical. Create refuses such a session with this text;
    the leader invalidates one that has become so."""
    if store.node(session.node) is None:
        return "Missing node registration"
    checks = store.node_checks(session.node)
    for check_id in (*session.node_checks, *session.service_checks):
        check = checks.get(check_id)
        if check is None:
            return f"Missing check '{check_id}' registration"
        if check.status == CRITICAL:
            return f"Check '{check_id}' is in critical state"
    return ""


def invalidate_session(store: Store, index: int, session_id: str, now: float) -> list[str]:
    """Delete the session; release or delete the keys it holds, each locked out for the
    lock delay from `now`. Returns the keys it held."""
    session = store.sessions.pop(session_id, None)
    if session is None:
        return []
    kv = store.kv
    held = sorted(kv.held_by(session_id))
    for key in held:
        entry = kv.get(key)
        if entry is None:
            continue
        if session.behavior == "delete":
            kv.delete(index, key, store.touch)
        else:
            kv.put(index, KVEntry(key, entry.value, entry.flags, "", entry.lock_index, entry.create_index, index),
                   store.touch)
        if session.lock_delay > 0:
            kv.lock_delays[key] = now + session.lock_delay
    store.touch(index, "sessions", "session:" + session_id, "session-node:" + session.node.lower())
    return held
