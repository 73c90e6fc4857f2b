"""The read-only view of one HTTP request that the decision modules look at. Pure.

The engine builds one `RequestView` per request from what the parser gave it. The
header mapping is built only when a rule asks for it (`headers()`), and the query only
when a rule reads a parameter (`parse_query`), so a request that meets no header or
query rule costs no dict at all: most requests on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

__all__ = ["RequestView", "parse_query", "lazy_headers", "headers_mapping"]


@dataclass(slots=True)
class RequestView:
    """What the decisions see of a request."""

    method: str  # upper-case, as received
    path: str  # normalized (normalize.split_target), without the query
    query: str  # raw query string without '?', may be ""
    headers: Callable[[], Mapping[str, str]]  # lower-case names, repeated ones joined with ","


def parse_query(query: str) -> dict[str, list[str]]:
    """Query parameters, percent-decoded ('+' as a space, as HTML forms and Go's
    url.ParseQuery read it), each name with its values in order. A name without '='
    has the value "" (so a Present rule sees it). Invalid UTF-8 decodes to U+FFFD
    instead of failing: a rule cannot match it either way."""
    out: dict[str, list[str]] = {}
    if not query:
        return out
    for name, value in parse_qsl(query, keep_blank_values=True, errors="replace"):
        out.setdefault(name, []).append(value)
    return out


def headers_mapping(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """Header pairs as the mapping rules read: lower-case names, values of a repeated
    header joined with "," (as Envoy joins them for matching)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        value = value.strip(" \t")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


def lazy_headers(pairs: Iterable[tuple[bytes | str, bytes | str]]) -> Callable[[], Mapping[str, str]]:
    """A `RequestView.headers` that builds the mapping on first use and keeps it."""
    cache: list[dict[str, str]] = []

    def headers() -> Mapping[str, str]:
        if not cache:
            cache.append(headers_mapping(pairs))
        return cache[0]

    return headers
