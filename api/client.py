"""Async client of the agent's HTTP API (used by the CLI, later by the sidecar proxy).

Speaks Consul's API: `-http-addr`/CONSUL_HTTP_ADDR/MESH_HTTP_ADDR (with or without an
http:// prefix), the token in X-Consul-Token, errors as APIError(status, text).
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

__all__ = ["APIError", "Client", "default_address"]


class APIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def default_address() -> str:
    return os.environ.get("MESH_HTTP_ADDR") or os.environ.get("CONSUL_HTTP_ADDR") or "127.0.0.1:8500"


class Client:
    def __init__(self, address: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        address = address or default_address()
        if "://" not in address:
            address = "http://" + address
        self.base = address.rstrip("/")
        self.token = token or os.environ.get("MESH_HTTP_TOKEN") or os.environ.get("CONSUL_HTTP_TOKEN") or ""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"X-Consul-Token": self.token} if self.token else {}
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=headers)
        return self._session

    async def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                      body: Any = None, data: bytes | None = None) -> tuple[Any, dict[str, str]]:
        """JSON result and headers; raw bytes when the answer is not JSON."""
        kwargs: dict[str, Any] = {"params": {k: str(v) for k, v in (params or {}).items()}}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        elif data is not None:
            kwargs["data"] = data
        try:
            async with self._sess().request(method, self.base + path, **kwargs) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    text = raw.decode("utf-8", "replace").strip() or resp.reason or ""
                    raise APIError(resp.status, f"Unexpected response code: {resp.status} ({text})")
                headers = dict(resp.headers)
                if resp.content_type == "application/json":
                    return (json.loads(raw) if raw else None), headers
                return raw, headers
        except aiohttp.ClientError as exc:
            raise APIError(0, f"Error connecting to agent at {self.base}: {exc}") from None
        except TimeoutError:
            raise APIError(0, f"Timed out talking to agent at {self.base}") from None

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.request("GET", path, params=params))[0]

    async def put(self, path: str, body: Any = None, **params: Any) -> Any:
        return (await self.request("PUT", path, params=params, body=body))[0]
