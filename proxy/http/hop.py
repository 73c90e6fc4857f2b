"""Hop-by-hop headers and message framing checks (RFC 9110 §7.6.1, RFC 9112 §6). Pure.

A proxy forwards end-to-end headers and drops the ones that describe only the
connection it received the message on: `Connection`, `Keep-Alive`,
`Proxy-Connection`, `TE`, `Trailer`, `Upgrade` (kept when the engine passes an upgrade
through, with `Connection: upgrade` so the next hop sees it) and every name the
`Connection` header lists. `Content-Length`, `Transfer-Encoding` and `Host` are never
dropped, even when listed in `Connection` (a trick to strip a message of its framing
or its authority): the framing code owns the first two.

Request smuggling happens when two parsers frame one message differently; we refuse,
with a 400, every request whose framing could be read two ways (RFC 9112 §6.3):
both `Content-Length` and `Transfer-Encoding`; several `Content-Length` values that
differ (equal repeats collapse to one); a `Content-Length` that is not digits; a
`Transfer-Encoding` whose last coding is not `chunked`, that has `chunked` twice,
that names a coding we do not know, or that comes with HTTP/1.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["HOP_BY_HOP", "BadRequest", "Framing", "hop_by_hop_names", "strip_hop_by_hop", "check_framing"]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"})
_PROTECTED = frozenset({"content-length", "transfer-encoding", "host"})
_CODINGS = frozenset({"chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress"})
_MAX_CONTENT_LENGTH_DIGITS = 19  # beyond int64: no body is that large

Header = tuple[str, str]


class BadRequest(ValueError):
    """A request the sidecar refuses with 400 before it reaches any app."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def hop_by_hop_names(headers: Iterable[Header], upgrade: bool = False) -> frozenset[str]:
    """Lower-case names to drop when forwarding these headers."""
    names = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    if upgrade:
        names.discard("upgrade")
    return frozenset(names - _PROTECTED)


def strip_hop_by_hop(headers: list[Header], upgrade: bool = False) -> list[Header]:
    """The headers to forward: hop-by-hop ones removed; with `upgrade`, `Upgrade` kept
    and `Connection: upgrade` added."""
    drop = hop_by_hop_names(headers, upgrade)
    out = [pair for pair in headers if pair[0].lower() not in drop]
    if upgrade:
        out.append(("Connection", "upgrade"))
    return out


@dataclass(frozen=True, slots=True)
class Framing:
    """How the body of a request is delimited: `chunked`, else `content_length` bytes
    (None and not chunked: no body)."""

    content_length: int | None
    chunked: bool


def check_framing(headers: Iterable[Header], http_version: str = "1.1") -> Framing:
    """The body framing of a request, or BadRequest when it is ambiguous."""
    lengths: list[str] = []
    codings: list[str] = []
    for name, value in headers:
        lname = name.lower()
        if lname == "content-length":
            lengths.extend(v.strip() for v in value.split(","))
        elif lname == "transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(","))
    if lengths and codings:
        raise BadRequest("both Content-Length and Transfer-Encoding")
    if codings:
        if http_version == "1.0":
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        if any(not c for c in codings) or not set(codings) <= _CODINGS:
            raise BadRequest("unknown transfer coding")
        if codings[-1] != "chunked":
            raise BadRequest("Transfer-Encoding does not end with chunked")
        if codings.count("chunked") > 1:
            raise BadRequest("chunked applied more than once")
        return Framing(None, True)
    if not lengths:
        return Framing(None, False)
    if any(not v.isascii() or not v.isdigit() or len(v) > _MAX_CONTENT_LENGTH_DIGITS for v in lengths):
        raise BadRequest("invalid Content-Length")
    if len({int(v) for v in lengths}) > 1:
        raise BadRequest("differing Content-Length values")
    return Framing(int(lengths[0]), False)
