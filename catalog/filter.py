"""The `?filter=` expressions of Consul's API (go-bexpr), for the forms people use.

Grammar (case-sensitive keywords as in bexpr):

    expr      := or
    or        := and ("or" and)*
    and       := unary ("and" unary)*
    unary     := "not" unary | "(" expr ")" | match
    match     := selector ("==" | "!=") value
               | selector ["not"] ("contains" | "matches") value
               | value ["not"] "in" selector
               | selector "is" ["not"] "empty"
    selector  := Name ("." Name)*          e.g. ServiceMeta.version, Service.Tags, NodeMeta.env
    value     := "quoted" | `raw` | number | true | false | bare-word

Expressions are evaluated against the JSON object a row renders to. Matching a
selector that does not exist is false (not an error), like bexpr with missing map keys.

A filter comes from any HTTP client, so parsing and evaluation are bounded: nesting
(parentheses and `not`) deeper than MAX_DEPTH is refused with InvalidRequest (the
parser and the predicates it builds recurse once per level), and chains of `and`/`or`
evaluate as one flat list, so a thousand `or`s cost no recursion at all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import InvalidRequest

__all__ = ["compile_filter", "Predicate", "MAX_DEPTH"]

MAX_DEPTH = 32

Predicate = Callable[[Any], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>"(?:[^"\\]|\\.)*")
      | (?P<raw>`[^`]*`)
      | (?P<op>==|!=|\(|\))
      | (?P<word>[A-Za-z0-9_./:\-\[\]]+)
    )""",
    re.VERBOSE,
)
_MISSING = object()


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidRequest(f"Failed to create boolean expression evaluator: unexpected input at {text[pos:]!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            try:
                value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
            except UnicodeDecodeError as exc:
                raise InvalidRequest(f"Failed to create boolean expression evaluator: bad escape in {value[:60]!r}: "
                                     f"{exc.reason}") from None
            kind = "value"
        elif kind == "raw":
            value = value[1:-1]
            kind = "value"
        tokens.append((kind, value))
    return tokens


def _select(obj: Any, path: list[str]) -> Any:
    for part in path:
        if isinstance(obj, dict):
            if part in obj:
                obj = obj[part]
            else:
                # bexpr matches struct fields case-insensitively
                lowered = {k.lower(): k for k in obj if isinstance(k, str)}
                if part.lower() not in lowered:
                    return _MISSING
                obj = obj[lowered[part.lower()]]
        else:
            return _MISSING
    return obj


def _coerce_equal(actual: Any, literal: str) -> bool:
    if actual is _MISSING or actual is None:
        return False
    if isinstance(actual, bool):
        return literal.lower() == str(actual).lower()
    if isinstance(actual, int | float):
        try:
            return float(literal) == float(actual)
        except ValueError:
            return False
    return str(actual) == literal


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.depth = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise InvalidRequest("Failed to create boolean expression evaluator: unexpected end of expression")
        self.pos += 1
        return tok

    def word_is(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok[0] == "word" and tok[1] == word

    def parse(self) -> Predicate:
        pred = self.parse_or()
        if self.peek() is not None:
            raise InvalidRequest(f"Failed to create boolean expression evaluator: unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def parse_or(self) -> Predicate:
        terms = [self.parse_and()]
        while self.word_is("or"):
            self.take()
            terms.append(self.parse_and())
        if len(terms) == 1:
            return terms[0]
        return lambda o: any(term(o) for term in terms)

    def parse_and(self) -> Predicate:
        terms = [self.parse_unary()]
        while self.word_is("and"):
            self.take()
            terms.append(self.parse_unary())
        if len(terms) == 1:
            return terms[0]
        return lambda o: all(term(o) for term in terms)

    def parse_unary(self) -> Predicate:
        tok = self.peek()
        if tok not in (("word", "not"), ("op", "(")):
            return self.parse_match()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise InvalidRequest(f"Failed to create boolean expression evaluator: filter nested deeper than {MAX_DEPTH} "
                                 "levels of parentheses or 'not'")
        self.take()
        if tok == ("word", "not"):
            inner = self.parse_unary()
            self.depth -= 1
            return lambda o: not inner(o)
        inner = self.parse_or()
        if self.take() != ("op", ")"):
            raise InvalidRequest("Failed to create boolean expression evaluator: missing ')'")
        self.depth -= 1
        return inner

    def parse_match(self) -> Predicate:
        first = self.take()
        # value [not] in selector
        if self.word_is("in") or (self.word_is("not") and self.word_is("in", 1)):
            negate = self.word_is("not")
            if negate:
                self.take()
            self.take()
            path = self._path(self.take())
            literal = first[1]

            def contains_value(o: Any) -> bool:
                coll = _select(o, path)
                if isinstance(coll, list | tuple):
                    found = any(_coerce_equal(v, literal) for v in coll)
                elif isinstance(coll, dict):
                    found = literal in coll
                elif isinstance(coll, str):
                    found = literal in coll
                else:
                    found = False
                return found != negate

            return contains_value
        path = self._path(first)
        op = self.take()
        if op in (("op", "=="), ("op", "!=")):
            literal = self.take()[1]
            negate = op[1] == "!="
            return lambda o: _coerce_equal(_select(o, path), literal) != negate
        if op == ("word", "is"):
            negate = False
            if self.word_is("not"):
                self.take()
                negate = True
            if self.take() != ("word", "empty"):
                raise InvalidRequest("Failed to create boolean expression evaluator: expected 'empty'")

            def is_empty(o: Any) -> bool:
                v = _select(o, path)
                empty = v is _MISSING or v is None or (hasattr(v, "__len__") and len(v) == 0)
                return empty != negate

            return is_empty
        negate = False
        if op == ("word", "not"):
            negate = True
            op = self.take()
        if op == ("word", "contains"):
            literal = self.take()[1]

            def contains(o: Any) -> bool:
                v = _select(o, path)
                if isinstance(v, list | tuple):
                    found = any(_coerce_equal(x, literal) for x in v)
                elif isinstance(v, dict):
                    found = literal in v
                elif isinstance(v, str):
                    found = literal in v
                else:
                    found = False
                return found != negate

            return contains
        if op == ("word", "matches"):
            pattern = self.take()[1]
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise InvalidRequest(f"Failed to create boolean expression evaluator: bad regex {pattern!r}: {exc}") from None

            def matches(o: Any) -> bool:
                v = _select(o, path)
                found = isinstance(v, str) and regex.search(v) is not None
                return found != negate

            return matches
        raise InvalidRequest(f"Failed to create boolean expression evaluator: unknown operator {op[1]!r}")

    @staticmethod
    def _path(tok: tuple[str, str]) -> list[str]:
        if tok[0] != "word":
            raise InvalidRequest(f"Failed to create boolean expression evaluator: expected a selector, got {tok[1]!r}")
        return [p for p in tok[1].split(".") if p]


def compile_filter(text: str | None) -> Predicate | None:
    """A predicate for `?filter=`, or None when there is no filter."""
    if text is None or not text.strip():
        return None
    return _Parser(text).parse()
