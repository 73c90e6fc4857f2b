"""Reading traffic settings out of raw config mappings. Pure.

Consul's config entries arrive as JSON in CamelCase (`LoadBalancer`, `RateLimits`), a
proxy's upstream config as HCL or JSON in snake_case (`passive_health_check`,
`limits`), and operators mix both. So keys are compared folded (case, `_` and `-`
ignored), and an HCL block given as a list of one object is that object. Unknown keys
are ignored, as Consul's decoder of upstream config ignores them.

Every problem is a ValueError whose message starts with the field's path
(`passive_health_check.max_failures: must be a whole number ≥ 0, got -1`): the operator
who wrote the typo needs to find it, and a bare "invalid value" does not say where.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mesh.catalog.config_decode import unblock
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest

__all__ = ["Section", "fold"]


def fold(key: str) -> str:
    """The form keys are compared in: `MaxFailures`, `max_failures`, `max-failures` alike."""
    return key.replace("_", "").replace("-", "").lower()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Section:
    """One object of a config, read field by field under its path."""

    def __init__(self, raw: Mapping[str, Any], path: str) -> None:
        self.path = path
        self._data = {fold(k): v for k, v in raw.items() if isinstance(k, str)}

    @classmethod
    def of(cls, raw: Any, path: str) -> Section | None:
        """The section, or None when it is not configured (None, or an empty object)."""
        raw = unblock(raw)
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: must be an object, got {_show(raw)}")
        return cls(raw, path) if raw else None

    def error(self, name: str, message: str) -> ValueError:
        return ValueError(f"{self.path}.{name}: {message}")

    def raw(self, name: str) -> Any:
        """The value as given; None when absent."""
        return self._data.get(fold(name))

    def has(self, name: str) -> bool:
        return self.raw(name) is not None

    def whole(self, name: str, default: int, *, lo: int = 0, hi: int | None = None) -> int:
        """A whole number in [lo, hi]; JSON's 5.0 is 5 (one number type)."""
        value = self.raw(name)
        if value is None:
            return default
        bound = f"≥ {lo}" if hi is None else f"from {lo} to {hi}"
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and float(value).is_integer()
        if not ok or value < lo or (hi is not None and value > hi):
            raise self.error(name, f"must be a whole number {bound}, got {_show(value)}")
        return int(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        return self._typed(name, default, bool, "true or false")

    def text(self, name: str, default: str = "") -> str:
        return self._typed(name, default, str, "a string")

    def _typed(self, name: str, default: Any, kind: type, what: str) -> Any:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, kind):
            raise self.error(name, f"must be {what}, got {_show(value)}")
        return value

    def duration(self, name: str, default: float) -> float:
        """Seconds, from a Go duration string ("10s", "1m30s") or a number of seconds."""
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse_duration(value, what=name)
        except InvalidRequest as exc:
            raise self.error(name, f"must be a duration such as \"10s\", got {_show(value)}") from exc

    def section(self, name: str) -> Section | None:
        return Section.of(self.raw(name), f"{self.path}.{name}")

    def sections(self, name: str) -> list[Section | None]:
        """A list of objects; an entry that is null or {} is None."""
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"must be a list of objects, got {_show(value)}")
        return [Section.of(item, f"{self.path}.{name}[{i}]") for i, item in enumerate(value)]
