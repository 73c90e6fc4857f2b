"""HTTP match rules, compiled once: path, methods, headers and query parameters. Pure.

One compiler for the two places Consul writes the same rule shapes: L7 intention
permissions (`Permissions[].HTTP`) and service-router routes (`Routes[].Match.HTTP`).
Rules arrive already validated (catalog) as the CamelCase dicts Consul's API returns;
compiling them turns every regex into an RE2 pattern (linear-time matching on hostile
input, mesh.catalog.regex) and every list into a frozenset, so that matching a request
does no parsing and allocates nothing unless a header or query rule needs the lazily
built mapping.

Semantics, as Envoy (which Consul configures) applies them:

- Paths are compared with the normalized path without the query (normalize.py).
  `PathExact` is string equality, `PathPrefix` a string prefix (`/admin` matches
  `/admin/`, `/admin/x` and `/administrator`), `PathRegex` must match the whole path.
  `CaseInsensitive` (routes only) compares paths ignoring case.
- `Methods`: any of them, upper-case.
- `Header[]`: all must match. `Present`, `Exact`, `Prefix`, `Suffix`, `Contains`,
  `Regex` (whole value); no specifier at all means `Present`. A repeated header is
  seen as its values joined with ",". `IgnoreCase` compares the value ignoring case.
  `Invert` negates the result, including for an absent header (an inverted `Exact`
  matches a request without the header): a rule says "not this", and a missing
  header is not this.
- `QueryParam[]` (routes only): all must match, on the first value of the parameter,
  percent-decoded: `Present`, `Exact`, `Regex` (whole value).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mesh.catalog.regex import compile_re2

from .request_view import RequestView, parse_query

__all__ = ["HeaderRule", "QueryRule", "HttpMatch", "compile_http_match", "compile_header_rule"]

_PRESENT, _EXACT, _PREFIX, _SUFFIX, _CONTAINS, _REGEX = range(6)


class HeaderRule:
    """One `Header[]` entry."""

    __slots__ = ("name", "kind", "value", "regex", "invert", "ignore_case")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.name = str(spec["Name"]).lower()
        self.invert = bool(spec.get("Invert"))
        self.ignore_case = bool(spec.get("IgnoreCase"))
        self.regex: Any = None
        self.value = ""
        self.kind = _PRESENT
        for key, kind in (("Exact", _EXACT), ("Prefix", _PREFIX), ("Suffix", _SUFFIX), ("Contains", _CONTAINS)):
            if spec.get(key):
                self.kind, self.value = kind, str(spec[key])
                break
        else:
            if spec.get("Regex"):
                self.kind = _REGEX
                self.regex = compile_re2(("(?i)" if self.ignore_case else "") + str(spec["Regex"]))
        if self.ignore_case:
            self.value = self.value.lower()

    def matches(self, headers: Mapping[str, str]) -> bool:
        value = headers.get(self.name)
        return self._test(value) != self.invert

    def _test(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.kind == _PRESENT:
            return True
        if self.kind == _REGEX:
            return self.regex.fullmatch(value) is not None
        if self.ignore_case:
            value = value.lower()
        if self.kind == _EXACT:
            return value == self.value
        if self.kind == _PREFIX:
            return value.startswith(self.value)
        if self.kind == _SUFFIX:
            return value.endswith(self.value)
        return self.value in value


def compile_header_rule(spec: Mapping[str, Any]) -> HeaderRule:
    """A `Header[]` entry, compiled."""
    return HeaderRule(spec)


class QueryRule:
    """One `QueryParam[]` entry (service-router)."""

    __slots__ = ("name", "exact", "regex")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.name = str(spec["Name"])
        self.exact: str | None = str(spec["Exact"]) if spec.get("Exact") else None
        self.regex: Any = compile_re2(str(spec["Regex"])) if spec.get("Regex") and self.exact is None else None

    def matches(self, params: Mapping[str, list[str]]) -> bool:
        values = params.get(self.name)
        if not values:
            return False
        if self.exact is not None:
            return values[0] == self.exact
        if self.regex is not None:
            return self.regex.fullmatch(values[0]) is not None
        return True


class HttpMatch:
    """A compiled `HTTP` match block; `matches(view)` is the per-request test."""

    __slots__ = ("exact", "prefix", "regex", "case_insensitive", "methods", "headers", "query", "description")

    def __init__(self, http: Mapping[str, Any] | None) -> None:
        http = http or {}
        self.case_insensitive = bool(http.get("CaseInsensitive"))
        fold: Callable[[str], str] = str.lower if self.case_insensitive else str
        self.exact: str | None = fold(str(http["PathExact"])) if http.get("PathExact") else None
        self.prefix: str | None = fold(str(http["PathPrefix"])) if http.get("PathPrefix") else None
        self.regex: Any = None
        if http.get("PathRegex"):
            self.regex = compile_re2(("(?i)" if self.case_insensitive else "") + str(http["PathRegex"]))
        methods = http.get("Methods") or ()
        self.methods: frozenset[str] | None = frozenset(str(m).upper() for m in methods) or None
        self.headers: tuple[HeaderRule, ...] = tuple(HeaderRule(h) for h in http.get("Header") or ())
        self.query: tuple[QueryRule, ...] = tuple(QueryRule(q) for q in http.get("QueryParam") or ())
        self.description = _describe(http)

    def matches(self, view: RequestView, params: Mapping[str, list[str]] | None = None) -> bool:
        """Whether the request meets every rule; `params` is the parsed query when the
        caller already has it (a router parses it once for all its routes)."""
        if self.exact is not None or self.prefix is not None:
            path = view.path.lower() if self.case_insensitive else view.path
            if self.exact is not None and path != self.exact:
                return False
            if self.prefix is not None and not path.startswith(self.prefix):
                return False
        if self.regex is not None and self.regex.fullmatch(view.path) is None:
            return False
        if self.methods is not None and view.method not in self.methods:
            return False
        if self.headers:
            headers = view.headers()
            for rule in self.headers:
                if not rule.matches(headers):
                    return False
        if self.query:
            if params is None:
                params = parse_query(view.query)
            for qrule in self.query:
                if not qrule.matches(params):
                    return False
        return True


def compile_http_match(http: Mapping[str, Any] | None) -> HttpMatch:
    """An `HTTP` block (intention permission or route match), compiled; None or {}
    matches every request."""
    return HttpMatch(http)


def _describe(http: Mapping[str, Any]) -> str:
    """A short label for logs ("PathPrefix=/admin GET,POST"), built once."""
    parts = [f"{k}={http[k]}" for k in ("PathExact", "PathPrefix", "PathRegex") if http.get(k)]
    if http.get("Methods"):
        parts.append(",".join(str(m).upper() for m in http["Methods"]))
    if http.get("Header"):
        parts.append("headers=" + ",".join(str(h.get("Name", "")).lower() for h in http["Header"]))
    return " ".join(parts) or "any request"
