"""Check runners against real sockets and processes on 127.0.0.1, and the status state machine."""

from __future__ import annotations

import asyncio
import datetime
import os
import random
import socket
import ssl
import time
from types import SimpleNamespace

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mesh.agent.checks.runners import (
    SCRIPTS_DISABLED,
    AliasCheck,
    HTTPCheck,
    ScriptCheck,
    TCPCheck,
    TTLCheck,
    make_runner,
)
from mesh.agent.checks.state import CheckState
from mesh.agent.local.checks import scripts_allowed
from mesh.agent.local.definitions import CheckDefinition, output_limit, parse_check
from mesh.agent.metrics import REGISTRY
from mesh.catalog.errors import InvalidRequest


class Updates:
    """The on_update callback: records every report and wakes waiters."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self._changed = asyncio.Event()

    def __call__(self, check_id: str, status: str, output: str) -> None:
        self.calls.append((check_id, status, output))
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = 2.0) -> tuple[str, str, str]:
        async with asyncio.timeout(timeout):
            while len(self.calls) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.calls[count - 1]


def runner_for(body: dict, updates: Updates, **kwargs):
    defn = parse_check({"Name": "c", **body}, what="check")
    return make_runner(defn, updates, enable_script_checks=True, min_interval=0, **kwargs)


# --- state machine -------------------------------------------------------------------

P, W, C = "passing", "warning", "critical"


@pytest.mark.parametrize(
    "initial, thresholds, results, reported",
    [
        (C, {}, [P, C, W, P], [P, C, W, P]),
        (C, {"success_before_passing": 1}, [P], [P]),
        (C, {"success_before_passing": 3}, [P, P, P, P], [None, None, P, P]),
        (C, {"success_before_passing": 2}, [P, C, P, P], [None, C, None, P]),
        (P, {"failures_before_critical": 3}, [C, C, C, C], [None, None, C, C]),
        (P, {"failures_before_critical": 3}, [C, C, P, C, C], [None, None, P, None, None]),
        (P, {"failures_before_warning": 1, "failures_before_critical": 3}, [C, C, C], [W, W, C]),
        (P, {"failures_before_warning": 2, "failures_before_critical": 0}, [C], [C]),
        (P, {"failures_before_critical": 2}, [C, C], [None, C]),  # warning threshold defaults to critical's
        (C, {"success_before_passing": 2}, [W, W], [None, W]),  # warning counts as a success, reported as is
        (P, {}, [W], [W]),
    ],
)
def test_state_machine(initial, thresholds, results, reported):
    state = CheckState(initial, **thresholds)
    got = []
    for i, status in enumerate(results):
        out = state.observe(status, f"out{i}")
        got.append(out[0] if out else None)
        if out:
            assert out == (state.status, f"out{i}")
    assert got == reported


def test_state_machine_keeps_the_reported_status_while_held_back():
    state = CheckState(P, failures_before_critical=2)
    assert state.observe(C, "down") is None
    assert state.status == P
    with pytest.raises(ValueError):
        state.observe("ok", "")
    with pytest.raises(ValueError):
        CheckState("unknown")


# --- HTTP ----------------------------------------------------------------------------


@pytest.fixture
async def http_server():
    release = asyncio.Event()

    async def ok(_):
        return web.Response(text="ok")

    async def busy(_):
        return web.Response(status=429, text="slow down")

    async def fail(_):
        return web.Response(status=500, text="boom")

    async def slow(_):
        await release.wait()
        return web.Response(text="late")

    async def echo(request):
        body = await request.text()
        return web.Response(text=f"{request.method}|{request.headers.get('X-A')}|{body}|{request.headers['User-Agent']}")

    async def big(_):
        return web.Response(text="x" * 10000)

    async def redirect(_):
        raise web.HTTPFound("/ok")

    app = web.Application()
    for path, handler in [("/ok", ok), ("/busy", busy), ("/fail", fail), ("/slow", slow), ("/big", big),
                          ("/redirect", redirect)]:
        app.router.add_get(path, handler)
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    release.set()
    await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "path, status, output",
    [
        ("/ok", P, "200 OK Output: ok"),
        ("/busy", W, "429 Too Many Requests Output: slow down"),
        ("/fail", C, "500 Internal Server Error Output: boom"),
        ("/redirect", P, "200 OK Output: ok"),
    ],
)
async def test_http_status_mapping(http_server, path, status, output):
    updates = Updates()
    r = runner_for({"HTTP": http_server + path, "Interval": "10s"}, updates)
    assert isinstance(r, HTTPCheck)
    await r.check_once()
    assert updates.calls == [("c", status, f"HTTP GET {http_server}{path}: {output}")]


async def test_http_redirects_can_be_disabled(http_server):
    updates = Updates()
    r = runner_for({"HTTP": http_server + "/redirect", "Interval": "10s", "DisableRedirects": True}, updates)
    await r.check_once()
    assert updates.calls[0][1] == C and ": 302 Found Output:" in updates.calls[0][2]


async def test_http_method_headers_and_body(http_server):
    updates = Updates()
    r = runner_for({"HTTP": http_server + "/echo", "Method": "POST", "Header": {"X-A": ["b"]}, "Body": "hello",
                    "Interval": "10s"}, updates)
    await r.check_once()
    assert updates.calls[0][1:] == (P, f"HTTP POST {http_server}/echo: 200 OK Output: POST|b|hello|Consul Health Check")


async def test_http_output_is_truncated(http_server):
    updates = Updates()
    r = runner_for({"HTTP": http_server + "/big", "Interval": "10s", "OutputMaxSize": 100}, updates)
    await r.check_once()
    assert updates.calls[0][2] == f"HTTP GET {http_server}/big: 200 OK Output: " + "x" * 100


async def test_http_timeout_is_critical(http_server):
    updates = Updates()
    r = runner_for({"HTTP": http_server + "/slow", "Interval": "10s", "Timeout": "200ms"}, updates)
    start = time.monotonic()
    await r.check_once()
    assert time.monotonic() - start < 2
    assert updates.calls == [("c", C, f"HTTP GET {http_server}/slow: timed out after 200ms")]


async def test_http_connection_refused_is_critical():
    updates = Updates()
    url = f"http://127.0.0.1:{closed_port()}/"
    r = runner_for({"HTTP": url, "Interval": "10s", "Timeout": "2s"}, updates)
    await r.check_once()
    (_, status, output), = updates.calls
    assert status == C and output.startswith(f"HTTP GET {url}: ") and len(output) > len(url) + 11


async def test_http_run_loop_reports_only_changes_and_closes_its_session(http_server):
    updates = Updates()
    sleeps: list[float] = []
    enough = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 4:
            enough.set()
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    r = runner_for({"HTTP": http_server + "/ok", "Interval": "5s"}, updates, rng=random.Random(7), sleep=fake_sleep)
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(enough.wait(), 5)
    assert sleeps == [random.Random(7).random() * 5, 5, 5, 5]
    assert len(updates.calls) == 1 and updates.calls[0][1] == P  # three probes, one change
    assert r._session is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert r._session is None


def _self_signed(tmp_path) -> ssl.SSLContext:
    """A server context with a throwaway certificate for "web.local" that no CA signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web.local")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("web.local")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return ctx


async def test_https_verifies_unless_told_to_skip(tmp_path):
    async def hello(_):
        return web.Response(text="secure")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=_self_signed(tmp_path))
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}/"
    try:
        updates = Updates()
        await runner_for({"HTTP": url, "Interval": "10s", "TLSServerName": "web.local"}, updates).check_once()
        assert updates.calls[0][1] == C and "certificate" in updates.calls[0][2].lower()
        updates = Updates()
        await runner_for({"HTTP": url, "Interval": "10s", "TLSSkipVerify": True}, updates).check_once()
        assert updates.calls == [("c", P, f"HTTP GET {url}: 200 OK Output: secure")]
        trusting = ssl.create_default_context(cafile=tmp_path / "cert.pem")
        updates = Updates()
        await runner_for({"HTTP": url, "Interval": "10s"}, updates, tls_context=trusting).check_once()
        assert updates.calls[0][1] == C and "127.0.0.1" in updates.calls[0][2]  # the name does not match
        updates = Updates()
        await runner_for({"HTTP": url, "Interval": "10s", "TLSServerName": "web.local"}, updates,
                         tls_context=trusting).check_once()
        assert updates.calls == [("c", P, f"HTTP GET {url}: 200 OK Output: secure")]
    finally:
        await runner.cleanup()


# --- TCP -----------------------------------------------------------------------------


async def test_tcp_connect_success_and_failure():
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        updates = Updates()
        r = runner_for({"TCP": f"127.0.0.1:{port}", "Interval": "10s"}, updates)
        assert isinstance(r, TCPCheck)
        await r.check_once()
        assert updates.calls == [("c", P, f"TCP connect 127.0.0.1:{port}: Success")]
    finally:
        server.close()
        await server.wait_closed()
    dead = closed_port()
    updates = Updates()
    r = runner_for({"TCP": f"127.0.0.1:{dead}", "Interval": "10s"}, updates)
    await r.check_once()
    (_, status, output), = updates.calls
    assert status == C and output.startswith(f"TCP connect 127.0.0.1:{dead}: ") and "refused" in output.lower()


async def test_thresholds_hold_back_reports_and_count_runs():
    before = REGISTRY.get_sample_value("mesh_check_runs_total", {"kind": "tcp", "status": "critical"}) or 0
    updates = Updates()
    r = runner_for({"TCP": f"127.0.0.1:{closed_port()}", "Interval": "10s", "Status": "passing",
                    "FailuresBeforeCritical": 3}, updates)
    for _ in range(2):
        await r.check_once()
    assert updates.calls == [] and r.status == P
    await r.check_once()
    assert [c[1] for c in updates.calls] == [C]
    after = REGISTRY.get_sample_value("mesh_check_runs_total", {"kind": "tcp", "status": "critical"})
    assert after == before + 3
    assert REGISTRY.get_sample_value("mesh_check_seconds_count", {"kind": "tcp"}) >= 3


async def test_a_failing_callback_does_not_stop_the_check():
    def broken(*_):
        raise RuntimeError("owner bug")

    defn = parse_check({"Name": "c", "TCP": f"127.0.0.1:{closed_port()}", "Interval": "1s"}, what="check")
    r = make_runner(defn, broken, enable_script_checks=False, min_interval=0)
    await r.check_once()
    assert r.status == C


# --- script --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "script, status, output",
    [
        ("echo fine", P, "fine\n"),
        ("echo meh; exit 1", W, "meh\n"),
        ("echo out; echo err >&2; exit 2", C, "out\nerr\n"),
        ("kill -9 $$", C, ""),
    ],
)
async def test_script_exit_codes(script, status, output):
    updates = Updates()
    r = runner_for({"Args": ["/bin/sh", "-c", script], "Interval": "10s"}, updates)
    assert isinstance(r, ScriptCheck)
    result = await r.check_once()
    assert result == (status, output)


async def test_script_output_keeps_the_tail():
    updates = Updates()
    r = runner_for({"Args": ["/bin/sh", "-c", "printf 0123456789abcdefghij"], "Interval": "10s",
                    "OutputMaxSize": 10}, updates)
    await r.check_once()
    assert updates.calls == [("c", P, "Captured 10 of 20 bytes\n...\nabcdefghij")]


def _exists(pid: int) -> bool:
    """Any process with this PID, a zombie included."""
    return os.path.exists(f"/proc/{pid}")


def _gone(pid: int) -> bool:
    """Dead: no such process, or a zombie whose parent (not us) has not reaped it yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def _wait_gone(pid: int) -> bool:
    for _ in range(100):
        if _gone(pid):
            return True
        await asyncio.sleep(0.01)
    return False


async def test_script_timeout_kills_the_process_group(tmp_path):
    pids = tmp_path / "pids"
    updates = Updates()
    r = runner_for({"Args": ["/bin/sh", "-c", f"sleep 10 & echo $$ $! > {pids}; wait"], "Interval": "10s",
                    "Timeout": "500ms"}, updates)
    start = time.monotonic()
    await r.check_once()
    assert time.monotonic() - start < 3
    assert updates.calls == [("c", C, "Timed out (500ms) running check")]
    shell, child = (int(p) for p in pids.read_text().split())
    assert not _exists(shell)  # killed and reaped: no zombie left behind
    assert await _wait_gone(child)  # the script's own child went with it


async def test_cancelling_a_script_kills_it(tmp_path):
    pids = tmp_path / "pids"
    updates = Updates()
    r = runner_for({"Args": ["/bin/sh", "-c", f"echo $$ > {pids}; sleep 10"], "Interval": "30s"}, updates)
    task = asyncio.create_task(r.check_once())
    for _ in range(200):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _exists(int(pids.read_text()))
    assert updates.calls == []


async def test_script_that_cannot_start_is_critical():
    updates = Updates()
    r = runner_for({"Args": ["/nonexistent/check"], "Interval": "10s"}, updates)
    await r.check_once()
    assert updates.calls[0][1] == C and "Failed to invoke check '/nonexistent/check'" in updates.calls[0][2]


def test_scripts_disabled_is_refused_with_consuls_message():
    defn = parse_check({"Name": "s", "Args": ["/bin/true"], "Interval": "10s"}, what="check")
    with pytest.raises(InvalidRequest) as err:
        make_runner(defn, Updates(), enable_script_checks=False)
    assert str(err.value) == SCRIPTS_DISABLED
    assert "enable_script_checks" in SCRIPTS_DISABLED


# --- TTL -----------------------------------------------------------------------------


async def test_ttl_expires_and_updates_reset_it():
    updates = Updates()
    r = runner_for({"TTL": "300ms"}, updates)
    assert isinstance(r, TTLCheck)
    task = asyncio.create_task(r.run())
    try:
        assert await updates.wait_for(1) == ("c", C, "TTL expired")
        r.update(P, "all good")
        assert updates.calls[1] == ("c", P, "all good")
        await asyncio.sleep(0.2)
        r.update(P, "all good")  # same report: no callback, but the TTL starts over
        await asyncio.sleep(0.15)
        assert len(updates.calls) == 2  # 350 ms after the first update, 150 ms after the second
        assert await updates.wait_for(3) == ("c", C, "TTL expired (last output before timeout follows): all good")
        r.update(W, "hmm")
        assert updates.calls[3] == ("c", W, "hmm")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_ttl_update_validates_and_truncates():
    updates = Updates()
    r = runner_for({"TTL": "10s", "OutputMaxSize": 5}, updates)
    r.update("passing", "abcdefghij")
    assert updates.calls == [("c", P, "abcde ... (captured 5 of 10 bytes)")]
    with pytest.raises(InvalidRequest, match="Unknown check status"):
        r.update("fine", "")


async def test_ttl_with_a_fake_clock():
    now = [100.0]
    woke = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        now[0] += seconds
        woke.set()
        await asyncio.sleep(0)

    updates = Updates()
    r = runner_for({"TTL": "30s", "Status": "passing"}, updates, clock=lambda: now[0], sleep=fake_sleep)
    task = asyncio.create_task(r.run())
    try:
        assert await updates.wait_for(1) == ("c", C, "TTL expired")
        assert now[0] >= 130.0
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- alias ---------------------------------------------------------------------------


async def test_alias_mirrors_the_worst_status():
    answers: list = [[P, P], [P, W], [C, W], [], None, OSError("servers down")]

    async def fetch():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    updates = Updates()
    r = runner_for({"AliasService": "db"}, updates, alias_fetch=fetch)
    assert isinstance(r, AliasCheck) and r.interval == 1.0
    for _ in range(6):
        await r.check_once()
    assert [c[1:] for c in updates.calls] == [
        (P, "All checks passing."),
        (W, "At least one check of 'db' is warning"),
        (C, "At least one check of 'db' is critical"),
        (P, "No checks found."),
        (C, "Aliased service 'db' not found"),
    ]  # an unreachable server changes nothing


async def test_alias_runs_at_once_then_every_interval():
    sleeps: list[float] = []
    enough = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:
            enough.set()
            await asyncio.Event().wait()

    async def fetch():
        return [P]

    updates = Updates()
    r = runner_for({"AliasNode": "n1", "Interval": "3s"}, updates, alias_fetch=fetch, sleep=fake_sleep)
    task = asyncio.create_task(r.run())
    await asyncio.wait_for(enough.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sleeps == [3.0, 3.0] and updates.calls == [("c", P, "All checks passing.")]


# --- factory -------------------------------------------------------------------------


def test_make_runner_kinds_and_limits():
    updates = Updates()
    bare = parse_check({"Name": "b", "Status": "passing"}, what="check")
    assert make_runner(bare, updates, enable_script_checks=False) is None
    alias = parse_check({"Name": "a", "AliasService": "db"}, what="check")
    with pytest.raises(ValueError):
        make_runner(alias, updates, enable_script_checks=False)
    grpc = CheckDefinition(check_id="g", name="g", kind="grpc", grpc="127.0.0.1:1", interval=10)
    with pytest.raises(InvalidRequest, match="GRPC checks are not supported yet"):
        make_runner(grpc, updates, enable_script_checks=False)
    fast = parse_check({"Name": "h", "HTTP": "http://127.0.0.1/", "Interval": "100ms", "Timeout": "30s"}, what="check")
    r = make_runner(fast, updates, enable_script_checks=False)
    assert r.interval == 1.0 and r.timeout == 1.0  # Consul's one-second floor; a probe fits its interval
    slow = parse_check({"Name": "h", "HTTP": "http://127.0.0.1/", "Interval": "1m", "Timeout": "2s"}, what="check")
    assert make_runner(slow, updates, enable_script_checks=False).timeout == 2.0


# --- output limits and who may run scripts (issue 10) ---------------------------------


@pytest.mark.parametrize("check_value, agent_limit, kept", [
    (0, 4096, 4096),  # unset: the agent's limit
    (10, 4096, 10),  # a check may lower it
    (500000, 4096, 4096),  # never raise it
    (0, 100, 100),
    (8192, 16384, 8192),
])
def test_output_limit_only_lowers_the_agents(check_value, agent_limit, kept):
    assert output_limit(check_value, agent_limit) == kept
    defn = parse_check({"Name": "c", "TTL": "10s", "OutputMaxSize": check_value}, what="check")
    assert make_runner(defn, Updates(), enable_script_checks=False, output_max_size=agent_limit).output_max_size == kept


def test_ttl_output_is_capped_by_the_agent_limit():
    updates = Updates()
    r = runner_for({"TTL": "10s", "OutputMaxSize": 500000}, updates, output_max_size=8)
    r.update("passing", "y" * 500000)
    assert updates.calls == [("c", P, "yyyyyyyy ... (captured 8 of 500000 bytes)")]


async def test_script_output_is_capped_by_the_agent_limit():
    updates = Updates()
    r = runner_for({"Args": ["/bin/sh", "-c", "printf 0123456789abcdefghij"], "Interval": "10s",
                    "OutputMaxSize": 1000000}, updates, output_max_size=5)
    await r.check_once()
    assert updates.calls == [("c", P, "Captured 5 of 20 bytes\n...\nfghij")]


@pytest.mark.parametrize("script, local, source, allowed", [
    (False, False, "config", False),
    (False, True, "config", True),  # enable_local_script_checks: config files only
    (False, True, "api", False),
    (True, False, "api", True),
    (True, False, "config", True),
    (False, True, "internal", False),
])
def test_scripts_allowed_by_source(script, local, source, allowed):
    cfg = SimpleNamespace(enable_script_checks=script, enable_local_script_checks=local)
    assert scripts_allowed(cfg, source) is allowed
