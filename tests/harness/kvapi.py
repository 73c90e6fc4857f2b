"""Helpers for the KV, session and transaction API tests against a real agent.

`call` answers every status as a `Reply` (exact status, headers, body bytes) instead of
raising, so a test can hold Consul's error codes and bodies to the letter. `Pending`
runs a (blocking) request in a thread, so a test can prove it is still waiting before
it makes the write that should wake it. `unique` names a key prefix per test: the dev
agent is shared by the whole integration package.
"""

from __future__ import annotations

import base64
import http.client
import json
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

__all__ = ["Reply", "call", "Pending", "unique", "b64", "kv_path", "node_name", "datacenter",
           "new_session"]


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        """X-Consul-Index as an int (KeyError when the header is missing)."""
        raw = self.headers.get("X-Consul-Index")
        if raw is None:
            raise KeyError(f"no X-Consul-Index on a {self.status} reply: {dict(self.headers)}")
        return int(raw)

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip()


def call(agent: Any, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         timeout: float = 15.0) -> Reply:
    """One HTTP request to the agent; `path` is sent exactly as given (already encoded)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=timeout)
    try:
        conn.request(method, path, body=data)
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def kv_path(key: str, query: str = "") -> str:
    """/v1/kv/<key> with the key percent-encoded (UTF-8), `/` kept as the separator."""
    path = "/v1/kv/" + quote(key, safe="/")
    return f"{path}?{query}" if query else path


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unique(what: str = "t") -> str:
    """A fresh key prefix ending in `/`."""
    return f"{what}-{uuid.uuid4().hex[:10]}/"


def node_name(agent: Any) -> str:
    return str(call(agent, "GET", "/v1/agent/self").json["Config"]["NodeName"])


def datacenter(agent: Any) -> str:
    return str(call(agent, "GET", "/v1/agent/self").json["Config"]["Datacenter"])


def new_session(agent: Any, **fields: Any) -> str:
    """PUT /v1/session/create with `fields` as the body; returns the ID (asserts 200)."""
    reply = call(agent, "PUT", "/v1/session/create", fields or None)
    assert reply.status == 200, (reply.status, reply.text)
    return str(reply.json["ID"])


class Pending:
    """`fn` running in its own thread, started now."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self.started = time.monotonic()
        self._future = self._pool.submit(fn)
        self._pool.shutdown(wait=False)

    def assert_pending(self, for_seconds: float = 0.5) -> None:
        """Fail unless `fn` is still running `for_seconds` from now."""
        try:
            value = self._future.result(timeout=for_seconds)
        except FutureTimeout:
            return
        raise AssertionError(f"expected the request to be blocked, but it returned {value!r} after "
                             f"{time.monotonic() - self.started:.2f}s")

    def result(self, timeout: float) -> Any:
        """fn's value within `timeout` seconds (concurrent.futures.TimeoutError otherwise)."""
        return self._future.result(timeout=timeout)
