"""Issue 10, the HTTP listener, replayed against a real dev agent.

Before the fix: 300 connections holding half a header stayed open for minutes, one
address could hold any number of connections, a 1.5 MB gzip upload to /v1/snapshot
decompressed to 3.2 GB on the event loop, and 1,000 blocking queries whose clients had
gone kept waiting (and slowing every write to their service) for up to 10 minutes.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time

import pytest

from mesh.agent.http.system import SNAPSHOT_MAGIC
from tests.harness.cluster import (
    Agent,
    HTTPError,
    closed_within,
    dev_agent,
    metric_value,
    retry,
    rss_kib,
)

HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.0
PER_CLIENT = 1000  # limits.http_max_conns_per_client (default 200): filled by blocking queries below


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http-limits")
    conf = tmp / "limits.json"
    conf.write_text(json.dumps({"limits": {"http_max_conns_per_client": PER_CLIENT,
                                           "http_header_timeout": f"{HEADER_TIMEOUT}s",
                                           "http_idle_timeout": f"{IDLE_TIMEOUT}s"}}))
    agent = dev_agent(tmp, extra=["-config-file", str(conf)])
    try:
        yield agent
    finally:
        agent.kill()


def metric(agent: Agent, name: str, **labels: str) -> float:
    """From 127.0.0.2, so that it is answered while 127.0.0.1 is at its cap."""
    conn = http.client.HTTPConnection("127.0.0.1", agent.http_port, timeout=5, source_address=("127.0.0.2", 0))
    try:
        conn.request("GET", "/v1/agent/metrics")
        data = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return metric_value(data, name, **labels)


def connect(agent: Agent, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", agent.http_port), timeout=5, source_address=(source, 0))


def timed_get(agent: Agent, path: str = "/v1/status/leader", source: str = "127.0.0.1") -> float:
    """Seconds for one GET on a fresh connection from `source`, response read whole."""
    t0 = time.monotonic()
    with connect(agent, source) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return time.monotonic() - t0


def test_half_headers_are_closed_after_the_header_timeout(dev):
    held = []
    try:
        for _ in range(300):
            s = connect(dev)
            s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(s)
        assert timed_get(dev) < 0.5  # others are still answered meanwhile
        t0 = time.monotonic()
        assert all(closed_within(s, HEADER_TIMEOUT + 3 - (time.monotonic() - t0)) for s in held)
    finally:
        for s in held:
            s.close()
    assert metric(dev, "mesh.http.connections.rejected", reason="header_timeout") >= 300


def test_idle_keep_alive_connections_are_closed_after_the_idle_timeout(dev):
    with connect(dev) as s:
        s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(2)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert closed_within(s, IDLE_TIMEOUT + 3)
        assert time.monotonic() - t0 > IDLE_TIMEOUT * 0.5  # kept alive for a while first


def test_abandoned_blocking_queries_stop_at_once_and_one_address_cannot_hold_more(dev):
    """1,000 blocking queries from one address fill its connection cap: the next
    connection is closed at once while another address is served; when the 1,000
    clients disconnect, their waits end at once instead of after ?wait."""
    dev.put("/v1/catalog/register", {"Node": "ext", "Address": "10.0.0.9", "Service": {"Service": "web", "Port": 80}})
    _, headers = dev.request("GET", "/v1/health/service/web")
    request = f"GET /v1/health/service/web?index={headers['X-Consul-Index']}&wait=5m HTTP/1.1\r\nHost: x\r\n\r\n"
    waiters = []
    try:
        for _ in range(PER_CLIENT):
            s = connect(dev)
            s.sendall(request.encode())
            waiters.append(s)
        retry(lambda: metric(dev, "mesh.http.blocking.queries") >= PER_CLIENT, 20, 0.1, "blocking queries waiting")
        extra = connect(dev)
        extra.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_within(extra, 0.5)
        extra.close()
        assert timed_get(dev, source="127.0.0.2") < 0.5  # another address is not affected
        assert metric(dev, "mesh.http.connections.rejected", reason="per_client_limit") >= 1
    finally:
        for s in waiters:
            s.close()
    t0 = time.monotonic()
    retry(lambda: metric(dev, "mesh.http.blocking.queries") == 0, 5, 0.05, "abandoned waiters cancelled")
    assert time.monotonic() - t0 < 3
    assert timed_get(dev) < 0.5  # and the address's slots are free again


def _bomb(decompressed_mib: int) -> bytes:
    """A valid-looking mesh snapshot header followed by zeros, ~1,000:1: gzip members
    of 64 MiB of zeros back to back (gzip allows that), so building it is quick."""
    member = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    head = gzip.compress(SNAPSHOT_MAGIC + b"\0" * 32)
    return head + member * (decompressed_mib // 64)


def test_a_gzip_bomb_snapshot_is_refused_with_bounded_memory_while_others_are_served(dev):
    body = _bomb(1536)  # 1.5 MB that would decompress to 1.5 GiB
    assert len(body) < 2_000_000
    peak_before = rss_kib(dev, "VmHWM")
    result: dict[str, object] = {}

    def upload() -> None:
        t0 = time.monotonic()
        try:
            dev.request("PUT", "/v1/snapshot", raw=body, timeout=60)
            result["status"] = 200
        except HTTPError as exc:
            result["status"], result["body"] = exc.status, exc.body
        result["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=upload)
    thread.start()
    slowest = 0.0
    while thread.is_alive():
        slowest = max(slowest, timed_get(dev))
    thread.join(60)
    assert result["status"] == 400, result
    assert "too large" in str(result["body"])
    assert float(result["seconds"]) < 15, result  # type: ignore[arg-type]
    assert slowest < 0.5, f"other requests waited {slowest:.2f}s"
    growth_mib = (rss_kib(dev, "VmHWM") - peak_before) / 1024
    assert growth_mib < 450, f"peak RSS grew by {growth_mib:.0f} MiB"
    assert "Traceback" not in dev.log_tail(200)


def test_bounded_gunzip_matches_gzip_below_the_limit_and_refuses_past_it():
    import hashlib
    import os

    from mesh.agent.http.system import _gunzip_bounded, decode_snapshot
    from mesh.catalog.errors import InvalidRequest
    from mesh.catalog.fsm import FSM

    for size in (0, 1, 4097, (1 << 20) + 7, 3 << 20):
        raw = os.urandom(size // 2) + b"\0" * (size - size // 2)
        assert _gunzip_bounded(gzip.compress(raw), 1 << 30) == raw
        assert _gunzip_bounded(gzip.compress(raw) * 2, 1 << 30) == raw * 2  # several members
    with pytest.raises(InvalidRequest, match="too large"):
        _gunzip_bounded(gzip.compress(b"\0" * (5 << 20)), 4 << 20)
    with pytest.raises(InvalidRequest, match="bad header"):
        _gunzip_bounded(gzip.compress(b"\0" * (5 << 20)), 4 << 20, SNAPSHOT_MAGIC)  # refused at the first chunk
    data = FSM().snapshot()
    good = gzip.compress(SNAPSHOT_MAGIC + hashlib.sha256(data).digest() + data)
    assert decode_snapshot(good) == data
    for bad in (b"", b"x", good[:-5], good + b"junk"):
        with pytest.raises(InvalidRequest, match="not a mesh snapshot"):
            decode_snapshot(bad)
