"""Field decoding for Consul request bodies: one JSON object read case- and
underscore-insensitively, integers as Go's int64 takes them, user meta validated.

Consul decodes request JSON case-insensitively and also takes snake_case for many keys,
so lookups here fold case and underscores. User maps (Meta, NodeMeta, TaggedAddresses)
keep their keys exactly. Every problem raises InvalidRequest naming the field, which the
HTTP layer sends back as a 400. Shared by catalog requests and intentions; pure.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .errors import InvalidRequest

__all__ = ["Fields", "as_int", "INT64_MIN", "INT64_MAX", "validate_meta"]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
_META_MAX_PAIRS = 64
_META_KEY_MAX = 128
_META_VALUE_MAX = 512
_META_KEY = re.compile(r"^[a-zA-Z0-9_-]+$")


def _fold(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


class Fields:
    """Case- and underscore-insensitive view of one JSON object."""

    def __init__(self, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise InvalidRequest(f"{what} must be a JSON object")
        self.what = what
        self._data = {_fold(k): v for k, v in data.items() if isinstance(k, str)}

    def has(self, *names: str) -> bool:
        return any(_fold(n) in self._data and self._data[_fold(n)] is not None for n in names)

    def raw(self, *names: str) -> Any:
        for name in names:
            value = self._data.get(_fold(name))
            if value is not None:
                return value
        return None

    def str(self, *names: str, default: str = "") -> str:
        value = self.raw(*names)
        if value is None:
            return default
        if not isinstance(value, str):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a string, got {type(value).__name__}")
        return value

    def int(self, *names: str, default: int = 0, lo: int | None = None, hi: int | None = None) -> int:
        value = self.raw(*names)
        if value is None:
            return default
        return as_int(value, f"{self.what}.{names[0]}", lo=lo, hi=hi)

    def bool(self, *names: str, default: bool = False) -> bool:
        value = self.raw(*names)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a boolean, got {value!r}")
        return value

    def str_list(self, *names: str) -> tuple[str, ...]:
        value = self.raw(*names)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"{self.what}.{names[0]} must be a list of strings")
        return tuple(value)

    def str_map(self, *names: str) -> dict[str, str]:
        value = self.raw(*names)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise InvalidRequest(f"{self.what}.{names[0]} must be an object of strings")
        return dict(value)

    def obj(self, *names: str) -> dict[str, Any]:
        value = self.raw(*names)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InvalidRequest(f"{self.what}.{names[0]} must be an object")
        return value


def as_int(value: Any, what: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer field of a request: a JSON integer, or a float with an integral value
    (JSON has one number type; 8080.0 is 8080). NaN, infinities, fractions, booleans and
    values outside [lo, hi] (by default Go's int64, what Consul's fields hold) raise
    InvalidRequest naming `what`; int() of a non-finite float must never be reached."""
    lo = INT64_MIN if lo is None else lo
    hi = INT64_MAX if hi is None else hi
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{what} must be an integer, got {_short(value)}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise InvalidRequest(f"{what} must be an integer, got {_short(value)}")
    # compared before int(): int(1e300) would be a 1000-bit integer
    if not lo <= value <= hi:
        raise InvalidRequest(f"{what} out of range: {_short(value)} (must be between {lo} and {hi})")
    return int(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_meta(meta: dict[str, str], what: str) -> dict[str, str]:
    if len(meta) > _META_MAX_PAIRS:
        raise InvalidRequest(f"{what}: at most {_META_MAX_PAIRS} meta pairs are allowed")
    for key, value in meta.items():
        if not key or len(key) > _META_KEY_MAX or not _META_KEY.match(key):
            raise InvalidRequest(f"{what}: invalid meta key {key!r}")
        if key.startswith("consul-"):
            raise InvalidRequest(f"{what}: meta key {key!r} uses the reserved prefix 'consul-'")
        if len(value) > _META_VALUE_MAX:
            raise InvalidRequest(f"{what}: meta value for {key!r} is longer than {_META_VALUE_MAX}")
    return meta
