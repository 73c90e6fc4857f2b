"""Async client of the agent's HTTP API, for the CLI and long-running programs (the
sidecar proxy).

The address and token are arguments (api.config.resolve reads flags and environment,
once, in the program's entry point). One aiohttp session per Client, made on first use
on the running loop, with a bounded connection pool. Every answer is read with a size
limit (64 MiB by default) so a buggy or hostile agent cannot exhaust memory.

Blocking queries (`blocking_get`) follow Consul's rules (../shared/reference/consul.md
§2): the agent holds the request up to `wait` plus up to wait/16 of jitter, so the
request's own deadline is wait + wait/16 + a margin, computed per call, never one fixed
total that would cut a 5-minute wait short. Errors are APIError (status kept; 0 when no
answer came), see api.errors.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from .config import TLSOptions
from .errors import APIError, DecodeError
from .tls import client_context

__all__ = ["APIError", "Client", "Result", "blocking_timeout", "go_duration", "MAX_RESPONSE"]

T = TypeVar("T")
U = TypeVar("U")

MAX_RESPONSE = 64 << 20
BLOCKING_MARGIN = 5.0  # seconds past wait + wait/16: the answer's own transfer time
MAX_CONNECTIONS = 64  # one per concurrent blocking watch; more wait for a free one
_ERROR_TEXT = 8192  # characters of an error body kept in the message
_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


def blocking_timeout(wait: float, margin: float = BLOCKING_MARGIN) -> float:
    """The deadline of a blocking request: the agent may hold it for wait + wait/16."""
    return wait + wait / 16 + margin


def go_duration(seconds: float) -> str:
    """`?wait` as Go parses it, in milliseconds as Consul's Go client sends it (a
    positive wait under 1 ms rounds up to 1ms rather than to 0, which means default)."""
    if seconds <= 0:
        return "0ms"
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class Result(Generic[T]):
    """One answer: its value (decoded JSON, or a typed value from api.types), the
    X-Consul-Index (0 when absent), the X-Consul-ContentHash ("" when absent), all
    headers (case-insensitive) and the HTTP status."""

    value: T
    index: int = 0
    content_hash: str = ""
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS, compare=False)
    status: int = 200

    def with_value(self, value: U) -> Result[U]:
        """The same answer carrying another value (the typed form of this one)."""
        return replace(self, value=value)  # type: ignore[return-value]


def _index(headers: Mapping[str, str], status: int) -> int:
    raw = headers.get("X-Consul-Index", "").strip()
    if not raw:
        return 0
    if not (raw.isascii() and raw.isdigit()):
        raise DecodeError(f"X-Consul-Index is not a non-negative integer: {raw[:40]!r}", status)
    return int(raw)


def _query(params: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> list[tuple[str, str]]:
    """Query pairs (a name may repeat); booleans as Go writes them."""
    items = params.items() if isinstance(params, Mapping) else (params or ())
    return [(k, ("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in items]


class Client:
    """The agent at `address` (host:port or http(s)://host:port), with `token` sent as
    X-Consul-Token. `timeout` bounds every non-blocking request. `tls` applies to an
    https:// address (its files are read here: api.config.ConfigError when unusable);
    without it, https verifies the agent against the system's CAs."""

    def __init__(self, address: str, token: str = "", *, timeout: float = 30.0,
                 max_response: int = MAX_RESPONSE, max_connections: int = MAX_CONNECTIONS,
                 tls: TLSOptions | None = None) -> None:
        if "://" not in address:
            address = "http://" + address
        self.base = address.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        self._server_name = ""
        if tls is not None and self.base.lower().startswith("https://"):
            self._ssl = client_context(tls)
            self._server_name = tls.server_name
        self.token = token
        self.timeout = timeout
        self.max_response = max_response
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"X-Consul-Token": self.token} if self.token else {}
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections,
                                             ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector, headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _send(self, method: str, path: str, params: Any, body: Any, data: bytes | None,
                    timeout: float, limit: int | None) -> tuple[int, CIMultiDictProxy[str], Any]:
        """(status 200, headers, value): JSON decoded, other content types as bytes."""
        kwargs: dict[str, Any] = {"params": _query(params),
                                  "timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 10.0))}
        if self._server_name:
            kwargs["server_hostname"] = self._server_name
        if body is not None:
            kwargs["data"] = json.dumps(body)
        elif data is not None:
            kwargs["data"] = data
        limit = self.max_response if limit is None else limit
        try:
            async with self._sess().request(method, self.base + path, **kwargs) as resp:
                raw = await self._read(resp, limit)
                if resp.status != 200:
                    text = raw.decode("utf-8", "replace").strip() or resp.reason or ""
                    if len(text) > _ERROR_TEXT:
                        text = text[:_ERROR_TEXT] + "..."
                    raise APIError(resp.status, f"Unexpected response code: {resp.status} ({text})")
                if resp.content_type != "application/json":
                    return resp.status, resp.headers, raw
                try:
                    return resp.status, resp.headers, (json.loads(raw) if raw else None)
                except (ValueError, RecursionError) as exc:
                    raise DecodeError(f"Invalid JSON from agent at {self.base}{path}: {str(exc)[:200]}",
                                      resp.status) from None
        except aiohttp.ClientError as exc:
            raise APIError(0, f"Error connecting to agent at {self.base}: {exc}") from None
        except TimeoutError:
            raise APIError(0, f"Timed out talking to agent at {self.base}") from None

    async def _read(self, resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """The body, refused past `limit` bytes (decompressed) without reading on."""
        def too_large() -> DecodeError:
            return DecodeError(f"Response from agent at {self.base} is larger than {limit} bytes", resp.status)

        if resp.content_length is not None and resp.content_length > limit:
            raise too_large()
        chunks = bytearray()
        async for chunk in resp.content.iter_chunked(65536):
            chunks += chunk
            if len(chunks) > limit:
                raise too_large()
        return bytes(chunks)

    async def request(self, method: str, path: str, *, params: Any = None, body: Any = None,
                      data: bytes | None = None, timeout: float | None = None,
                      limit: int | None = None) -> tuple[Any, dict[str, str]]:
        """JSON result and headers; raw bytes when the answer is not JSON. `body` is
        sent as JSON, `data` as is; `limit` overrides the response size limit."""
        _, headers, value = await self._send(method, path, params, body, data,
                                             self.timeout if timeout is None else timeout, limit)
        return value, dict(headers)

    async def get(self, path: str, **params: Any) -> Any:
        return (await self.request("GET", path, params=params))[0]

    async def put(self, path: str, body: Any = None, **params: Any) -> Any:
        return (await self.request("PUT", path, params=params, body=body))[0]

    async def blocking_get(self, path: str, params: Any = None, *, index: int | None = None,
                           hash: str | None = None, wait: float = 300.0) -> Result[Any]:
        """GET a blocking endpoint. With `index` > 0 the agent answers once its data is
        newer than that index; with `hash` once the content hash differs; either way
        after `wait` seconds at the latest, with the current data. Without either it
        answers at once."""
        query = _query(params)
        if index is not None:
            query.append(("index", str(max(0, index))))
        if hash:
            query.append(("hash", hash))
        query.append(("wait", go_duration(wait)))
        blocking = bool(index) or bool(hash)
        timeout = blocking_timeout(wait) if blocking else self.timeout
        status, headers, value = await self._send("GET", path, query, None, None, timeout, None)
        return Result(value=value, index=_index(headers, status),
                      content_hash=headers.get("X-Consul-ContentHash", ""), headers=headers, status=status)
