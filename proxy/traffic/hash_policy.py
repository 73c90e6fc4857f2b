"""What a request is hashed on for `ring_hash` and `maglev` (a service-resolver's
`LoadBalancer.HashPolicies`), with Envoy's semantics. Pure: randomness comes in.

Policies are evaluated in order. Each one that finds its value (a header, a cookie, a
query parameter, the client's address) adds it to the hash as Envoy combines them,
`hash = rotl64(hash, 1) ^ new`, so the order of policies matters and two values never
cancel out. A `Terminal` policy that found its value ends the evaluation: later policies
are fallbacks for when it found nothing. When no policy finds anything there is no key,
and the balancer picks at random, as Envoy does.

A cookie policy with a TTL (or a session cookie) makes the affinity itself: when the
cookie is absent it draws a value, hashes on it and hands back a `Set-Cookie` for the
response, so the client's next request carries it and lands on the same instance.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .fields import Section
from .hashing import hash64, rotl64

__all__ = ["FIELDS", "CookieConfig", "HashPolicy", "HashResult", "request_hash", "cookie_value"]

FIELDS = ("header", "cookie", "query_parameter")

Lookup = Callable[[str], str | None]


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """How a cookie policy makes its cookie when the request has none."""

    session: bool = False  # a cookie without Max-Age
    ttl: float = 0.0  # seconds; 0 and not session: never generated (Envoy's rule)
    path: str = ""

    @property
    def generates(self) -> bool:
        return self.session or self.ttl > 0


@dataclass(frozen=True, slots=True)
class HashPolicy:
    """One entry of `HashPolicies`, validated as Consul validates it."""

    field: str = ""  # one of FIELDS, or "" (with source_ip, or a policy that never matches)
    field_value: str = ""  # the header, cookie or query parameter name
    cookie: CookieConfig | None = None
    source_ip: bool = False
    terminal: bool = False

    @classmethod
    def parse(cls, section: Section | None) -> HashPolicy:
        if section is None:
            return cls()
        field = section.text("Field")
        value = section.text("FieldValue")
        source_ip = section.boolean("SourceIP")
        if field and field not in FIELDS:
            raise section.error("Field", f"must be one of {', '.join(FIELDS)}, got {field!r}")
        if source_ip and field:
            raise section.error("SourceIP", f"cannot hash both the source address and a {field}")
        if source_ip and value:
            raise section.error("FieldValue", "cannot be set when hashing SourceIP")
        if field and not value:
            raise section.error("FieldValue", f"is required with Field {field!r}")
        if value and not field:
            raise section.error("Field", "is required with FieldValue")
        cookie = None
        config = section.section("CookieConfig")
        if config is not None:
            if field != "cookie":
                raise section.error("CookieConfig", f"only applies to Field \"cookie\", not {field!r}")
            cookie = CookieConfig(config.boolean("Session"), config.duration("TTL", 0.0), config.text("Path"))
            if cookie.session and cookie.ttl:
                raise config.error("TTL", "a session cookie cannot have a TTL")
        return cls(field, value, cookie, source_ip, section.boolean("Terminal"))


@dataclass(frozen=True, slots=True)
class HashResult:
    """The request's hash key (None: nothing to hash on) and, when a cookie policy made
    one, the `Set-Cookie` value to add to the response."""

    key: int | None
    set_cookie: str | None = None


def request_hash(
    policies: Iterable[HashPolicy],
    *,
    header: Lookup,
    cookie: Lookup,
    query: Lookup,
    source_ip: str,
    rng: random.Random,
) -> HashResult:
    """The hash of a request under `policies`. `header` is asked with lower-case names
    (repeated headers joined with ","), `cookie` and `query` with the configured
    name; each returns None when the request has no such value."""
    key: int | None = None
    set_cookie: str | None = None
    for policy in policies:
        value, made = _value(policy, header, cookie, query, source_ip, rng)
        if value is None:
            continue
        new = hash64(value)
        key = new if key is None else rotl64(key, 1) ^ new
        if set_cookie is None:
            set_cookie = made
        if policy.terminal:
            break
    return HashResult(key, set_cookie)


def _value(policy: HashPolicy, header: Lookup, cookie: Lookup, query: Lookup, source_ip: str,
           rng: random.Random) -> tuple[str | None, str | None]:
    if policy.source_ip:
        return (source_ip or None), None
    if policy.field == "header":
        return header(policy.field_value.lower()), None
    if policy.field == "query_parameter":
        return query(policy.field_value), None
    if policy.field != "cookie":
        return None, None
    value = cookie(policy.field_value)
    if value:  # Envoy takes an empty cookie as a missing one
        return value, None
    config = policy.cookie
    if config is None or not config.generates:
        return None, None
    made = f"{rng.getrandbits(64):016x}"
    return made, _set_cookie(policy.field_value, made, config)


def _set_cookie(name: str, value: str, config: CookieConfig) -> str:
    parts = [f"{name}={value}"]
    if config.path:
        parts.append(f"Path={config.path}")
    if not config.session:
        parts.append(f"Max-Age={max(1, math.ceil(config.ttl))}")
    parts.append("HttpOnly")
    return "; ".join(parts)


def cookie_value(cookie_header: str, name: str) -> str | None:
    """The value of cookie `name` in a Cookie header, without surrounding quotes; None
    when absent. Splits on "," as well as ";": a request's several Cookie headers arrive
    joined with "," (HTTP/2 sends one per cookie), and a cookie value cannot hold a comma
    (RFC 6265 §4.1.1)."""
    for part in cookie_header.replace(",", ";").split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None
