"""Trace context parsing, propagation and OTLP JSON (proxy/http/tracing.py)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.http.tracing import (
    B3,
    B3_MULTI,
    STARTED,
    TRACE_HEADERS,
    W3C,
    FinishedSpan,
    TraceContext,
    TracingConfig,
    TracingConfigError,
    otlp_span_json,
    outgoing_headers,
    parse_b3,
    parse_traceparent,
    parse_tracing_config,
    start_or_continue,
)

TID = "4bf92f3577b34da6a3ce929d0e0e4736"
SID = "00f067aa0ba902b7"
PID = "a3ce929d0e0e4736"
TP = f"00-{TID}-{SID}-01"


def getter(headers):
    return lambda name: headers.get(name)


@pytest.mark.parametrize(
    "value",
    [
        None, "", "garbage",
        f"00-{'0' * 32}-{SID}-01",  # all-zero trace ID
        f"00-{TID}-{'0' * 16}-01",  # all-zero span ID
        f"ff-{TID}-{SID}-01",  # version ff
        f"00-{TID.upper()}-{SID}-01",  # upper-case hex
        f"00-{TID[:-1]}-{SID}-01",
        f"00-{TID}-{SID}-1",
        f"00-{TID}-{SID}-01-extra",  # version 00 has four fields
        f"0-{TID}-{SID}-01",
        f"00_{TID}_{SID}_01",
    ],
)
def test_invalid_traceparent_is_absent(value):
    assert parse_traceparent(value) is None


def test_traceparent_parsing():
    ctx = parse_traceparent(TP, "congo=t61rcWkgMzE")
    assert ctx == TraceContext(TID, SID, None, True, "congo=t61rcWkgMzE")
    assert parse_traceparent(f"00-{TID}-{SID}-00").sampled is False
    assert parse_traceparent(f"01-{TID}-{SID}-03-what-ever").sampled is True  # a later version
    assert parse_traceparent(TP, "x" * 600).tracestate is None


@pytest.mark.parametrize(
    "value",
    ["", "x", "2", f"{TID}", f"{TID}-{SID}-2", f"{'0' * 32}-{SID}-1", f"{TID}-{'0' * 16}-1",
     f"{TID}-{SID}-1-{'0' * 16}", f"{TID}-{SID}-1-{PID}-x", f"{TID[:20]}-{SID}", f"{TID}-{SID}-1-{PID[:3]}",
     f"{TID.upper()}-{SID}"],
)
def test_invalid_b3_is_absent(value):
    assert parse_b3(value) is None


def test_b3_single_forms():
    assert parse_b3("0") == (False, False)
    assert parse_b3("d") == (True, True)
    assert parse_b3(f"{TID}-{SID}") == TraceContext(TID, SID, None, None)
    assert parse_b3(f"{TID}-{SID}-1-{PID}") == TraceContext(TID, SID, PID, True)
    short = parse_b3(f"{PID}-{SID}-0")
    assert (short.trace_id, short.short_trace_id, short.sampled) == ("0" * 16 + PID, True, False)


def test_a_trace_starts_when_none_comes_in():
    ctx, style = start_or_continue(getter({}), random.Random(1), exporting=False)
    assert style == STARTED and len(ctx.trace_id) == 32 and len(ctx.span_id) == 16
    assert ctx.parent_span_id is None and ctx.sampled is True
    (name, value), = outgoing_headers(ctx, style)
    assert name == "traceparent" and parse_traceparent(value) == ctx


def test_sampling_of_new_traces_is_a_percentage():
    rng = random.Random(3)
    sampled = sum(start_or_continue(getter({}), rng, False, sampling=25)[0].sampled for _ in range(2000))
    assert 400 < sampled < 600
    assert not start_or_continue(getter({}), rng, False, sampling=0)[0].sampled


def test_without_export_the_incoming_span_passes_through():
    ctx, style = start_or_continue(getter({"traceparent": TP, "tracestate": "a=b"}), random.Random(1), False)
    assert (style, ctx.trace_id, ctx.span_id, ctx.parent_span_id) == (W3C, TID, SID, None)
    assert outgoing_headers(ctx, style) == [("traceparent", TP), ("tracestate", "a=b")]


def test_with_export_a_new_span_is_a_child():
    ctx, style = start_or_continue(getter({"traceparent": TP}), random.Random(1), True)
    assert ctx.trace_id == TID and ctx.parent_span_id == SID and ctx.span_id != SID
    assert outgoing_headers(ctx, style) == [("traceparent", f"00-{TID}-{ctx.span_id}-01")]


def test_traceparent_wins_over_b3_and_bad_traceparent_falls_to_b3():
    headers = {"traceparent": TP, "b3": f"{PID}{PID}-{PID}-1"}
    assert start_or_continue(getter(headers), random.Random(), False)[1] == W3C
    headers["traceparent"] = "00-bad"
    ctx, style = start_or_continue(getter(headers), random.Random(), False)
    assert (style, ctx.trace_id) == (B3, PID + PID)


def test_b3_single_keeps_its_style_and_width():
    ctx, style = start_or_continue(getter({"b3": f"{PID}-{SID}-1"}), random.Random(1), True)
    (name, value), = outgoing_headers(ctx, style)
    assert name == "b3" and value == f"{PID}-{ctx.span_id}-1-{SID}"
    assert ctx.trace_id == "0" * 16 + PID  # 32 hex for logs


def test_b3_multi_round_trip():
    headers = {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-parentspanid": PID, "x-b3-sampled": "1"}
    ctx, style = start_or_continue(getter(headers), random.Random(1), False)
    assert style == B3_MULTI
    assert dict(outgoing_headers(ctx, style)) == headers
    debug = {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-flags": "1"}
    ctx, style = start_or_continue(getter(debug), random.Random(1), False)
    assert ctx.sampled and ctx.debug and dict(outgoing_headers(ctx, style)) == debug


@pytest.mark.parametrize(
    "headers",
    [
        {"x-b3-traceid": TID},
        {"x-b3-traceid": "0" * 32, "x-b3-spanid": SID},
        {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-sampled": "maybe"},
        {"x-b3-traceid": TID, "x-b3-spanid": "xyz"},
        {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-parentspanid": "0" * 16},
    ],
)
def test_malformed_b3_multi_starts_a_new_trace(headers):
    ctx, style = start_or_continue(getter(headers), random.Random(1), False)
    assert style == STARTED and ctx.trace_id != TID


def test_sampling_only_b3_is_honoured():
    ctx, style = start_or_continue(getter({"b3": "0"}), random.Random(1), False, sampling=100)
    assert style == STARTED and ctx.sampled is False
    ctx, _ = start_or_continue(getter({"x-b3-sampled": "0"}), random.Random(1), False)
    assert ctx.sampled is False


def test_every_outgoing_header_is_a_trace_header():
    for style, headers in ((W3C, {"traceparent": TP, "tracestate": "a=b"}),
                           (B3, {"b3": f"{TID}-{SID}-1-{PID}"}),
                           (B3_MULTI, {"x-b3-traceid": TID, "x-b3-spanid": SID, "x-b3-flags": "1"})):
        ctx, got = start_or_continue(getter(headers), random.Random(1), True)
        assert got == style
        assert {name for name, _ in outgoing_headers(ctx, got)} <= TRACE_HEADERS




@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
       st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), st.booleans())
def test_traceparent_round_trip(trace_id, span_id, sampled):
    ctx = parse_traceparent(f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}")
    if trace_id == "0" * 32 or span_id == "0" * 16:
        assert ctx is None
        return
    assert outgoing_headers(ctx, W3C) == [("traceparent", f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}")]


@given(st.text(max_size=80))
def test_parsers_never_raise(value):
    parse_traceparent(value, value)
    parse_b3(value)
    start_or_continue(lambda name: value, random.Random(0), True)


def test_otlp_json_body():
    ctx = TraceContext(TID, SID, PID, True)
    body = otlp_span_json([
        FinishedSpan(ctx, "GET api", "SERVER", 1_000, 2_000, "GET", "/x", 200, "api"),
        FinishedSpan(TraceContext(TID, PID), "GET db", "CLIENT", 1_100, 1_900, "GET", "/y", 404, "10.0.0.2:21000"),
    ], "api")
    json.dumps(body)
    (resource,) = body["resourceSpans"]
    assert resource["resource"]["attributes"] == [{"key": "service.name", "value": {"stringValue": "api"}}]
    server, client = resource["scopeSpans"][0]["spans"]
    assert server == {
        "traceId": TID, "spanId": SID, "parentSpanId": PID, "name": "GET api", "kind": 2,
        "startTimeUnixNano": "1000", "endTimeUnixNano": "2000",
        "attributes": [
            {"key": "http.request.method", "value": {"stringValue": "GET"}},
            {"key": "url.path", "value": {"stringValue": "/x"}},
            {"key": "http.response.status_code", "value": {"intValue": "200"}},
            {"key": "server.address", "value": {"stringValue": "api"}},
        ],
        "status": {"code": 0},
    }
    assert client["kind"] == 3 and "parentSpanId" not in client and client["status"] == {"code": 2}


@pytest.mark.parametrize(
    "raw, config",
    [
        (None, TracingConfig(100.0, None)),
        ({}, TracingConfig(100.0, None)),
        ({"sampling": 5}, TracingConfig(5.0, None)),
        ({"sampling": 0.5, "otlp_endpoint": "http://otel:4318/v1/traces"}, TracingConfig(0.5, "http://otel:4318/v1/traces")),
        ({"otlp_endpoint": "https://[::1]:4318/v1/traces"}, TracingConfig(100.0, "https://[::1]:4318/v1/traces")),
    ],
)
def test_tracing_config(raw, config):
    assert parse_tracing_config(raw) == config
    assert config.exporting is (config.otlp_endpoint is not None)


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "Config.tracing must be an object"),
        ({"sampling": 101}, "Config.tracing.sampling must be a number from 0 to 100"),
        ({"sampling": -1}, "Config.tracing.sampling"),
        ({"sampling": "50"}, "Config.tracing.sampling"),
        ({"sampling": True}, "Config.tracing.sampling"),
        ({"otlp_endpoint": "otel:4318"}, "Config.tracing.otlp_endpoint must be an http:// or https:// URL"),
        ({"otlp_endpoint": 4318}, "Config.tracing.otlp_endpoint"),
        ({"endpoint": "http://x"}, "Config.tracing: unknown field 'endpoint'"),
    ],
)
def test_tracing_config_errors(raw, message):
    with pytest.raises(TracingConfigError, match=message.replace(".", r"\.")):
        parse_tracing_config(raw)
