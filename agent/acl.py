"""ACL tokens on an agent: which token a request carries, and what it may do.

A request's token comes from `X-Consul-Token`, `Authorization: Bearer` or `?token`, in
Consul's order, and is the agent's `default` token when none is given ("" then means
the anonymous token). The servers decide every read and write of replicated state with
it (agent/server/acl.py); the agent decides its own endpoints (its services, checks,
members, self, reload...) with the same rules, resolved through the servers and cached
for `acl.token_ttl`, as Consul's agents do:

- within the TTL the cached answer is used without asking;
- when no server answers, `acl.down_policy` decides: `extend-cache` (and
  `async-cache`) keep using what is cached, however old, and deny tokens never seen;
  `allow` allows everything, `deny` denies everything. For DOWN_RETRY seconds after
  a failed resolution the agent does not ask again, so requests during an outage are
  answered at once rather than each waiting out a server timeout.

The agent's own calls to the servers carry its `agent` token (agent/backend.py). The
`agent_recovery` token works on this agent's own endpoints even with every server
down, as Consul's does.

`REQUEST_TOKEN` carries the current HTTP request's token from the middleware to the
agent's backend calls made on its behalf (agent.apply, the named reads), so handlers
do not pass it by hand; background tasks never set it and so use the agent token.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.catalog.acl_authz import Authorizer
from mesh.catalog.acl_enforce import ACL_NOT_FOUND, ALLOW_ALL, Access, compile_access
from mesh.catalog.acl_rules import parse_rules
from mesh.catalog.acl_state import Resolved
from mesh.catalog.errors import MeshError, PermissionDenied

from .backend import Backend
from .config import AgentConfig
from .logging import get_logger
from .metrics import ACL_METRICS

__all__ = ["REQUEST_TOKEN", "AgentACLs", "token_of"]

log = get_logger("acl")

# the current HTTP request's token; None outside a request (the agent's own traffic)
REQUEST_TOKEN: contextvars.ContextVar[str | None] = contextvars.ContextVar("mesh_request_token", default=None)
_CACHE_LIMIT = 4096
DOWN_RETRY = 5.0
# "ACL not found" is remembered briefly: a token created a moment ago (a new cluster's
# initial management token, a token another agent just made) works within a second
NOT_FOUND_TTL = 1.0
_RECOVERY_RULES = 'agent_prefix "" { policy = "write" } node_prefix "" { policy = "read" }'


def token_of(headers: Any, query: Any, default: str) -> str:
    """The request's token in Consul's order of precedence, or the agent's default."""
    token = headers.get("X-Consul-Token", "")
    if not token:
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            token = auth[7:].strip()
    if not token:
        token = query.get("token", "")
    return token or default


@dataclass
class _Cached:
    access: Access | None  # None: the servers said "ACL not found"
    fetched: float
    expires: float  # the token's own ExpirationTime (wall clock), 0 for none


class AgentACLs:
    def __init__(self, cfg: AgentConfig, backend: Backend, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self._backend = backend
        self._clock = clock
        self._wall = wall
        self._cache: dict[str, _Cached] = {}
        self._down_until = 0.0
        self._recovery = (Access("agent-recovery", Authorizer.from_rules([parse_rules(_RECOVERY_RULES)], "deny"))
                          if cfg.acl_agent_recovery_token else None)

    @property
    def enabled(self) -> bool:
        return self.cfg.acl_enabled

    def request_token(self, headers: Any, query: Any) -> str:
        return token_of(headers, query, self.cfg.acl_default_token)

    async def access(self, token: str) -> Access:
        """What `token` may do; PermissionDenied("ACL not found") for an unknown one."""
        if not self.cfg.acl_enabled:
            return ALLOW_ALL
        if self._recovery is not None and token == self.cfg.acl_agent_recovery_token:
            return self._recovery
        now = self._clock()
        cached = self._cache.get(token)
        ttl = self.cfg.acl_token_ttl if cached is None or cached.access is not None else NOT_FOUND_TTL
        if cached is not None and now - cached.fetched < ttl:
            ACL_METRICS.cache.labels("hit").inc()
            return self._answer(cached)
        if now < self._down_until:
            return self._server_down(token, cached, None)
        try:
            wire = await self._backend.resolve_token(token)
        except PermissionDenied:
            ACL_METRICS.cache.labels("not_found").inc()
            self._remember(token, _Cached(None, now, 0.0))
            raise PermissionDenied(ACL_NOT_FOUND) from None
        except MeshError as exc:
            self._down_until = self._clock() + DOWN_RETRY
            log.warning("acl_servers_unreachable", down_policy=self.cfg.acl_down_policy, error=str(exc))
            return self._server_down(token, cached, exc)
        ACL_METRICS.cache.labels("miss").inc()
        if not wire.get("enabled", True):
            return ALLOW_ALL  # the servers run without ACLs: they decide nothing either
        resolved = Resolved.from_wire(wire)
        entry = _Cached(compile_access(resolved, self.cfg.acl_default_policy), now, resolved.expiration_time)
        self._remember(token, entry)
        return self._answer(entry)

    def _answer(self, cached: _Cached) -> Access:
        if cached.access is None or (cached.expires and self._wall() >= cached.expires):
            raise PermissionDenied(ACL_NOT_FOUND)
        return cached.access

    def _server_down(self, token: str, cached: _Cached | None, exc: MeshError | None) -> Access:
        policy = self.cfg.acl_down_policy
        ACL_METRICS.cache.labels("down").inc()
        if policy == "allow":
            return ALLOW_ALL
        if policy in ("extend-cache", "async-cache") and cached is not None:
            return self._answer(cached)
        return Access("", Authorizer.deny_all())

    def _remember(self, token: str, entry: _Cached) -> None:
        self._cache.pop(token, None)
        self._cache[token] = entry
        while len(self._cache) > _CACHE_LIMIT:
            del self._cache[next(iter(self._cache))]

    def forget(self, token: str | None = None) -> None:
        """Drop one cached token (or all): after this agent changed ACLs itself."""
        if token is None:
            self._cache.clear()
        else:
            self._cache.pop(token, None)
