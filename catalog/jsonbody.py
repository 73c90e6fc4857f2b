"""Strict decoding of untrusted JSON: the one reader every HTTP body goes through.

Python's json module accepts what Go's (and so Consul's) refuses, and what the rest of
mesh cannot carry: `NaN`, `Infinity` and `1e999` (non-finite floats that json.dumps
writes back as invalid JSON and that break integer fields), integers past 64 bits
(msgpack cannot encode them in a Raft command), and nesting deep enough that the C
scanner, or any recursive walk after it, raises RecursionError. Each is refused here
with InvalidRequest naming where in the body it was found, so the HTTP layer answers
400 instead of 500.

Normal bodies pay almost nothing over json.loads: depth is measured on the raw bytes
with C-speed passes, and the walk that finds the offending path only runs when the
parse hooks saw NaN/Infinity, a float that overflowed or an integer of 19 digits or
more, or the bytes nest too deep.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .errors import InvalidRequest

__all__ = ["MAX_DEPTH", "INT_MIN", "INT_MAX", "loads", "describe_path"]

MAX_DEPTH = 64
INT_MIN = -(1 << 63)
INT_MAX = (1 << 64) - 1  # Go's uint64: the widest integer a Consul field holds


def describe_path(path: list[str | int]) -> str:
    """`Service.Weights.Passing` / `Checks[1].OutputMaxSize`; `body` for the top level."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "body"


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def _too_deep(body: bytes, limit: int) -> bool:
    """Whether a (well-formed) document nests deeper than `limit`, without a Python
    loop over its bytes: strings out, brackets only, then strip innermost pairs one
    level per pass. Bodies with few brackets skip it."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    for _ in range(limit):
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if not shorter:
            return False
        if len(shorter) == len(brackets):
            break  # not well-formed: leave it to the walk
        brackets = shorter
    return True


def _find_problem(value: Any, limit: int) -> str | None:
    """Where a value nests past `limit` or holds a number mesh cannot carry, as a
    message naming its path. Iterative, so no depth makes it recurse; a path is a
    chain of (parent, key) links, built into a list only for the message."""
    stack: list[tuple[Any, Any, int]] = [(value, None, 1)]
    if not isinstance(value, dict | list):
        stack = [([value], None, 0)]
    while stack:
        item, link, depth = stack.pop()
        if depth > limit:
            return f"{_path_of(link)}: nested deeper than {limit} levels"
        for key, child in item.items() if type(item) is dict else enumerate(item):
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, (link, key), depth + 1))
            elif kind is float and not math.isfinite(child):
                got = "NaN" if math.isnan(child) else "Infinity (or a number too large)"
                return f"{_path_of((link, key))}: must be a finite number, got {got}"
            elif kind is int and not INT_MIN <= child <= INT_MAX:
                return f"{_path_of((link, key))}: integer out of range"
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
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    suspicious = False

    def integer(text: str) -> int:
        nonlocal suspicious
        if len(text) > 18:  # may be past 64 bits; past 4300 digits int() itself refuses
            suspicious = True
            return int(text) if len(text) <= 40 else INT_MAX + 1
        return int(text)

    def number(text: str) -> float:
        nonlocal suspicious
        value = float(text)
        if value in (math.inf, -math.inf):  # 1e999, or 400 digits
            suspicious = True
        return value

    def constant(text: str) -> float:  # NaN, Infinity, -Infinity
        nonlocal suspicious
        suspicious = True
        return float(text)

    try:
        value = json.loads(raw, parse_int=integer, parse_float=number, parse_constant=constant)
    except RecursionError:
        raise InvalidRequest(f"Request decode failed: nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"Request decode failed: {_first_line(exc)}") from None
    if suspicious or _too_deep(raw, max_depth):
        problem = _find_problem(value, max_depth)
        if problem is not None:
            raise InvalidRequest(f"Request decode failed: {problem}")
    return value


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
