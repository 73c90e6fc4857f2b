"""Typed calls of the local agent's API that a sidecar proxy makes.

Each blocking read takes `index=` or `hash=` and `wait=` as keywords and returns a
Result whose value is typed (api.types), so `functools.partial(agent.leaf, "web")` is a
fetch for api.watch.Watch. Paths and parameters are Consul's (consul.md §1.2, §1.7,
§6; our handlers in agent/http/). Path segments are escaped: service IDs may hold
`/` or `:`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from .client import Client, Result
from .errors import DecodeError
from .types import (
    AgentService,
    CARoots,
    ConnectEndpoint,
    IntentionMatch,
    Leaf,
    default_allow,
    parse_agent_service,
    parse_agent_services,
    parse_connect_endpoints,
    parse_intention_match,
    parse_leaf,
    parse_roots,
)

__all__ = ["AgentAPI", "DEFAULT_WAIT"]

T = TypeVar("T")

DEFAULT_WAIT = 300.0  # Consul's default_query_time


def _seg(value: str) -> str:
    return quote(value, safe="")


def _typed(result: Result[Any], parse: Callable[[Result[Any]], T]) -> Result[T]:
    """The answer with its value parsed; a DecodeError carries the answer's status."""
    try:
        return result.with_value(parse(result))
    except DecodeError as exc:
        exc.status = result.status
        raise


class AgentAPI:
    """The typed surface over one Client (which owns the connection and the token)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    # ---- blocking reads ---------------------------------------------------------------

    async def agent_service(self, service_id: str, *, hash: str | None = None,
                            wait: float = DEFAULT_WAIT) -> Result[AgentService]:
        """GET /v1/agent/service/:id, hash-blocking (404 for an unknown ID)."""
        result = await self.client.blocking_get(f"/v1/agent/service/{_seg(service_id)}", hash=hash, wait=wait)
        return _typed(result, lambda r: parse_agent_service(r.value))

    async def leaf(self, service: str, *, index: int | None = None,
                   wait: float = DEFAULT_WAIT) -> Result[Leaf]:
        """GET /v1/agent/connect/ca/leaf/:service, blocking until the agent renews it."""
        result = await self.client.blocking_get(f"/v1/agent/connect/ca/leaf/{_seg(service)}", index=index, wait=wait)
        return _typed(result, lambda r: parse_leaf(r.value))

    async def roots(self, *, index: int | None = None, wait: float = DEFAULT_WAIT) -> Result[CARoots]:
        """GET /v1/agent/connect/ca/roots (the agent's cached copy when no server answers)."""
        result = await self.client.blocking_get("/v1/agent/connect/ca/roots", index=index, wait=wait)
        return _typed(result, lambda r: parse_roots(r.value))

    async def health_connect(self, name: str, *, passing: bool = True, index: int | None = None,
                             wait: float = DEFAULT_WAIT, datacenter: str | None = None,
                             stale: bool = True) -> Result[tuple[ConnectEndpoint, ...]]:
        """GET /v1/health/connect/:name: the sidecars (and Connect-native instances) of
        a service. `?stale` by default, as Consul's proxy asks: any server may answer,
        so endpoints keep updating while the cluster has no leader."""
        params: list[tuple[str, str]] = []
        if passing:
            params.append(("passing", "1"))
        if stale:
            params.append(("stale", ""))
        if datacenter:
            params.append(("dc", datacenter))
        result = await self.client.blocking_get(f"/v1/health/connect/{_seg(name)}", params, index=index, wait=wait)
        return _typed(result, lambda r: parse_connect_endpoints(r.value))

    async def intentions_match_destination(self, name: str, *, index: int | None = None,
                                           wait: float = DEFAULT_WAIT) -> Result[IntentionMatch]:
        """GET /v1/connect/intentions/match?by=destination&name=:name: the intentions
        that can decide a connection to `name` (its own and `*`), in precedence order,
        with the agent's default policy from X-Consul-Default-ACL-Policy."""
        result = await self.client.blocking_get("/v1/connect/intentions/match",
                                                [("by", "destination"), ("name", name)], index=index, wait=wait)
        return _typed(result, lambda r: IntentionMatch(parse_intention_match(r.value, name), default_allow(r.headers)))

    async def config_entries(self, kind: str, *, index: int | None = None,
                             wait: float = DEFAULT_WAIT) -> Result[tuple[dict[str, Any], ...]]:
        """GET /v1/config/:kind: every entry of one kind (blocking), as Consul returns them."""
        result = await self.client.blocking_get(f"/v1/config/{_seg(kind)}", index=index, wait=wait)

        def entries(r: Result[Any]) -> tuple[dict[str, Any], ...]:
            if r.value is None:
                return ()
            if not isinstance(r.value, list) or not all(isinstance(e, dict) for e in r.value):
                raise DecodeError(f"/v1/config/{kind}: expected a list of entries")
            return tuple(r.value)

        return _typed(result, entries)

    # ---- plain reads and writes -------------------------------------------------------

    async def agent_services(self) -> dict[str, AgentService]:
        """GET /v1/agent/services (not blocking): every service on this agent by ID."""
        return parse_agent_services(await self.client.get("/v1/agent/services"))

    async def service_register(self, definition: dict[str, Any], *, replace_existing_checks: bool = False) -> None:
        """PUT /v1/agent/service/register with an AgentServiceRegistration body."""
        params = {"replace-existing-checks": "true"} if replace_existing_checks else {}
        await self.client.request("PUT", "/v1/agent/service/register", params=params, body=definition)

    async def service_deregister(self, service_id: str) -> None:
        """PUT /v1/agent/service/deregister/:id (404 for an unknown ID)."""
        await self.client.request("PUT", f"/v1/agent/service/deregister/{_seg(service_id)}")

    async def check_pass(self, check_id: str, note: str = "") -> None:
        """PUT /v1/agent/check/pass/:id: a TTL check's heartbeat (`note` becomes Output)."""
        await self.client.request("PUT", f"/v1/agent/check/pass/{_seg(check_id)}",
                                  params={"note": note} if note else None)

    async def check_fail(self, check_id: str, note: str = "") -> None:
        """PUT /v1/agent/check/fail/:id: mark a TTL check critical (e.g. while draining)."""
        await self.client.request("PUT", f"/v1/agent/check/fail/{_seg(check_id)}",
                                  params={"note": note} if note else None)
