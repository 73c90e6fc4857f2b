"""RE2 regular expressions for patterns that operators write and requests are matched
against (route and L7 permission paths, headers, query parameters).

Consul hands these patterns to Envoy, which compiles them as RE2; using RE2 here gives
the same syntax (no backreferences, no lookaround) and, more importantly, matching in
time linear in the input, so a request path cannot make a sidecar backtrack forever.
The only module that imports `re2`.
"""

from __future__ import annotations

from typing import Any

import re2

__all__ = ["RegexError", "compile_re2"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a bad pattern is the caller's 400, not a line on stderr


class RegexError(ValueError):
    """The pattern is not valid RE2; the message says why."""


def compile_re2(pattern: str) -> Any:
    """A compiled RE2 pattern (``.fullmatch``, ``.search``, ``.match`` as in `re`)."""
    try:
        return re2.compile(pattern, options=_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(f"invalid regular expression {pattern!r}: {reason}") from None
