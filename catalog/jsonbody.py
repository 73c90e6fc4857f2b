"""Strict decoding of untrusted JSON: the one reader every HTTP body goes through.

Python's json module accepts what Go's (and so Consul's) refuses, and what the rest of
mesh cannot carry: `NaN`, `Infinity` and `1e999` (non-finite floats that json.dumps
writes back as invalid JSON and that break integer fields), integers past 64 bits
(msgpack cannot encode them in a Raft command), and nesting deep enough that the C
scanner, or any recursive walk after it, raises RecursionError. Each is refused here
with InvalidRequest naming where in the body it was found, so the HTTP layer answers
400 instead of 500.

Normal bodies pay almost nothing: the walk that finds the offending path only runs
when the parse hooks saw a bad number or the body has more brackets than the depth
limit allows.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import InvalidRequest

__all__ = ["MAX_DEPTH", "INT_MIN", "INT_MAX", "loads", "describe_path"]

MAX_DEPTH = 64
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1  # Go's uint64: the widest integer a Consul field holds


class _Bad(Exception):
    pass


def describe_path(path: list[str | int]) -> str:
    """`Service.Weights.Passing` / `Checks[1].OutputMaxSize`; `body` for the top level."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


def _depth_exceeds(text: str | bytes, limit: int) -> bool:
    """Cheap upper bound: a body with at most `limit` brackets cannot nest deeper."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > limit
    return text.count("[") + text.count("{") > limit


def _find_problem(value: Any, limit: int) -> str | None:
    """The first value nested past `limit` or holding a number mesh cannot carry,
    as a message naming its path. Iterative, so no depth makes it recurse; a path is
    a chain of (parent, key) links, built into a list only for the message."""
    stack: list[tuple[Any, Any, int]] = [(value, None, 1)]
    while stack:
        item, link, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return f"{_path_of(link)}: nested deeper than {limit} levels"
            children = list(item.items()) if isinstance(item, dict) else list(enumerate(item))
            stack.extend((child, (link, key), depth + 1) for key, child in reversed(children))
        elif isinstance(item, float) and not math.isfinite(item):
            got = "NaN" if math.isnan(item) else "Infinity (or a number too large)"
            return f"{_path_of(link)}: must be a finite number, got {got}"
        elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
            return f"{_path_of(link)}: integer out of range"
    return None


def _path_of(link: Any) -> str:
    parts: list[str | int] = []
    while link is not None:
        link, key = link
        parts.append(key)
    parts.reverse()
    if len(parts) > 8:
        return describe_path(parts[:8]) + "..."
    return describe_path(parts)


def loads(body: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one JSON document from an untrusted source, or raise InvalidRequest
    ("Request decode failed: ...") naming the offending field."""
    suspicious = False

    def number(text: str) -> float:
        nonlocal suspicious
        value = float(text)
        if not math.isfinite(value):
            suspicious = True
        return value

    def integer(text: str) -> int:
        nonlocal suspicious
        # past 4300 digits int() refuses with a message about Python; a stand-in out of
        # range lets the walk name the field instead
        value = int(text) if len(text) <= 40 else INT_MAX + 1
        if not INT_MIN <= value <= INT_MAX:
            suspicious = True
        return value

    def constant(text: str) -> float:
        nonlocal suspicious
        suspicious = True
        return float(text)

    try:
        value = json.loads(body, parse_float=number, parse_int=integer, parse_constant=constant)
    except RecursionError:
        raise InvalidRequest(f"Request decode failed: nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request decode failed: {_first_line(exc)}") from None
    if suspicious or _depth_exceeds(body, max_depth):
        problem = _find_problem(value, max_depth)
        if problem is not None:
            raise InvalidRequest(f"Request decode failed: {problem}")
    return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
