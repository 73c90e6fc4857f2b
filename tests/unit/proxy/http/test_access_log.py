"""Access log settings and lines (proxy/http/access_log.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proxy.http.access_log import (
    AccessLogConfig,
    AccessLogConfigError,
    AccessRecord,
    format_line,
    parse_access_logs,
)

T0 = 1_700_000_000.1234  # 2023-11-14T22:13:20.123Z


def record(**kw):
    base = dict(
        start_time=T0, source="web", destination="api", method="GET", path="/admin?x=1", response_code=403,
        duration=0.0125, bytes_received=10, bytes_sent=19, upstream_host="10.0.0.2:21000", retries=1,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736", authz="deny",
        authz_reason="denied by L7 intention web => api, permission 1", route="route-0",
        downstream_remote_address="127.0.0.1:50000",
        request_headers=lambda: {"host": "api", "user-agent": "curl/8", "x-request-id": "r1"},
        response_headers=lambda: {"content-type": "text/plain"},
    )
    base.update(kw)
    return AccessRecord(**base)


def test_default_line_is_json_with_the_fields():
    line = json.loads(format_line(record(), parse_access_logs({"Enabled": True})))
    assert line == {
        "start_time": "2023-11-14T22:13:20.123Z", "route_name": "route-0", "method": "GET", "path": "/admin?x=1",
        "protocol": "HTTP/1.1", "response_code": 403, "response_flags": None, "bytes_received": 10,
        "bytes_sent": 19, "duration": 12, "upstream_host": "10.0.0.2:21000", "upstream_cluster": "api",
        "downstream_remote_address": "127.0.0.1:50000", "authority": "api", "user_agent": "curl/8",
        "request_id": "r1", "x_forwarded_for": None, "source": "web", "destination": "api", "retries": 1,
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "authz": "deny",
        "authz_reason": "denied by L7 intention web => api, permission 1",
    }
    assert "\n" not in format_line(record(), AccessLogConfig())


def test_text_format_operators():
    config = parse_access_logs({"Enabled": True, "TextFormat":
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
        '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "%REQ(USER-AGENT)%" "%REQ(:AUTHORITY)%" '
        '"%UPSTREAM_HOST%" %DOWNSTREAM_REMOTE_ADDRESS% %RESP(CONTENT-TYPE)% %REQ(X-MISSING)% %REQ(USER-AGENT):4% '
        '%ROUTE_NAME% %UPSTREAM_CLUSTER% 100%'})
    assert format_line(record(), config) == (
        '[2023-11-14T22:13:20.123Z] "GET /admin?x=1 HTTP/1.1" 403 - 10 19 12 "curl/8" "api" '
        '"10.0.0.2:21000" 127.0.0.1:50000 text/plain - curl route-0 api 100%')


def test_start_time_with_a_format():
    config = parse_access_logs({"TextFormat": "%START_TIME(%Y/%m/%d)%"})
    assert format_line(record(), config) == "2023/11/14"


def test_json_format_types_single_operators():
    config = parse_access_logs({"Enabled": True, "JSONFormat": json.dumps({
        "code": "%RESPONSE_CODE%", "ua": "%REQ(USER-AGENT)%", "missing": "%REQ(X-NOPE)%",
        "both": "%REQ(:METHOD)% %RESPONSE_CODE%", "nested": {"host": "%UPSTREAM_HOST%"}, "static": 7,
    })})
    assert json.loads(format_line(record(), config)) == {
        "code": 403, "ua": "curl/8", "missing": None, "both": "GET 403",
        "nested": {"host": "10.0.0.2:21000"}, "static": 7,
    }


def test_headers_are_not_read_by_formats_that_do_not_ask():
    def explode():
        raise AssertionError("headers built")

    config = parse_access_logs({"TextFormat": "%RESPONSE_CODE%"})
    assert format_line(record(request_headers=explode, response_headers=explode), config) == "403"


@pytest.mark.parametrize(
    "raw, config",
    [
        (None, AccessLogConfig()),
        ({"Enabled": True}, AccessLogConfig(True, False, "stdout", "")),
        ({"Enabled": True, "Type": "stderr", "DisableListenerLogs": True}, AccessLogConfig(True, True, "stderr", "")),
        ({"Enabled": True, "Type": "file", "Path": "/var/log/a.log"}, AccessLogConfig(True, False, "file", "/var/log/a.log")),
    ],
)
def test_settings(raw, config):
    assert parse_access_logs(raw) == config


@pytest.mark.parametrize(
    "raw, message",
    [
        ([], "AccessLogs must be an object"),
        ({"Type": "syslog"}, "AccessLogs.Type must be stdout, stderr or file, got 'syslog'"),
        ({"Type": "file"}, "AccessLogs.Path must be set when Type is file"),
        ({"Path": "/tmp/x"}, "AccessLogs.Path is only valid when Type is file"),
        ({"JSONFormat": "{}", "TextFormat": "x"}, "only one of JSONFormat and TextFormat"),
        ({"JSONFormat": "{nope"}, "AccessLogs.JSONFormat is not valid JSON"),
        ({"JSONFormat": "[1]"}, "AccessLogs.JSONFormat must be a JSON object"),
        ({"TextFormat": "%RESPONSE_CODE% %UPSTREAM_CONNECTION_ID%"}, "unknown command operator %UPSTREAM_CONNECTION_ID%"),
        ({"TextFormat": "%REQ()%"}, "needs a header name"),
        ({"TextFormat": "%DURATION(x)%"}, "unknown command operator %DURATION(x)%"),
        ({"JSONFormat": '{"a": {"b": "%NOPE%"}}'}, r"AccessLogs.JSONFormat.a.b: unknown command operator %NOPE%"),
        ({"Enable": True}, "unknown field 'Enable'"),
    ],
)
def test_setting_errors(raw, message):
    with pytest.raises(AccessLogConfigError) as info:
        parse_access_logs(raw)
    assert message in str(info.value)


_text = st.one_of(st.none(), st.text(max_size=20))


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30), st.text(min_size=1, max_size=10), st.text(max_size=40), _text, _text,
       st.integers(0, 599), st.integers(0, 10**12), st.floats(0, 1e4), st.dictionaries(
           st.sampled_from(["host", "user-agent", "x-request-id", "x-forwarded-for"]), st.text(max_size=20)))
def test_the_default_line_is_the_json_of_the_default_fields(source, method, path, route, trace_id, status, size,
                                                             duration, headers):
    from mesh.proxy.http.access_log import default_fields, default_line

    record = AccessRecord(start_time=1_700_000_000.5, source=source, destination="api", method=method, path=path,
                          response_code=status, duration=duration, bytes_sent=size, route=route or "",
                          trace_id=trace_id or "", authz_reason=route or "", request_headers=lambda: headers)
    assert default_line(record) == json.dumps(default_fields(record), separators=(",", ":"))
