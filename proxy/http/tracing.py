"""Distributed tracing: W3C Trace Context and B3 headers, span IDs, OTLP/HTTP JSON. Pure:
randomness comes in.

Incoming context, first found wins: `traceparent` (+ `tracestate`), then B3 single
(`b3`), then B3 multi (`x-b3-traceid`, `x-b3-spanid`, `x-b3-parentspanid`,
`x-b3-sampled`, `x-b3-flags`). Validation is strict, and anything invalid is treated
as absent (a new trace starts) rather than forwarded: IDs are lower-case hex of the
exact length (trace 32, or 16 for B3's 64-bit IDs; span 16) and never all zeros;
`traceparent` version `ff` is invalid and version `00` has exactly four fields (a
later version may append fields, which are dropped); a B3 sampling state is `0`, `1`
or `d` (debug, which means sampled).

- No context comes in: a trace starts (random IDs), sampled with probability
  `sampling` percent, and the request leaves with a `traceparent`.
- A context comes in: its trace ID and sampling decision are kept. A new span ID is
  minted (the incoming one becomes the parent) only when this proxy exports spans:
  a span ID nobody reports would break the caller's trace into pieces, so without
  export the incoming span ID passes through unchanged.
- Outgoing headers keep the caller's style (W3C stays W3C, B3 single stays B3 single,
  B3 multi stays multi; a 64-bit B3 trace ID stays 64-bit). The engine removes every
  name in `TRACE_HEADERS` from the forwarded request before adding them.
- Logs show the trace ID as 32 hex (a 64-bit ID is left-padded with zeros, as OTLP
  and W3C carry it).

Config (proxy-defaults `Config.tracing`, a mesh addition):
`{"sampling": 0..100, "otlp_endpoint": "http://host:4318/v1/traces"}`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "W3C", "B3", "B3_MULTI", "STARTED", "TRACE_HEADERS", "TraceContext", "TracingConfig", "TracingConfigError",
    "FinishedSpan", "start_or_continue", "outgoing_headers", "parse_traceparent", "parse_b3", "parse_b3_multi",
    "otlp_span_json", "parse_tracing_config", "start",
]

W3C, B3, B3_MULTI, STARTED = "w3c", "b3", "b3multi", ""
TRACE_HEADERS = frozenset({
    "traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled",
    "x-b3-flags",
})
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX16_32 = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
_MAX_TRACESTATE = 512
_TRACESTATE_OK = re.compile(r"[\x20-\x7e]*")


@dataclass(slots=True)
class TraceContext:
    """One hop's trace context."""

    trace_id: str  # 32 lower-case hex (a 64-bit B3 ID left-padded)
    span_id: str  # 16 lower-case hex: this hop's span (or the caller's, passed through)
    parent_span_id: str | None = None
    sampled: bool | None = None  # None: the caller left the decision to us (B3)
    tracestate: str | None = None
    short_trace_id: bool = False  # came in as a 64-bit B3 trace ID
    debug: bool = False  # B3 debug flag


def _valid_trace(tid: str) -> bool:
    return tid != _ZERO_TRACE and tid != _ZERO_SPAN


def parse_traceparent(value: str | None, tracestate: str | None = None) -> TraceContext | None:
    """A `traceparent` (and its `tracestate`), None when absent or invalid."""
    if not value:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    state = tracestate.strip() if tracestate else None
    if state is not None and (len(state) > _MAX_TRACESTATE or not _TRACESTATE_OK.fullmatch(state)):
        state = None  # the spec lets a vendor drop a tracestate it cannot keep
    return TraceContext(trace_id, span_id, None, bool(int(flags, 16) & 1), state or None)


def _sampling_state(value: str) -> tuple[bool | None, bool] | None:
    """(sampled, debug) of a B3 sampling state, None when invalid."""
    if value == "1":
        return True, False
    if value == "0":
        return False, False
    if value == "d":
        return True, True
    return None


def parse_b3(value: str | None) -> TraceContext | tuple[bool | None, bool] | None:
    """A single `b3` header: a context, or only a sampling decision (`b3: 0`), or None."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) == 1:
        return _sampling_state(parts[0])
    if len(parts) > 4:
        return None
    trace_id, span_id = parts[0], parts[1]
    if not _HEX16_32.fullmatch(trace_id) or not _HEX16.fullmatch(span_id):
        return None
    if not _valid_trace(trace_id) or span_id == _ZERO_SPAN:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        state = _sampling_state(parts[2])
        if state is None:
            return None
        sampled, debug = state
    parent = None
    if len(parts) == 4:
        parent = parts[3]
        if not _HEX16.fullmatch(parent) or parent == _ZERO_SPAN:
            return None
    return TraceContext(trace_id.rjust(32, "0"), span_id, parent, sampled, None, len(trace_id) == 16, debug)


def parse_b3_multi(get: Callable[[str], str | None]) -> TraceContext | tuple[bool | None, bool] | None:
    """The `x-b3-*` headers: a context, or only a sampling decision, or None."""
    trace_id, span_id = get("x-b3-traceid"), get("x-b3-spanid")
    sampled_raw, flags = get("x-b3-sampled"), get("x-b3-flags")
    debug = flags is not None and flags.strip() == "1"
    sampled: bool | None = None
    if sampled_raw is not None:
        s = sampled_raw.strip().lower()
        if s in ("1", "true"):
            sampled = True
        elif s in ("0", "false"):
            sampled = False
        else:
            return None
    if debug:
        sampled = True
    if trace_id is None and span_id is None:
        return (sampled, debug) if sampled is not None else None
    if trace_id is None or span_id is None:
        return None
    trace_id, span_id = trace_id.strip(), span_id.strip()
    if not _HEX16_32.fullmatch(trace_id) or not _HEX16.fullmatch(span_id):
        return None
    if not _valid_trace(trace_id) or span_id == _ZERO_SPAN:
        return None
    parent = get("x-b3-parentspanid")
    if parent is not None:
        parent = parent.strip()
        if not _HEX16.fullmatch(parent) or parent == _ZERO_SPAN:
            return None
    return TraceContext(trace_id.rjust(32, "0"), span_id, parent, sampled, None, len(trace_id) == 16, debug)


def _new_id(rng: random.Random, bits: int) -> str:
    value = 0
    while value == 0:
        value = rng.getrandbits(bits)
    return f"{value:0{bits // 4}x}"


def start(rng: random.Random, sampling: float = 100.0, sampled: bool | None = None, debug: bool = False) -> TraceContext:
    """A new trace (new IDs, from one draw of 192 bits); sampled with probability
    `sampling` percent unless the caller already decided."""
    if sampled is None:
        sampled = rng.random() * 100.0 < sampling
    ids = f"{rng.getrandbits(192):048x}"
    trace_id, span_id = ids[:32], ids[32:]
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # all zeros is invalid: draw apart
        trace_id, span_id = _new_id(rng, 128), _new_id(rng, 64)
    return TraceContext(trace_id, span_id, None, sampled, None, False, debug)


def start_or_continue(
    get: Callable[[str], str | None], rng: random.Random, exporting: bool, sampling: float = 100.0
) -> tuple[TraceContext, str]:
    """This hop's context and the incoming style (`STARTED` when a trace starts here).
    `get` reads a request header by lower-case name."""
    found: TraceContext | tuple[bool | None, bool] | None = parse_traceparent(get("traceparent"), get("tracestate"))
    style = W3C
    if found is None:
        found, style = parse_b3(get("b3")), B3
    if found is None:
        found, style = parse_b3_multi(get), B3_MULTI
    if isinstance(found, TraceContext):
        if exporting:
            return replace(found, span_id=_new_id(rng, 64), parent_span_id=found.span_id), style
        return found, style
    if isinstance(found, tuple):  # only a sampling decision: a new trace that honours it
        return start(rng, sampling, found[0], found[1]), STARTED
    return start(rng, sampling), STARTED


def outgoing_headers(ctx: TraceContext, incoming_style: str) -> list[tuple[str, str]]:
    """The trace headers of the forwarded request, in the caller's style."""
    if incoming_style in (B3, B3_MULTI):
        trace_id = ctx.trace_id[16:] if ctx.short_trace_id else ctx.trace_id
        if incoming_style == B3:
            value = f"{trace_id}-{ctx.span_id}"
            if ctx.sampled is not None:
                value += "-" + ("d" if ctx.debug else "1" if ctx.sampled else "0")
                if ctx.parent_span_id:
                    value += "-" + ctx.parent_span_id
            return [("b3", value)]
        out = [("x-b3-traceid", trace_id), ("x-b3-spanid", ctx.span_id)]
        if ctx.parent_span_id:
            out.append(("x-b3-parentspanid", ctx.parent_span_id))
        if ctx.debug:
            out.append(("x-b3-flags", "1"))
        elif ctx.sampled is not None:
            out.append(("x-b3-sampled", "1" if ctx.sampled else "0"))
        return out
    out = [("traceparent", f"00-{ctx.trace_id}-{ctx.span_id}-{'01' if ctx.sampled else '00'}")]
    if ctx.tracestate:
        out.append(("tracestate", ctx.tracestate))
    return out


@dataclass(frozen=True, slots=True)
class FinishedSpan:
    """A span to export: what the engine knows when a request ends."""

    ctx: TraceContext
    name: str  # e.g. "GET api" or the route name
    kind: str  # "SERVER" (inbound) or "CLIENT" (to an upstream)
    start_ns: int
    end_ns: int
    method: str
    path: str
    status_code: int  # 0: no response
    server_address: str


_KIND = {"SERVER": 2, "CLIENT": 3}  # OTLP SpanKind
_STATUS_UNSET, _STATUS_ERROR = 0, 2


def _attr(key: str, value: str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}  # int64 travels as a string
    return {"key": key, "value": {"stringValue": value}}


def otlp_span_json(spans: Iterable[FinishedSpan], service_name: str) -> dict[str, Any]:
    """The OTLP/HTTP JSON body (POST to .../v1/traces, content-type application/json)
    for a batch of finished spans. IDs are hex, as OTLP's JSON encoding wants them."""
    out = []
    for span in spans:
        error = span.status_code == 0 or span.status_code >= 500 or (span.kind == "CLIENT" and span.status_code >= 400)
        item: dict[str, Any] = {
            "traceId": span.ctx.trace_id,
            "spanId": span.ctx.span_id,
            "name": span.name,
            "kind": _KIND[span.kind],
            "startTimeUnixNano": str(span.start_ns),
            "endTimeUnixNano": str(span.end_ns),
            "attributes": [
                _attr("http.request.method", span.method),
                _attr("url.path", span.path),
                _attr("http.response.status_code", span.status_code),
                _attr("server.address", span.server_address),
            ],
            "status": {"code": _STATUS_ERROR if error else _STATUS_UNSET},
        }
        if span.ctx.parent_span_id:
            item["parentSpanId"] = span.ctx.parent_span_id
        out.append(item)
    return {
        "resourceSpans": [{
            "resource": {"attributes": [_attr("service.name", service_name)]},
            "scopeSpans": [{"scope": {"name": "mesh.proxy"}, "spans": out}],
        }]
    }


class TracingConfigError(ValueError):
    """`Config.tracing` is invalid; the message names the field."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    sampling: float = 100.0  # percent of new traces sampled
    otlp_endpoint: str | None = None  # spans are exported (and new span IDs made) when set

    @property
    def exporting(self) -> bool:
        return self.otlp_endpoint is not None


_ENDPOINT = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(?::[0-9]{1,5})?(/[^\s]*)?")


def parse_tracing_config(raw: Mapping[str, Any] | None) -> TracingConfig:
    """`Config.tracing` of proxy-defaults (None: defaults, nothing exported)."""
    if raw is None:
        return TracingConfig()
    if not isinstance(raw, Mapping):
        raise TracingConfigError("Config.tracing must be an object")
    unknown = set(raw) - {"sampling", "otlp_endpoint"}
    if unknown:
        raise TracingConfigError(f"Config.tracing: unknown field {sorted(unknown)[0]!r}")
    sampling = raw.get("sampling", 100.0)
    if isinstance(sampling, bool) or not isinstance(sampling, int | float) or not 0 <= sampling <= 100:
        raise TracingConfigError("Config.tracing.sampling must be a number from 0 to 100")
    endpoint = raw.get("otlp_endpoint")
    if endpoint in (None, ""):
        return TracingConfig(float(sampling))
    if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint):
        raise TracingConfigError("Config.tracing.otlp_endpoint must be an http:// or https:// URL")
    return TracingConfig(float(sampling), endpoint)
