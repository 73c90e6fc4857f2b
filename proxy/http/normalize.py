"""Request-target normalization: one spelling per path, before anything looks at it. Pure.

Why: authorization and routing compare paths as strings. With `/admin` denied, every
other spelling of `/admin` that the application would resolve to the same resource
(`/x/../admin`, `//admin`, `/%61dmin`, `/./admin`) must be denied too, so the checks
run on one canonical form, and that same form is what the application receives (the
engine forwards the normalized path, as Envoy does with `normalize_path` and
`merge_slashes`, our reference).

The rules, in order:

1. At most `MAX_TARGET` (8 KiB) bytes; no NUL, no control characters (0x00-0x1F,
   0x7F), no space, no `#` (a fragment never travels in a request): 400.
2. The form: origin-form `/path?query`; `*` (for OPTIONS only, when the method is
   given); absolute-form `http://host/path?query` or `https://...`, of which only the
   path and query are kept (an empty path is `/`). Anything else: 400.
3. The query (after the first `?`) is split off and returned raw, unchanged.
4. Percent escapes must be `%` and two hex digits (`%zz`, `%4` are a 400). An escape
   of an UNRESERVED character (RFC 3986 §2.3: `A-Z a-z 0-9 - . _ ~`) is decoded
   (`%61` → `a`, `%2e` → `.`); every other escape stays encoded with upper-case hex
   (`%2f` → `%2F`, `%5c` → `%5C`): an encoded slash is data, not a separator, and
   decoding it would change which resource is meant. Decoding happens once (`%2561`
   stays `%2561`, never `a`), so normalizing twice changes nothing.
5. A raw backslash is a slash (Envoy canonicalizes with Chromium's URL library, which
   does the same; some application servers treat `\\` as `/`, so `/x\\..\\admin` must
   not slip past a `/admin` rule). Bytes outside printable ASCII (UTF-8 paths) and the
   printable characters a path may not hold raw (`" < > ^ ` { | }`) are
   percent-encoded, upper-case.
6. Repeated slashes are merged (`//admin` → `/admin`), then dot segments are removed
   as RFC 3986 §5.2.4 does (`/x/../admin` → `/admin`, `/./admin` → `/admin`, `..`
   above the root stays at the root). A trailing slash is kept (`/admin/` is not
   `/admin`: prefix rules decide whether that matters, as they do in Envoy).

The output starts with `/` (or is `*`), contains no `//`, no `.`/`..` segment, no
escape of an unreserved character and no lower-case hex; normalizing it again gives
it back unchanged (tests/unit/proxy/http/test_normalize.py holds these as properties).
"""

from __future__ import annotations

import re

__all__ = ["MAX_TARGET", "BadRequestTarget", "normalize_path", "split_target"]

MAX_TARGET = 8192

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# allowed raw in a path besides unreserved: sub-delims, ":" "@" and "/" (RFC 3986 pchar)
_RAW_OK = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
# already canonical: no escapes, no backslash, no characters to encode; "//" and "/."
# (any dot segment starts with one) are checked separately
_CLEAN = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f#]")
_ABSOLUTE = re.compile(r"(?i)https?://[^/?]*")


class BadRequestTarget(ValueError):
    """The request target cannot be normalized: the engine answers 400 with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def split_target(raw_target: bytes | str, method: str | None = None) -> tuple[str, str]:
    """(normalized path, raw query without '?') of a request target; `method`, when
    given, allows `*` only for OPTIONS."""
    if isinstance(raw_target, bytes):
        if len(raw_target) > MAX_TARGET:
            raise BadRequestTarget("request target too long")
        target = raw_target.decode("latin-1")
    else:
        target = raw_target
        if len(target) > MAX_TARGET:
            raise BadRequestTarget("request target too long")
        if not target.isascii():
            target = target.encode("utf-8").decode("latin-1")
            if len(target) > MAX_TARGET:
                raise BadRequestTarget("request target too long")
    if not target:
        raise BadRequestTarget("empty request target")
    if _FORBIDDEN.search(target):
        raise BadRequestTarget("control character, space or fragment in request target")
    path, sep, query = target.partition("?")
    if path == "*" and not sep:
        if method is not None and method != "OPTIONS":
            raise BadRequestTarget("'*' is a request target for OPTIONS only")
        return "*", ""
    if not path.startswith("/"):
        absolute = _ABSOLUTE.match(path)
        if absolute is None:
            raise BadRequestTarget("request target must be a path or an absolute http URL")
        path = path[absolute.end():] or "/"
    if _CLEAN.fullmatch(path) and "//" not in path and "/." not in path:
        return path, query  # the common case: already canonical, nothing to build
    return _normalize(path), query


def normalize_path(raw_target: bytes | str, method: str | None = None) -> str:
    """The canonical path of a request target (query dropped); see the module rules."""
    return split_target(raw_target, method)[0]


def _normalize(path: str) -> str:
    out: list[str] = []
    i, n = 0, len(path)
    while i < n:
        ch = path[i]
        if ch == "%":
            hexpair = path[i + 1:i + 3]
            if len(hexpair) != 2 or not (hexpair[0] in _HEX and hexpair[1] in _HEX):
                raise BadRequestTarget("invalid percent escape in request target")
            decoded = chr(int(hexpair, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + hexpair.upper())
            i += 3
            continue
        if ch == "\\":
            out.append("/")
        elif ch in _RAW_OK:
            out.append(ch)
        else:
            out.append(f"%{ord(ch):02X}")
        i += 1
    return _remove_dot_segments("".join(out))


def _remove_dot_segments(path: str) -> str:
    """Merge slashes and resolve `.`/`..` (RFC 3986 §5.2.4), keeping a trailing slash."""
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    if not kept:
        return "/"
    trailing = segments[-1] in ("", ".", "..")
    return "/" + "/".join(kept) + ("/" if trailing else "")
