"""The agent's token cache (agent/acl.py) with an injected clock and a fake backend:
token_ttl, each down_policy, the brief memory of "ACL not found", no storm of
resolutions during an outage, the agent_recovery token, and the request's token."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.agent.acl import DOWN_RETRY, NOT_FOUND_TTL, AgentACLs, token_of
from mesh.agent.config import AgentConfig
from mesh.catalog.acl_state import Resolved
from mesh.catalog.errors import MeshError, PermissionDenied

READER = Resolved("acc-reader", rules=('service "web" { policy = "read" }',))


class Servers:
    """ACL.Resolve as the servers answer it; `down` makes every call fail."""

    def __init__(self) -> None:
        self.tokens: dict[str, Resolved] = {"reader": READER}
        self.down = False
        self.calls = 0

    async def resolve_token(self, token: str) -> dict[str, Any]:
        self.calls += 1
        if self.down:
            raise MeshError("No known Consul servers")
        if token not in self.tokens:
            raise PermissionDenied("ACL not found")
        return dict(self.tokens[token].to_wire(), enabled=True)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _acls(down_policy: str = "extend-cache", **cfg: Any) -> tuple[AgentACLs, Servers, Clock]:
    servers, clock = Servers(), Clock()
    config = AgentConfig(node_name="c1", acl_enabled=True, acl_default_policy="deny", acl_down_policy=down_policy,
                         acl_token_ttl=30.0, **cfg)
    return AgentACLs(config, servers, clock=clock, wall=lambda: 1_000.0), servers, clock  # type: ignore[arg-type]


async def test_a_token_is_asked_for_once_per_ttl() -> None:
    acls, servers, clock = _acls()
    assert (await acls.access("reader")).can("service", "web", "read")
    clock.now += 29
    await acls.access("reader")
    assert servers.calls == 1
    clock.now += 2
    await acls.access("reader")
    assert servers.calls == 2


async def test_extend_cache_keeps_old_answers_and_refuses_strangers_without_asking_again() -> None:
    acls, servers, clock = _acls()
    await acls.access("reader")
    servers.down = True
    clock.now += 3600  # far past the TTL
    assert (await acls.access("reader")).can("service", "web", "read")
    calls = servers.calls
    servers.tokens["stranger"] = READER
    denied = await acls.access("stranger")  # never seen: nothing to extend
    assert not denied.can("service", "web", "read")
    for _ in range(10):
        await acls.access("reader")
    assert servers.calls == calls  # within DOWN_RETRY nobody asks the servers again
    clock.now += DOWN_RETRY + 0.1
    servers.down = False
    assert (await acls.access("stranger")).can("service", "web", "read")


@pytest.mark.parametrize(("policy", "allowed"), [("allow", True), ("deny", False)])
async def test_allow_and_deny_down_policies(policy: str, allowed: bool) -> None:
    acls, servers, clock = _acls(policy)
    await acls.access("reader")
    servers.down = True
    clock.now += 60
    assert (await acls.access("reader")).can("service", "web", "read") is allowed
    assert (await acls.access("reader")).can("node", "anything", "write") is allowed


async def test_acl_not_found_is_remembered_only_briefly() -> None:
    acls, servers, clock = _acls()
    with pytest.raises(PermissionDenied, match="ACL not found"):
        await acls.access("new")
    servers.tokens["new"] = READER  # created a moment later (another agent, the leader)
    with pytest.raises(PermissionDenied):
        await acls.access("new")
    clock.now += NOT_FOUND_TTL + 0.01
    assert (await acls.access("new")).can("service", "web", "read")


async def test_an_expired_token_stops_working_even_from_the_cache() -> None:
    acls, servers, clock = _acls()
    servers.tokens["short"] = Resolved("acc-short", rules=READER.rules, expiration_time=1_000.0)
    with pytest.raises(PermissionDenied, match="ACL not found"):
        await acls.access("short")  # the wall clock reads 1000: it has just expired


async def test_the_recovery_token_works_with_every_server_down() -> None:
    acls, servers, clock = _acls(acl_agent_recovery_token="recover")
    servers.down = True
    access = await acls.access("recover")
    assert access.can("agent", "c1", "write") and not access.can("service", "web", "write")
    assert servers.calls == 0


async def test_acls_off_allow_everything_without_asking() -> None:
    servers = Servers()
    acls = AgentACLs(AgentConfig(node_name="c1"), servers)  # type: ignore[arg-type]
    assert (await acls.access("anything")).can("acl", "", "write")
    assert servers.calls == 0


def test_the_request_token_in_consuls_order() -> None:
    assert token_of({"X-Consul-Token": "h", "Authorization": "Bearer b"}, {"token": "q"}, "d") == "h"
    assert token_of({"Authorization": "Bearer b"}, {"token": "q"}, "d") == "b"
    assert token_of({"Authorization": "Basic x"}, {"token": "q"}, "d") == "q"
    assert token_of({}, {}, "d") == "d"
    assert token_of({}, {}, "") == ""
