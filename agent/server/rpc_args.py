"""Shape checks for the arguments of server RPC handlers.

RPC arguments are msgpack from another process: they arrive as whatever types the
sender packed. Python's conversions would silently misread many of them (`str()` of a
map is a valid-looking node name, `dict()` of a list of pairs is a map), and the rest
raise TypeError deep in a handler. These helpers turn each wrong shape into an
InvalidRequest naming the argument, which the caller receives as kind "invalid".
"""

from __future__ import annotations

from typing import Any

from mesh.catalog.errors import InvalidRequest

__all__ = ["string", "boolean", "str_map", "mapping", "read_params", "read_options"]


def string(args: dict[str, Any], key: str, what: str, default: str = "") -> str:
    return _typed(args, key, what, str, "a string", default)


def boolean(args: dict[str, Any], key: str, what: str, default: bool = False) -> bool:
    return _typed(args, key, what, bool, "a boolean", default)


def _typed(args: dict[str, Any], key: str, what: str, kind: type, name: str, default: Any) -> Any:
    value = args.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise InvalidRequest(f"{what}: {key} must be {name}, not {type(value).__name__}")
    return value


def mapping(args: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = args.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what}: {key} must be a map, not {type(value).__name__}")
    return value


def str_map(args: dict[str, Any], key: str, what: str) -> dict[str, str]:
    value = mapping(args, key, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise InvalidRequest(f"{what}: {key} must map strings to strings")
    return value


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _str_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


# the parameters the named queries (agent.queries) read, and the shapes they expect
_PARAMS: dict[str, Any] = {
    "name": lambda v: isinstance(v, str), "state": lambda v: isinstance(v, str), "id": lambda v: isinstance(v, str),
    "source": lambda v: isinstance(v, str), "destination": lambda v: isinstance(v, str),
    "by": lambda v: isinstance(v, str), "filter": lambda v: v is None or isinstance(v, str),
    "tags": lambda v: v is None or _str_list(v), "names": _str_list,
    "node_meta": lambda v: v is None or _str_dict(v),
    "passing": lambda v: v is None or isinstance(v, bool), "default_allow": lambda v: v is None or isinstance(v, bool),
    "compile_dc": lambda v: isinstance(v, str), "override_protocol": lambda v: v is None or isinstance(v, str),
    "override_connect_timeout": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool)
                                                        and 0 <= v < float("inf")),
}


def read_params(args: dict[str, Any]) -> dict[str, Any]:
    """The `p` of a Read: a map whose known parameters have the types the queries use."""
    params = mapping(args, "p", "Read")
    for key, value in params.items():
        if not isinstance(key, str):
            raise InvalidRequest("Read: parameter names must be strings")
        check = _PARAMS.get(key)
        if check is not None and not check(value):
            raise InvalidRequest(f"Read: parameter {key} has the wrong type ({type(value).__name__})")
    return params


def read_options(args: dict[str, Any]) -> dict[str, Any]:
    """The `o` of a Read, checked so ReadOptions.from_wire cannot misread it."""
    opts = mapping(args, "o", "Read")
    index, wait = opts.get("i", 0), opts.get("w", 300.0)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidRequest("Read: index must be a non-negative integer")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 86400:
        raise InvalidRequest("Read: wait must be a number of seconds")
    for key in ("s", "c"):
        if not isinstance(opts.get(key, False), bool):
            raise InvalidRequest(f"Read: option {key} must be a boolean")
    return opts
