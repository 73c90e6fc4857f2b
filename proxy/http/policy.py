"""Interim policy facade (replaced by the pure decision modules)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .message import Request


class BadRequest(ValueError):
    pass


@dataclass
class Parsed:
    method: str
    path: str
    query: str


def parse_request(request: Request) -> Parsed:
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    for name, value in request.headers:
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True
    return Parsed(request.method, path, query)


@dataclass
class _Decision:
    allowed: bool
    log: str


def authorize(config: Any, caller: str, parsed: Parsed) -> _Decision:
    d = config.authorize(caller)
    return _Decision(d.allowed, d.reason)


def trace(config: Any, request: Request, inbound: bool) -> Any:
    return None


def with_trace_headers(headers: list[tuple[bytes, bytes]], trace: Any) -> list[tuple[bytes, bytes]]:
    return headers


@dataclass
class _Route:
    name: str
    service: str


def route(config: Any, spec: Any, parsed: Parsed) -> _Route:
    return _Route("default", spec.destination_name)


def request_timeout(route: Any) -> float | None:
    return 15.0


def rewritten_target(route: Any, parsed: Parsed, target: bytes) -> bytes:
    return target


def request_headers(route: Any, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return headers


def response_editor(route: Any) -> Any:
    return None


def endpoints_key(spec: Any, route: Any) -> str:
    return str(spec.key)


def may_retry(route: Any, attempt_no: int, outcome: Any, method: str, reached: bool, budget: Any,
              headers: Any = None) -> bool:
    return False


async def backoff(attempt_no: int) -> None:
    await asyncio.sleep(0.025 * attempt_no)


class _Budget:
    def record_request(self) -> None:
        pass


def new_budget() -> Any:
    return _Budget()
