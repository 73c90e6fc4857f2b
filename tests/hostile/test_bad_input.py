"""Issue 10, "bad input gets 400, not 500": the probe's requests replayed against a real
dev agent. Each must be a 400 whose body names the field, the agent must stay up,
and its log (at debug level) must hold no traceback afterwards. Script checks: the
HTTP API refuses them under -enable-local-script-checks, config files may use them.
Check output is capped by the agent's check_output_max_size whatever OutputMaxSize says.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.parse

import pytest

from tests.harness.cluster import HTTPError, retry

DEEP = b"[" * 5000 + b"]" * 5000
BIG = str(2**70)

JSON_ENDPOINTS = [
    ("PUT", "/v1/agent/service/register"),
    ("PUT", "/v1/agent/check/register"),
    ("PUT", "/v1/agent/check/update/x"),
    ("PUT", "/v1/catalog/register"),
    ("PUT", "/v1/catalog/deregister"),
    ("PUT", "/v1/connect/ca/configuration"),
    ("POST", "/v1/connect/intentions"),
    ("PUT", "/v1/connect/intentions/exact?source=a&destination=b"),
    ("POST", "/v1/agent/connect/authorize"),
]

# (path, raw body, what the 400 must name)
BAD_VALUES = [
    ("/v1/agent/service/register", '{"Name":"a","Port":NaN}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Port":Infinity}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Port":1e999}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Port":-Infinity}', "Port"),
    ("/v1/agent/service/register", f'{{"Name":"a","Port":{BIG}}}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Port":1e300}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Port":80.5}', "Port"),
    ("/v1/agent/service/register", '{"Name":"a","Weights":{"Passing":NaN}}', "Weights.Passing"),
    ("/v1/agent/service/register", '{"Name":"a","Weights":{"Passing":1e999}}', "Weights.Passing"),
    ("/v1/agent/service/register", f'{{"Name":"a","Weights":{{"Passing":{BIG}}}}}', "Weights.Passing"),
    ("/v1/agent/service/register", '{"Name":"a","Check":{"TTL":"1s","OutputMaxSize":NaN}}', "OutputMaxSize"),
    ("/v1/agent/check/register", '{"Name":"c","TTL":"10s","OutputMaxSize":1e999}', "OutputMaxSize"),
    ("/v1/agent/check/register", '{"Name":"c","TTL":"10s","OutputMaxSize":Infinity}', "OutputMaxSize"),
    ("/v1/agent/check/register", f'{{"Name":"c","TTL":"10s","OutputMaxSize":{BIG}}}', "OutputMaxSize"),
    ("/v1/agent/check/register", '{"Name":"c","TTL":"999999999999999h"}', "TTL"),
    ("/v1/catalog/register", '{"Node":"n","Address":"10.0.0.1","Service":{"Service":"s","Port":NaN}}',
     "Service.Port"),
    ("/v1/catalog/register", '{"Node":"n","Address":"10.0.0.1","Service":{"Service":"s","Port":1e999}}',
     "Service.Port"),
    ("/v1/catalog/register", f'{{"Node":"n","Address":"10.0.0.1","Service":{{"Service":"s","Port":{BIG}}}}}',
     "Service.Port"),
    ("/v1/connect/ca/configuration", '{"Provider":"consul","Config":{"RootCertTTL":"999999999999999h"}}',
     "RootCertTTL"),
    ("/v1/connect/ca/configuration", f'{{"Provider":"consul","Config":{{"RootCertTTL":{BIG}}}}}', "RootCertTTL"),
    ("/v1/connect/ca/configuration", f'{{"Provider":"consul","Config":{{"CSRMaxPerSecond":{BIG}}}}}',
     "CSRMaxPerSecond"),
    ("/v1/connect/ca/configuration", '{"Provider":"consul","Config":{"CSRMaxPerSecond":1e300}}', "CSRMaxPerSecond"),
    ("/v1/connect/ca/configuration", f'{{"Provider":"consul","Config":{{"CSRMaxConcurrent":{BIG}}}}}',
     "CSRMaxConcurrent"),
    ("/v1/connect/ca/configuration", f'{{"Provider":"consul","Config":{{"RotationPeriod":{BIG}}}}}',
     "RotationPeriod"),
    ("/v1/connect/ca/configuration", '{"Provider":"consul","Config":{"RotationPeriod":"999999999999999h"}}',
     "RotationPeriod"),
]

FILTER_PATHS = ["/v1/agent/services", "/v1/agent/checks", "/v1/catalog/services", "/v1/catalog/nodes",
                "/v1/health/service/consul", "/v1/connect/intentions"]


def _status(dev, method: str, path: str, raw: bytes) -> tuple[int, str]:
    try:
        body, _ = dev.request(method, path, raw=raw)
        return 200, body if isinstance(body, str) else json.dumps(body)
    except HTTPError as exc:
        return exc.status, exc.body


@pytest.mark.parametrize(("method", "path"), JSON_ENDPOINTS, ids=[p for _, p in JSON_ENDPOINTS])
def test_json_nested_5000_deep_is_400(dev, method, path):
    status, body = _status(dev, method, path, DEEP)
    assert status == 400, body
    assert "nested deeper than" in body


@pytest.mark.parametrize(("path", "raw", "field"), BAD_VALUES, ids=[f"{p}:{f}:{r[-30:]}" for p, r, f in BAD_VALUES])
def test_non_finite_and_out_of_range_numbers_are_400_naming_the_field(dev, path, raw, field):
    status, body = _status(dev, "PUT", path, raw.encode())
    assert status == 400, body
    assert field in body, body


@pytest.mark.parametrize("path", FILTER_PATHS)
def test_filter_with_thousands_of_parentheses_is_400(dev, path):
    # the longest that fits in aiohttp's 8 KiB request line, url-encoded
    query = urllib.parse.urlencode({"filter": "(" * 2500})
    status, body = _status(dev, "GET", f"{path}?{query}", None)  # type: ignore[arg-type]
    assert status == 400, body
    assert "filter nested deeper than" in body


def test_good_registration_still_works(dev):
    dev.put("/v1/agent/service/register", {"Name": "fine", "Port": 8080.0, "Weights": {"Passing": 3, "Warning": 1}})
    service = dev.get("/v1/agent/service/fine")
    assert service["Port"] == 8080 and service["Weights"] == {"Passing": 3, "Warning": 1}
    assert dev.get("/v1/agent/services?" + urllib.parse.urlencode({"filter": "((Service == fine))"})).keys() == {"fine"}


def _raw_http(dev, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", dev.http_port), timeout=5) as s:
        s.sendall(payload)
        return s.recv(200)


def test_malformed_http_requests_get_400_and_one_quiet_line(dev):
    requests = [
        b"GET / HTTP/1.1\r\nHost\r\n\r\n",  # header without a colon
        b"GET /\x00 HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to HTTP\r\n\r\n",
    ]
    assert len(requests[0]) < 31
    for _ in range(10):
        for payload in requests:
            assert _raw_http(dev, payload).startswith(b"HTTP/1.0 400")
    retry(lambda: "http_malformed_request" in dev.log_tail(400), 5, 0.05, "the malformed request logged")
    lines = [line for line in dev.log_tail(2000).splitlines() if "http_malformed_request" in line]
    assert 1 <= len(lines) <= 10, lines  # 40 bad requests: a burst, then held back
    assert all("[debug" in line for line in lines), lines


def test_http_api_refuses_script_checks_under_enable_local_script_checks(dev, tmp_path):
    marker = tmp_path / "ran"
    script = ["/bin/sh", "-c", f"touch {marker}"]
    status, body = _status(dev, "PUT", "/v1/agent/check/register",
                           json.dumps({"Name": "evil", "Args": script, "Interval": "1s"}).encode())
    assert status == 400 and "enable_script_checks" in body, body
    status, body = _status(dev, "PUT", "/v1/agent/service/register",
                           json.dumps({"Name": "evil", "Check": {"Args": script, "Interval": "1s"}}).encode())
    assert status == 400 and "enable_script_checks" in body, body
    definition = tmp_path / "evil.hcl"
    definition.write_text(f'service {{\n  name = "evil2"\n  check {{\n    args = ["/bin/sh", "-c", "touch {marker}"]\n'
                          '    interval = "1s"\n  }\n}\n')
    cli = subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "services", "register",
                          "-http-addr", dev.http, str(definition)], capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert cli.returncode == 1 and "enable_script_checks" in cli.stderr, (cli.stdout, cli.stderr)
    assert "evil" not in dev.get("/v1/agent/checks") and "evil2" not in dev.get("/v1/agent/services")
    assert not os.path.exists(marker)


def _local_check(dev):
    check = dev.get("/v1/agent/checks").get("local-script")
    return check if check and "local-script-ran" in check["Output"] else None


def test_config_file_script_check_runs_and_its_output_is_capped(dev):
    check = retry(lambda: _local_check(dev), 15, 0.1, "the config file's script check ran")
    assert check["Status"] == "passing"
    # 100,000 bytes printed, OutputMaxSize 1,000,000: the agent's 4096 wins (plus a short note)
    assert len(check["Output"].encode()) <= 4096 + 100, len(check["Output"])


def test_api_output_max_size_cannot_raise_the_agents_limit(dev):
    dev.put("/v1/agent/check/register", {"Name": "big", "TTL": "60s", "OutputMaxSize": 500000})
    dev.put("/v1/agent/check/update/big", {"Status": "passing", "Output": "y" * 500000})
    output = dev.get("/v1/agent/checks")["big"]["Output"]
    assert len(output) <= 4096 + 100, len(output)
    dev.put("/v1/agent/check/register", {"Name": "small", "TTL": "60s", "OutputMaxSize": 10})
    dev.put("/v1/agent/check/update/small", {"Status": "passing", "Output": "z" * 1000})
    assert dev.get("/v1/agent/checks")["small"]["Output"].startswith("z" * 10 + " ")


def test_no_traceback_and_no_error_line_after_all_of_it(dev):
    """Runs last in this file: everything above went through the same agent."""
    assert dev.alive()
    assert dev.get("/v1/status/leader")
    log = dev.log_tail(100000)
    assert "Traceback" not in log, log[-3000:]
    assert "[error" not in log, [line for line in log.splitlines() if "[error" in line][:5]
