"""How an agent reaches the replicated state: in-process on a server, over RPC on a client.

Both backends implement one typed contract, `Backend`: writes (an encoded command),
named reads, heartbeats and leaves, members, leaf signing, CA configuration, and the
status and operator reads (leader, peers, Raft configuration), so the HTTP handlers,
anti-entropy, the caches and the DNS view do not care which kind of agent they run in.
A server's LocalBackend also implements `ServerOperations`, the calls only a server
answers about itself (its Raft state, snapshots, removing a peer).

The local side imports this module, never agent/server/: the server role is named
here for type checking only.

A client's ServerPool spreads calls over the servers it knows (starting from a random
one), fails over to the next on a connection error, backs off between rounds, and
learns the current server set from every heartbeat answer; it never needs all of them
up, nor the one it joined through.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

from mesh.catalog.errors import InvalidRequest, MeshError, NotFound, PermissionDenied, RateLimited

from .data_dir import write_private
from .errors import NoLeader
from .logging import get_logger
from .reads import ReadOptions, ReadResult
from .rpc import RPCClient, RPCError
from .server import ServerRole

__all__ = ["Backend", "ServerOperations", "LocalBackend", "RemoteBackend", "ServerPool", "NO_SERVERS"]

log = get_logger("backend")

NO_SERVERS = "No known Consul servers"  # Consul's text when no server can be reached
BAD_SERVER_SECONDS = 10.0  # a server that refused, reset or timed out is tried last this long


class Backend(Protocol):
    """How the local agent reaches the replicated state. Every call may raise MeshError
    (NoLeader, InvalidRequest, NotFound, RateLimited, PermissionDenied, or NO_SERVERS
    on a client that reaches no server).

    Calls that take a `token` run with that ACL token ("" is the anonymous token); with
    None they are the agent's own traffic and carry its `agent` token."""

    async def apply(self, raw: bytes, token: str | None = None) -> Any:
        """Commit one encoded command (catalog.commands.encode); the FSM's result."""
        ...

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions,
                   token: str | None = None) -> ReadResult:
        """Run the named query (agent/server/queries.py), blocking per `opts`."""
        ...

    async def resolve_token(self, token: str) -> dict[str, Any]:
        """What `token` stands for (agent/server/acl.py's ACL.Resolve answer); raises
        PermissionDenied("ACL not found") for an unknown one."""
        ...

    async def heartbeat(self, info: dict[str, Any]) -> float:
        """This node is alive; the interval to use until the next heartbeat."""
        ...

    async def leave(self, info: dict[str, Any]) -> None:
        """This client node leaves: deregister it at once."""
        ...

    async def members(self) -> list[dict[str, Any]]:
        """Every agent node with its status (alive, failed, left)."""
        ...

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        """A leaf certificate for `args["csr"]` of `args["service"]` on `args["node"]`."""
        ...

    async def ca_configure(self, body: Any, token: str | None = None) -> bool:
        """PUT /v1/connect/ca/configuration."""
        ...

    async def session_renew(self, session_id: str, token: str | None = None) -> dict[str, Any] | None:
        """Restart a session's TTL on the leader: its entry, or None when it is gone."""
        ...

    async def status_leader(self) -> str:
        """The leader's RPC address, or "" when none is known."""
        ...

    async def status_peers(self) -> list[str]:
        """The voters' RPC addresses."""
        ...

    async def raft_configuration(self, token: str | None = None) -> dict[str, Any]:
        """/v1/operator/raft/configuration."""
        ...


class ServerOperations(Protocol):
    """What only a server answers, about itself: the HTTP handlers of
    /v1/operator/raft/{state,peer} and /v1/snapshot use it on server agents."""

    def raft_state(self) -> dict[str, Any]: ...

    def raft_stats(self) -> dict[str, Any]: ...

    async def remove_peer(self, address: str, peer_id: str) -> None: ...

    async def snapshot(self, consistent: bool, stale: bool) -> tuple[int, bytes]: ...

    async def restore(self, data: bytes) -> None: ...


class LocalBackend:
    """The contract served in this process, by this agent's server role."""

    def __init__(self, server: ServerRole, agent_token: str = "") -> None:
        self.server = server
        self.agent_token = agent_token

    def _token(self, token: str | None) -> str:
        return self.agent_token if token is None else token

    async def apply(self, raw: bytes, token: str | None = None) -> Any:
        return await self.server.apply_raw(raw, self._token(token))

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions,
                   token: str | None = None) -> ReadResult:
        return await self.server.read(name, params, opts, self._token(token))

    async def resolve_token(self, token: str) -> dict[str, Any]:
        return await self.server.resolve_token(token)

    async def heartbeat(self, info: dict[str, Any]) -> float:
        return await self.server.heartbeat(dict(info, token=self.agent_token))

    async def leave(self, info: dict[str, Any]) -> None:
        await self.server.node_leave(dict(info, token=self.agent_token))

    async def members(self) -> list[dict[str, Any]]:
        return await self.server.members()

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.server.sign(dict(args, token=self._token(args.get("token"))))

    async def ca_configure(self, body: Any, token: str | None = None) -> bool:
        return await self.server.ca_configure(body, self._token(token))

    async def session_renew(self, session_id: str, token: str | None = None) -> dict[str, Any] | None:
        return await self.server.session_renew(session_id, self._token(token))

    async def status_leader(self) -> str:
        return self.server.leader_rpc_address()

    async def status_peers(self) -> list[str]:
        return self.server.status_peers()

    async def raft_configuration(self, token: str | None = None) -> dict[str, Any]:
        return await self.server.raft_configuration(self._token(token))

    # ---- ServerOperations ----------------------------------------------------------
    def raft_state(self) -> dict[str, Any]:
        return self.server.raft_state()

    def raft_stats(self) -> dict[str, Any]:
        return self.server.raft_stats()

    async def remove_peer(self, address: str, peer_id: str) -> None:
        await self.server.remove_peer(address, peer_id)

    async def snapshot(self, consistent: bool, stale: bool) -> tuple[int, bytes]:
        return await self.server.snapshot(consistent, stale)

    async def restore(self, data: bytes) -> None:
        await self.server.restore(data)


class ServerPool:
    """The servers a client agent calls, kept current from the servers themselves.

    Every heartbeat answer carries the cluster's current server set (from the replicated
    servers table), so a new, removed or moved server is known within seconds; the set
    is written to `state_file` so an agent restarted while its -retry-join seeds are down
    still finds the cluster. Calls rotate over the known servers; one that refuses, resets
    or times out is skipped for a while (all are tried when every one is marked). The
    -retry-join seeds come last: only when no learned server answers."""

    def __init__(self, seeds: list[str], encrypt: str, rng: random.Random | None = None,
                 ssl_context: ssl.SSLContext | None = None, state_file: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._seeds = list(dict.fromkeys(seeds))
        self._state_file = state_file
        self._clock = clock
        self._learned: list[str] = self._load()
        self._bad_until: dict[str, float] = {}
        self._client = RPCClient(encrypt, ssl_context=ssl_context)
        self._rng = rng or random.Random()
        self._next = self._rng.randrange(max(1, len(self._learned) or len(self._seeds)))
        self.healthy = False

    @property
    def servers(self) -> list[str]:
        """Every candidate: learned servers first, then seeds they do not name."""
        return list(dict.fromkeys(self._learned + self._seeds))

    def candidates(self) -> list[str]:
        """This call's order: learned servers rotated, then the seeds; servers marked bad
        go last (still tried: they may be back)."""
        learned = self._learned
        if learned:
            start = self._next % len(learned)
            self._next += 1
            learned = learned[start:] + learned[:start]
        order = list(dict.fromkeys(learned + self._seeds))
        now = self._clock()
        good = [a for a in order if self._bad_until.get(a, 0.0) <= now]
        return good + [a for a in order if a not in good]

    def set_ssl_context(self, context: ssl.SSLContext, drop_open: bool = False) -> None:
        """Use `context` for new connections (agent.auto_encrypt's certificate)."""
        self._client.set_ssl_context(context, drop_open)

    def mark_bad(self, address: str) -> None:
        self._bad_until[address] = self._clock() + BAD_SERVER_SECONDS

    async def call(self, method: str, args: dict[str, Any], timeout: float = 10.0, deadline: float = 15.0) -> Any:
        """Call one server; on a connection error try the others, then back off and
        retry until `deadline` seconds have passed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        backoff = 0.05
        last: Exception | None = None
        while True:
            for address in self.candidates():
                remaining = end - loop.time()
                if remaining <= 0:
                    break
                try:
                    result = await self._client.call(address, method, args, timeout=min(timeout, remaining))
                    self.healthy = True
                    self._bad_until.pop(address, None)
                    return result
                except RPCError as exc:
                    text = str(exc)
                    if exc.kind == "invalid":
                        raise InvalidRequest(text) from None  # the server's answer, not a failure
                    if exc.kind == "notfound":
                        raise NotFound(text) from None
                    if exc.kind == "ratelimit":
                        raise RateLimited(text) from None
                    if exc.kind == "denied":
                        raise PermissionDenied(text) from None
                    if exc.kind == "noleader":
                        last = NoLeader(text)  # another server may know a leader
                        continue
                    if exc.kind == "error":
                        raise MeshError(text) from None
                    self.mark_bad(address)
                    last = exc
            self.healthy = False
            if loop.time() + backoff >= end:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        if isinstance(last, NoLeader):
            raise last
        log.debug("no_server_reachable", servers=self.servers, error=str(last))
        raise MeshError(NO_SERVERS)

    def add(self, address: str) -> None:
        if address not in self._learned:
            self.learn(self._learned + [address])

    def learn(self, servers: Any) -> None:
        """The cluster's server set as a server reported it: it replaces what we knew."""
        if not isinstance(servers, list):
            return
        known = list(dict.fromkeys(a for a in servers if isinstance(a, str) and ":" in a))
        if not known or known == self._learned:
            return
        if set(known) != set(self._learned):
            log.info("servers_updated", servers=known)
        self._learned = known
        self._save()

    async def refresh(self) -> None:
        """Learn every server from any server (a fallback to the heartbeat's list)."""
        try:
            servers = await self.call("Server.List", {}, timeout=3, deadline=3)
        except MeshError:
            return
        self.learn(servers)

    def _load(self) -> list[str]:
        if not self._state_file:
            return []
        try:
            with open(self._state_file) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            return []
        return [a for a in saved if isinstance(a, str)] if isinstance(saved, list) else []

    def _save(self) -> None:
        if not self._state_file:
            return
        try:
            write_private(self._state_file, json.dumps(self._learned).encode())
        except OSError as exc:
            log.warning("servers_not_saved", path=self._state_file, error=str(exc))

    async def close(self) -> None:
        await self._client.close()


class RemoteBackend:
    """The contract served by the cluster's servers over RPC, through a ServerPool."""

    def __init__(self, pool: ServerPool, agent_token: str = "") -> None:
        self.pool = pool
        self.agent_token = agent_token

    def _token(self, token: str | None) -> str:
        return self.agent_token if token is None else token

    async def apply(self, raw: bytes, token: str | None = None) -> Any:
        # the request ID inside `raw` makes a retry through another server safe
        return await self.pool.call("Catalog.Apply", {"raw": raw, "token": self._token(token)}, timeout=10, deadline=10)

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions,
                   token: str | None = None) -> ReadResult:
        wait = opts.wait + opts.wait / 16 + 5 if opts.min_index else 10
        reply = await self.pool.call("Read", {"q": name, "p": params, "o": opts.to_wire(), "token": self._token(token)},
                                     timeout=wait, deadline=wait)
        return ReadResult.from_wire(reply)

    async def resolve_token(self, token: str) -> dict[str, Any]:
        # with the servers already unreachable (heartbeats failing), a request waiting on a
        # token's refresh gives up sooner: the agent's down_policy answers it meanwhile
        wait = 3.0 if self.pool.healthy else 0.5
        return dict(await self.pool.call("ACL.Resolve", {"token": token}, timeout=wait, deadline=wait))

    async def heartbeat(self, info: dict[str, Any]) -> float:
        reply = await self.pool.call("Node.Heartbeat", dict(info, v=2, token=self.agent_token), timeout=3, deadline=3)
        if isinstance(reply, dict):  # v2: the interval and the cluster's current servers
            self.pool.learn(reply.get("servers"))
            return float(reply.get("interval") or 1.0)
        return float(reply or 1.0)

    async def leave(self, info: dict[str, Any]) -> None:
        await self.pool.call("Node.Leave", dict(info, token=self.agent_token), timeout=5, deadline=10)

    async def members(self) -> list[dict[str, Any]]:
        return list(await self.pool.call("Internal.Members", {}, timeout=5, deadline=5))

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        signing = dict(args, token=self._token(args.get("token")))
        return dict(await self.pool.call("ConnectCA.Sign", signing, timeout=15, deadline=15))

    async def ca_configure(self, body: Any, token: str | None = None) -> bool:
        return bool(await self.pool.call("ConnectCA.Configure", {"body": body, "token": self._token(token)},
                                         timeout=30, deadline=30))

    async def session_renew(self, session_id: str, token: str | None = None) -> dict[str, Any] | None:
        reply = await self.pool.call("Session.Renew", {"id": session_id, "token": self._token(token)},
                                     timeout=10, deadline=10)
        return dict(reply) if reply else None

    async def status_leader(self) -> str:
        return str(await self.pool.call("Status.Leader", {}, timeout=3, deadline=5))

    async def status_peers(self) -> list[str]:
        return list(await self.pool.call("Server.List", {}, timeout=3, deadline=5))

    async def raft_configuration(self, token: str | None = None) -> dict[str, Any]:
        return dict(await self.pool.call("Operator.Raft", {"token": self._token(token)}, timeout=3, deadline=5))

