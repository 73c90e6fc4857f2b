"""The strict reader of config entry bodies: Consul's decoder rules, in one place.

Consul decodes a config entry with mapstructure: keys match field names whatever their
case, with or without underscores (`LocalConnectTimeoutMs`, `local_connect_timeout_ms`),
a list holding one object stands for that object (how an HCL block arrives), and every
key left unread is refused as `invalid config key "<path>"`. `Obj` does the same, so
the kinds in catalog.config_entries only say which fields they read; a body with a key
nobody read fails in `Obj.finish()` before anything is stored.

Every other problem raises InvalidRequest naming the field by its path in the entry
(`Routes[0].Destination.RequestTimeout`). User maps (Meta, Config, header maps) keep
their keys exactly. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from .durations import parse_duration
from .errors import InvalidRequest
from .fields import as_int, validate_meta

__all__ = ["Obj", "DECODE_FAILED", "is_empty", "unblock", "regex", "path_match", "header_matches", "http_methods",
           "header_modifiers", "service_ref", "check_protocol"]

DECODE_FAILED = "Request decoding failed"
# Consul CE refuses these keys; mesh takes them when they name the only namespace or
# partition there is, so a file written for a default-namespace Consul still applies
_ENTERPRISE = {"namespace": "namespaces", "partition": "partitions"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_PROTOCOLS = ("tcp", "http")
_LATER_PROTOCOLS = ("http2", "grpc")


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def unblock(value: Any) -> Any:
    """A list holding exactly one object is that object (Consul's weak decode from a
    slice): HCL parsers give every block as a list of one map."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        return value[0]
    return value


def is_empty(value: Any) -> bool:
    """Go's zero value, recursively: what Consul writes back for a field never set
    (`"MeshGateway": {}`, `"Mode": ""`), so an entry read back can be written again."""
    if value is None or value is False or value == "" or (isinstance(value, int | float) and value == 0):
        return True
    if isinstance(value, dict):
        return all(is_empty(v) for v in value.values())
    if isinstance(value, list):
        return not value
    return False


class Obj:
    """One object of a config entry body, read field by field; `finish()` refuses what
    was not read."""

    def __init__(self, data: Any, path: str = "") -> None:
        data = unblock(data)
        if not isinstance(data, dict):
            raise InvalidRequest(f"{path or 'body'} must be an object")
        self.path = path
        self._items: dict[str, tuple[str, Any]] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"{path or 'body'}: keys must be strings")
            folded = _fold(key)
            if folded in self._items:
                raise InvalidRequest(f"{DECODE_FAILED}: {self.name(key)} is given more than once")
            self._items[folded] = (key, value)
        self._read: set[str] = set()

    def name(self, field: str) -> str:
        """`field`'s path in the entry, for messages."""
        return f"{self.path}.{field}" if self.path else field

    def raw(self, field: str) -> Any:
        """The value of `field` (None when absent or null), marked as read."""
        folded = _fold(field)
        self._read.add(folded)
        item = self._items.get(folded)
        return None if item is None else item[1]

    def skip(self, *fields: str) -> None:
        """Fields Consul's decoder takes and ignores (read-only ones such as CreateIndex)."""
        for field in fields:
            self.raw(field)

    def str(self, field: str) -> str:
        value = self.raw(field)
        if value is None:
            return ""
        if not isinstance(value, str):
            raise InvalidRequest(f"{self.name(field)} must be a string, got {_type(value)}")
        return value

    def bool(self, field: str) -> bool:
        value = self.raw(field)
        if value is None:
            return False
        if not isinstance(value, bool):
            raise InvalidRequest(f"{self.name(field)} must be a boolean, got {_type(value)}")
        return value

    def int(self, field: str, *, lo: int = 0, hi: int = (1 << 31) - 1) -> int:
        value = self.raw(field)
        if value is None:
            return 0
        return as_int(value, self.name(field), lo=lo, hi=hi)

    def duration(self, field: str) -> float:
        """Seconds in a Go duration string ("5s", "1m30s"); a bare number is refused, as
        Consul's JSON decoder refuses it."""
        value = self.raw(field)
        if value is None or value == "":
            return 0.0
        if not isinstance(value, str):
            raise InvalidRequest(f"{self.name(field)} must be a duration string such as \"5s\", got {_type(value)}")
        return parse_duration(value, what=self.name(field))

    def str_list(self, field: str) -> list[str]:
        value = self.raw(field)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{self.name(field)} must be a list of strings")
        return list(value)

    def str_map(self, field: str) -> dict[str, str]:
        value = unblock(self.raw(field))
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise InvalidRequest(f"{self.name(field)} must be an object of strings")
        return dict(value)

    def meta(self, field: str = "Meta") -> dict[str, str]:
        return validate_meta(self.str_map(field), self.name(field))

    def obj(self, field: str) -> Obj | None:
        value = self.raw(field)
        if value is None:
            return None
        return Obj(value, self.name(field))

    def objs(self, field: str) -> Iterator[Obj]:
        """The objects of a list field (a lone object, as HCL gives one block, counts as a list of one)."""
        value = self.raw(field)
        if value is None:
            return iter(())
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            raise InvalidRequest(f"{self.name(field)} must be a list of objects")
        return (Obj(item, f"{self.name(field)}[{i}]") for i, item in enumerate(value))

    def unsupported(self, *fields: str) -> None:
        """Consul fields mesh does not implement: taken when empty (Consul writes them
        back as `{}` or `""`), refused by name otherwise."""
        for field in fields:
            if not is_empty(self.raw(field)):
                raise InvalidRequest(f"{self.name(field)} is not supported by mesh")

    def enterprise(self) -> None:
        """Namespace and Partition: only the default ones (or none) exist here."""
        for field, what in _ENTERPRISE.items():
            value = self.raw(field)
            if value not in (None, "", "default"):
                raise InvalidRequest(
                    f'{DECODE_FAILED}: invalid config key "{self.name(field.capitalize())}", '
                    f"{what} are a consul enterprise feature")

    def finish(self) -> None:
        """Refuse every key nobody read, as Consul does, naming each by its path."""
        unknown = [key for folded, (key, _) in self._items.items() if folded not in self._read]
        if unknown:
            raise InvalidRequest(f"{DECODE_FAILED}: " + "; ".join(
                f'invalid config key "{self.name(key)}"' for key in unknown))


# ---- values several kinds share -----------------------------------------------------


def service_ref(value: str, what: str) -> str:
    """A service name an entry names (its own, or a destination): required, and spelled
    as catalog service names are."""
    if not value:
        raise InvalidRequest(f"{what} is required")
    if not _NAME.match(value):
        raise InvalidRequest(f"{what}: invalid service name {value!r}")
    return value


def check_protocol(value: str, what: str) -> str:
    """`tcp` or `http` (lower-cased, as Consul stores it); http2 and grpc come later."""
    value = value.lower()
    if value in _LATER_PROTOCOLS:
        raise InvalidRequest(f"{what}: protocol {value!r} is not supported yet (mesh proxies speak tcp and http)")
    if value not in _PROTOCOLS:
        raise InvalidRequest(f"{what}: unknown protocol {value!r} (must be tcp or http)")
    return value


def header_modifiers(mods: Obj) -> dict[str, Any]:
    """`RequestHeaders`/`ResponseHeaders` of a route destination or a split: `Add` and
    `Set` maps, a `Remove` list."""
    out: dict[str, Any] = {}
    for field in ("Add", "Set"):
        values = mods.str_map(field)
        if any(not k for k in values):
            raise InvalidRequest(f"{mods.name(field)}: header names must not be empty")
        if values:
            out[field] = values
    remove = mods.str_list("Remove")
    if remove:
        out["Remove"] = remove
    mods.finish()
    return out


# ---- HTTP matchers, as service-router routes and L7 intention permissions take them ----

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")


def regex(value: str, what: str) -> str:
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidRequest(f"{what}: invalid regular expression: {exc}") from None
    return value


def path_match(http: Obj) -> dict[str, Any]:
    """PathExact | PathPrefix | PathRegex, at most one, as routers and L7 permissions take them."""
    out: dict[str, Any] = {}
    for field in ("PathExact", "PathPrefix", "PathRegex"):
        value = http.str(field)
        if not value:
            continue
        if field == "PathRegex":
            regex(value, http.name(field))
        elif not value.startswith("/"):
            raise InvalidRequest(f"{http.name(field)} doesn't start with '/': \"{value}\"")
        out[field] = value
    if len(out) > 1:
        raise InvalidRequest(f"{http.path} should only contain at most one of "
                             "PathExact, PathPrefix, or PathRegex")
    return out


def header_matches(http: Obj, field: str, ops: tuple[str, ...]) -> list[dict[str, Any]]:
    """`Header[]` (ops Present, Exact, Prefix, Suffix, Regex; and Invert) or `QueryParam[]`
    (Present, Exact, Regex): a Name and exactly one op each."""
    out = []
    for item in http.objs(field):
        name = item.str("Name")
        rule: dict[str, Any] = {"Name": name}
        if item.bool("Present"):
            rule["Present"] = True
        for op in ops[1:]:
            value = item.str(op)
            if value:
                rule[op] = regex(value, item.name(op)) if op == "Regex" else value
        invert = field == "Header" and item.bool("Invert")
        item.finish()
        if not name:
            raise InvalidRequest(f"{item.name('Name')} is required")
        if len(rule) != 2:
            raise InvalidRequest(f"{item.path} should only contain one of {', '.join(ops[:-1])}, or {ops[-1]}")
        if invert:
            rule["Invert"] = True
        out.append(rule)
    return out


def http_methods(http: Obj) -> list[str]:
    methods = [m.upper() for m in http.str_list("Methods")]
    for m in methods:
        if m not in _METHODS:
            raise InvalidRequest(f'{http.name("Methods")} contains an invalid method "{m}"')
    if len(set(methods)) != len(methods):
        raise InvalidRequest(f"{http.name('Methods')} contains a method more than once")
    return methods


def _type(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
