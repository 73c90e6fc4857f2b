"""Access log lines: Consul's `AccessLogs` settings, Envoy's command operators. Pure:
the engine writes the lines (stdout, stderr or the file), this module only makes them.

`AccessLogs` (proxy-defaults), as Consul validates it: `Enabled`; `DisableListenerLogs`
(no line for connections refused before any request, e.g. a failed TLS handshake);
`Type` `stdout` (default) | `stderr` | `file`; `Path` (required for `file`, refused
otherwise); at most one of `JSONFormat` (a JSON object whose string values hold
operators) and `TextFormat`.

Without a format, each line is one JSON object, with the keys of Consul's default
format that apply here and mesh's additions:

    start_time (RFC 3339 UTC, ms), route_name, method, path, protocol, response_code,
    response_flags, bytes_received, bytes_sent, duration (ms), upstream_host,
    upstream_cluster (the destination service), downstream_remote_address, authority,
    user_agent, request_id, x_forwarded_for; mesh: source, destination, retries,
    trace_id, authz ("allow" | "deny"), authz_reason

Operators in `TextFormat`/`JSONFormat` (Envoy's spelling): %START_TIME%,
%START_TIME(strftime)%, %REQ(X)%, %REQ(X?Y)% (Y when X is absent), %RESP(X)%, with an
optional `:N` length cap, %RESPONSE_CODE%, %RESPONSE_FLAGS%, %DURATION% (ms),
%BYTES_RECEIVED%, %BYTES_SENT%, %UPSTREAM_HOST%, %UPSTREAM_CLUSTER%, %ROUTE_NAME%,
%PROTOCOL%, %DOWNSTREAM_REMOTE_ADDRESS%. `REQ(:METHOD)`, `REQ(:PATH)` and
`REQ(:AUTHORITY)` read the request line and Host. Any other %NAME% is a config error
naming it, so a typo shows when the entry is written rather than as "-" in every line.
A missing value is "-" in text; in a JSON value that is a single operator it is null,
and numeric operators there are numbers, as Envoy renders them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = ["AccessLogConfig", "AccessLogConfigError", "AccessRecord", "parse_access_logs", "format_line",
           "compile_format", "default_fields", "OPERATORS"]


def _no_headers() -> Mapping[str, str]:
    return {}


@dataclass(slots=True)
class AccessRecord:
    """What the engine knows about a finished request."""

    start_time: float  # wall clock, seconds since the epoch
    source: str
    destination: str
    method: str
    path: str  # as the caller sent it (path and query), as Envoy logs the original path
    protocol: str = "HTTP/1.1"
    response_code: int = 0  # 0: no response was sent
    duration: float = 0.0  # seconds
    bytes_received: int = 0
    bytes_sent: int = 0
    upstream_host: str = ""  # the instance address:port, "" when none was reached
    retries: int = 0
    trace_id: str = ""
    authz: str = "allow"
    authz_reason: str = ""
    route: str = ""
    response_flags: str = ""
    downstream_remote_address: str = ""
    request_headers: Callable[[], Mapping[str, str]] = field(default=_no_headers)  # lower-case names
    response_headers: Callable[[], Mapping[str, str]] = field(default=_no_headers)


class AccessLogConfigError(ValueError):
    """`AccessLogs` is invalid; the message names the field."""


Value = str | int | None
_Part = Callable[[AccessRecord], Value]


_second_cache: list[Any] = [-1, ""]  # the last whole second formatted, with its text


def _rfc3339(seconds: float) -> str:
    """UTC with milliseconds; the seconds part is formatted once per second (a line per
    request made this a visible share of the sidecar's time)."""
    whole = int(seconds)
    if whole != _second_cache[0]:
        _second_cache[0], _second_cache[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole))
    return f"{_second_cache[1]}{int((seconds - whole) * 1000):03d}Z"


def _header(source: str, spec: str) -> _Part:
    names = [n.strip().lower() for n in spec.split("?")]

    def read(record: AccessRecord) -> Value:
        headers = record.request_headers() if source == "REQ" else record.response_headers()
        for name in names:
            if source == "REQ" and name == ":method":
                return record.method
            if source == "REQ" and name == ":path":
                return record.path
            value = headers.get("host" if name == ":authority" else name)
            if value is not None:
                return value
        return None

    return read


def _start_time(arg: str | None) -> _Part:
    if not arg:
        return lambda r: _rfc3339(r.start_time)
    return lambda r: datetime.fromtimestamp(r.start_time, UTC).strftime(arg)


def _text(value: str) -> Value:
    return value or None


OPERATORS: dict[str, Callable[[AccessRecord], Value]] = {
    "RESPONSE_CODE": lambda r: r.response_code,
    "RESPONSE_FLAGS": lambda r: _text(r.response_flags),
    "DURATION": lambda r: int(r.duration * 1000),
    "BYTES_RECEIVED": lambda r: r.bytes_received,
    "BYTES_SENT": lambda r: r.bytes_sent,
    "UPSTREAM_HOST": lambda r: _text(r.upstream_host),
    "UPSTREAM_CLUSTER": lambda r: _text(r.destination),
    "ROUTE_NAME": lambda r: _text(r.route),
    "PROTOCOL": lambda r: _text(r.protocol),
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r: _text(r.downstream_remote_address),
}
_WITH_ARG = {"REQ", "RESP", "START_TIME"}
_OPERATOR = re.compile(r"%([A-Z_]+)(?:\(([^)]*)\))?(?::(\d+))?%")


def _operator(match: re.Match[str], where: str) -> _Part:
    name, arg, cap = match.group(1), match.group(2), match.group(3)
    if name in _WITH_ARG:
        if name == "START_TIME":
            part = _start_time(arg)
        elif not arg:
            raise AccessLogConfigError(f"{where}: %{name}(...)% needs a header name")
        else:
            part = _header(name, arg)
    elif name in OPERATORS and arg is None:
        part = OPERATORS[name]
    else:
        raise AccessLogConfigError(f"{where}: unknown command operator {match.group(0)}")
    if cap is None:
        return part
    limit = int(cap)

    def capped(record: AccessRecord) -> Value:
        value = part(record)
        return value[:limit] if isinstance(value, str) else value

    return capped


Template = Callable[[AccessRecord], Any]  # str, or a typed value when `typed`


def compile_format(text: str, where: str = "TextFormat", typed: bool = False) -> Template:
    """A format string as a function of the record. `typed`: a string that is exactly
    one operator gives that operator's own value (number, None) instead of text."""
    parts: list[str | _Part] = []
    pos = 0
    for match in _OPERATOR.finditer(text):
        if match.start() > pos:
            parts.append(text[pos:match.start()])
        parts.append(_operator(match, where))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    if typed and len(parts) == 1 and callable(parts[0]):
        return parts[0]
    frozen = tuple(parts)

    def render(record: AccessRecord) -> str:
        out = []
        for part in frozen:
            if isinstance(part, str):
                out.append(part)
            else:
                value = part(record)
                out.append("-" if value is None or value == "" else str(value))
        return "".join(out)

    return render


def _compile_json(value: Any, where: str) -> Callable[[AccessRecord], Any]:
    if isinstance(value, str):
        return compile_format(value, where, typed=True)
    if isinstance(value, dict):
        items = [(str(k), _compile_json(v, f"{where}.{k}")) for k, v in value.items()]
        return lambda record: {k: f(record) for k, f in items}
    return lambda record: value


@dataclass(frozen=True, slots=True)
class AccessLogConfig:
    enabled: bool = False
    disable_listener_logs: bool = False
    type: str = "stdout"
    path: str = ""
    render: Callable[[AccessRecord], str] | None = field(default=None, compare=False)  # None: the default line


def parse_access_logs(raw: Mapping[str, Any] | None) -> AccessLogConfig:
    """proxy-defaults `AccessLogs`, validated and its format compiled."""
    if raw is None:
        return AccessLogConfig()
    if not isinstance(raw, Mapping):
        raise AccessLogConfigError("AccessLogs must be an object")
    known = {"Enabled", "DisableListenerLogs", "Type", "Path", "JSONFormat", "TextFormat"}
    unknown = set(raw) - known
    if unknown:
        raise AccessLogConfigError(f"AccessLogs: unknown field {sorted(unknown)[0]!r}")
    kind = raw.get("Type") or "stdout"
    if kind not in ("stdout", "stderr", "file"):
        raise AccessLogConfigError(f"AccessLogs.Type must be stdout, stderr or file, got {kind!r}")
    path = raw.get("Path") or ""
    if kind == "file" and not path:
        raise AccessLogConfigError("AccessLogs.Path must be set when Type is file")
    if kind != "file" and path:
        raise AccessLogConfigError("AccessLogs.Path is only valid when Type is file")
    json_format, text_format = raw.get("JSONFormat") or "", raw.get("TextFormat") or ""
    if json_format and text_format:
        raise AccessLogConfigError("AccessLogs: only one of JSONFormat and TextFormat may be set")
    render: Callable[[AccessRecord], str] | None = None
    if text_format:
        render = compile_format(str(text_format), "AccessLogs.TextFormat")
    elif json_format:
        try:
            shape = json.loads(json_format)
        except (TypeError, ValueError) as exc:
            raise AccessLogConfigError(f"AccessLogs.JSONFormat is not valid JSON: {exc}") from None
        if not isinstance(shape, dict):
            raise AccessLogConfigError("AccessLogs.JSONFormat must be a JSON object")
        build = _compile_json(shape, "AccessLogs.JSONFormat")
        render = lambda record: _encode(build(record))  # noqa: E731
    return AccessLogConfig(bool(raw.get("Enabled")), bool(raw.get("DisableListenerLogs")), kind, str(path), render)


def default_fields(record: AccessRecord) -> dict[str, Any]:
    """The default line's object (module docstring)."""
    headers = record.request_headers()
    return {
        "start_time": _rfc3339(record.start_time),
        "route_name": record.route or None,
        "method": record.method,
        "path": record.path,
        "protocol": record.protocol,
        "response_code": record.response_code,
        "response_flags": record.response_flags or None,
        "bytes_received": record.bytes_received,
        "bytes_sent": record.bytes_sent,
        "duration": int(record.duration * 1000),
        "upstream_host": record.upstream_host or None,
        "upstream_cluster": record.destination,
        "downstream_remote_address": record.downstream_remote_address or None,
        "authority": headers.get("host"),
        "user_agent": headers.get("user-agent"),
        "request_id": headers.get("x-request-id"),
        "x_forwarded_for": headers.get("x-forwarded-for"),
        "source": record.source,
        "destination": record.destination,
        "retries": record.retries,
        "trace_id": record.trace_id or None,
        "authz": record.authz,
        "authz_reason": record.authz_reason or None,
    }


_encode = json.JSONEncoder(separators=(",", ":")).encode  # made once: json.dumps with options makes one per call
_esc = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]  # C: one JSON string


def default_line(record: AccessRecord) -> str:
    """`default_fields` as one JSON line, written out field by field: the same text
    `json` makes of the dict (tests hold them equal), at a third of the cost, which
    matters on a line per request."""
    get = record.request_headers().get
    route, flags, upstream, remote = record.route, record.response_flags, record.upstream_host, \
        record.downstream_remote_address
    trace_id, reason = record.trace_id, record.authz_reason
    host, agent, request_id, forwarded = get("host"), get("user-agent"), get("x-request-id"), get("x-forwarded-for")
    return (
        f'{{"start_time":"{_rfc3339(record.start_time)}","route_name":{_esc(route) if route else "null"},'
        f'"method":{_esc(record.method)},"path":{_esc(record.path)},"protocol":{_esc(record.protocol)},'
        f'"response_code":{int(record.response_code)},"response_flags":{_esc(flags) if flags else "null"},'
        f'"bytes_received":{int(record.bytes_received)},"bytes_sent":{int(record.bytes_sent)},'
        f'"duration":{int(record.duration * 1000)},"upstream_host":{_esc(upstream) if upstream else "null"},'
        f'"upstream_cluster":{_esc(record.destination)},'
        f'"downstream_remote_address":{_esc(remote) if remote else "null"},'
        f'"authority":{"null" if host is None else _esc(host)},'
        f'"user_agent":{"null" if agent is None else _esc(agent)},'
        f'"request_id":{"null" if request_id is None else _esc(request_id)},'
        f'"x_forwarded_for":{"null" if forwarded is None else _esc(forwarded)},'
        f'"source":{_esc(record.source)},"destination":{_esc(record.destination)},"retries":{int(record.retries)},'
        f'"trace_id":{_esc(trace_id) if trace_id else "null"},"authz":{_esc(record.authz)},'
        f'"authz_reason":{_esc(reason) if reason else "null"}}}'
    )


def format_line(record: AccessRecord, config: AccessLogConfig) -> str:
    """One access log line (without the newline)."""
    if config.render is not None:
        return config.render(record)
    return default_line(record)
