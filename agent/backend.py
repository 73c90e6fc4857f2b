"""How an agent reaches the replicated state: in-process on a server, over RPC on a client.

Both backends offer the same four calls (apply an encoded command, run a named read,
heartbeat, leave), so the HTTP handlers, anti-entropy and liveness code do not care
which kind of agent they run in.

A client's ServerPool spreads calls over the servers it knows (starting from a random
one), fails over to the next on a connection error, backs off between rounds, and
refreshes the server list from the servers themselves; it never needs all of them up.
"""

from __future__ import annotations

import asyncio
import random
import ssl
from typing import Any, Protocol

from mesh.catalog.errors import InvalidRequest, MeshError, NotFound, RateLimited

from .logging import get_logger
from .raft import NoLeader
from .rpc import RPCClient, RPCError
from .server import ReadOptions, ReadResult, ServerRole

__all__ = ["Backend", "LocalBackend", "RemoteBackend", "ServerPool"]

log = get_logger("backend")


class Backend(Protocol):
    async def apply(self, raw: bytes) -> Any: ...

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions) -> ReadResult: ...

    async def heartbeat(self, info: dict[str, Any]) -> float: ...

    async def leave(self, info: dict[str, Any]) -> None: ...

    async def members(self) -> list[dict[str, Any]]: ...


class LocalBackend:
    def __init__(self, server: ServerRole) -> None:
        self.server = server

    async def apply(self, raw: bytes) -> Any:
        return await self.server.apply_raw(raw)

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions) -> ReadResult:
        return await self.server.read(name, params, opts)

    async def heartbeat(self, info: dict[str, Any]) -> float:
        return await self.server.heartbeat(info)

    async def leave(self, info: dict[str, Any]) -> None:
        await self.server.node_leave(info)

    async def members(self) -> list[dict[str, Any]]:
        return await self.server.members()

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.server.sign(args)

    async def ca_configure(self, body: Any) -> bool:
        return await self.server.ca_configure(body)


class ServerPool:
    def __init__(self, seeds: list[str], encrypt: str, rng: random.Random | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self._servers = list(dict.fromkeys(seeds))
        self._seeds = list(self._servers)
        self._client = RPCClient(encrypt, ssl_context=ssl_context)
        self._rng = rng or random.Random()
        self._next = self._rng.randrange(len(self._servers)) if self._servers else 0
        self.healthy = False

    @property
    def servers(self) -> list[str]:
        return list(self._servers)

    async def call(self, method: str, args: dict[str, Any], timeout: float = 10.0, deadline: float = 15.0) -> Any:
        """Call one server; on a connection error try the others, then back off and
        retry until `deadline` seconds have passed."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        backoff = 0.05
        last: Exception | None = None
        while True:
            for _ in range(len(self._servers)):
                address = self._servers[self._next % len(self._servers)]
                self._next += 1
                try:
                    result = await self._client.call(address, method, args, timeout=timeout)
                    self.healthy = True
                    return result
                except RPCError as exc:
                    text = str(exc)
                    if exc.kind == "invalid":
                        raise InvalidRequest(text) from None  # the server's answer, not a failure
                    if exc.kind == "notfound":
                        raise NotFound(text) from None
                    if exc.kind == "ratelimit":
                        raise RateLimited(text) from None
                    if exc.kind == "noleader":
                        last = NoLeader(text)  # another server may know a leader
                        continue
                    if exc.kind == "error":
                        raise MeshError(text) from None
                    last = exc
            self.healthy = False
            if loop.time() + backoff >= end:
                break
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)
        if isinstance(last, NoLeader):
            raise last
        raise MeshError(f"no server reachable ({', '.join(self._servers)}): {last}")

    def add(self, address: str) -> None:
        if address not in self._servers:
            self._servers.append(address)

    async def refresh(self) -> None:
        """Learn every server from any server (the -retry-join list may name only one)."""
        try:
            servers = await self.call("Server.List", {}, timeout=3, deadline=3)
        except MeshError:
            return
        if isinstance(servers, list) and servers:
            # the -retry-join addresses stay candidates: one server's partial view
            # (just restarted, still replaying) must not leave us with none that answer
            known = list(dict.fromkeys([s for s in servers if isinstance(s, str)] + self._seeds))
            if set(known) != set(self._servers):
                log.info("servers_updated", servers=known)
                self._servers = known

    async def close(self) -> None:
        await self._client.close()


class RemoteBackend:
    def __init__(self, pool: ServerPool) -> None:
        self.pool = pool

    async def apply(self, raw: bytes) -> Any:
        # the request ID inside `raw` makes a retry through another server safe
        return await self.pool.call("Catalog.Apply", {"raw": raw}, timeout=10, deadline=10)

    async def read(self, name: str, params: dict[str, Any], opts: ReadOptions) -> ReadResult:
        wait = opts.wait + opts.wait / 16 + 5 if opts.min_index else 10
        reply = await self.pool.call("Read", {"q": name, "p": params, "o": opts.to_wire()}, timeout=wait, deadline=wait)
        return ReadResult(int(reply["i"]), reply["r"], bool(reply["kl"]), int(reply["lc"]))

    async def heartbeat(self, info: dict[str, Any]) -> float:
        return float(await self.pool.call("Node.Heartbeat", info, timeout=3, deadline=3) or 1.0)

    async def leave(self, info: dict[str, Any]) -> None:
        await self.pool.call("Node.Leave", info, timeout=5, deadline=10)

    async def members(self) -> list[dict[str, Any]]:
        return list(await self.pool.call("Internal.Members", {}, timeout=5, deadline=5))

    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        return dict(await self.pool.call("ConnectCA.Sign", args, timeout=15, deadline=15))

    async def ca_configure(self, body: Any) -> bool:
        return bool(await self.pool.call("ConnectCA.Configure", {"body": body}, timeout=30, deadline=30))
