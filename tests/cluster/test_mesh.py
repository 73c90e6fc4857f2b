"""The mesh end to end with real processes (issue 12): 3 servers, 2 client agents that
register the demo apps with sidecars and supervise their proxies, and the demo apps.

    web (c1) -> web-1-sidecar-proxy (c1) ==mTLS==> api-N-sidecar-proxy -> api-N
                                                  api-1 on c2, api-2 on c1

Every request goes to the demo `web`, which calls its sidecar's upstream listener for
`api` with a new connection each time. One cluster serves the whole module; the tests
that break something put it back (an api app is restarted) or come last (an agent
killed and restarted, then every server stopped). Every process is killed by PID at the
end, the proxies too (they outlive a killed agent by design).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import (
    Agent,
    Cluster,
    free_port,
    kill_proxies,
    retry,
    sidecar_range,
)
from tests.harness.cluster import proxy_pids as harness_proxy_pids
from tests.harness.testca import TestCA

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

DEMO = str(Path(__file__).resolve().parents[2] / "examples" / "demo" / "app.py")
WEB, API1, API2 = "web-1", "api-1", "api-2"
SIDECAR = "{}-sidecar-proxy".format
HTTP_GET = b"GET / HTTP/1.0\r\nHost: api\r\n\r\n"


# ---- processes ------------------------------------------------------------------------------
@dataclass
class App:
    """One demo app process (examples/demo/app.py), killed by PID."""

    role: str
    port: int
    log_path: str
    upstream: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> App:
        argv = [sys.executable, DEMO, self.role, f"127.0.0.1:{self.port}"]
        if self.upstream:
            argv += ["-upstream", f"127.0.0.1:{self.upstream}"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd="/")
        retry(lambda: _connects(self.port), 10, 0.05, f"{self.role} app on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _connects(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def proxy_pids(agent: Agent, parent_id: str) -> list[int]:
    return harness_proxy_pids(agent.http, parent_id)


# ---- the shared cluster ---------------------------------------------------------------------
@dataclass
class Mesh:
    cluster: Cluster
    c1: Agent
    c2: Agent
    tmp: Path
    web: App
    api1: App
    api2: App
    upstream_port: int
    pids: set[int] = field(default_factory=set)  # every proxy PID ever seen, for the cleanup

    def proxies(self, agent: Agent) -> dict[str, Any]:
        found = agent.get("/v1/agent/mesh/proxies", timeout=5)
        self.pids.update(p["PID"] for p in found.values() if p.get("PID"))
        return found

    def ready(self, agent: Agent, *ids: str) -> dict[str, Any]:
        """/v1/agent/mesh/proxies once every sidecar of `ids` reports ready."""
        found = self.proxies(agent)
        return found if all(found.get(SIDECAR(i), {}).get("State") == "ready" for i in ids) else {}

    def public_port(self, agent: Agent, parent: str) -> int:
        return int(agent.get(f"/v1/agent/service/{SIDECAR(parent)}")["Port"])

    def call(self, timeout: float = 5) -> tuple[int, str]:
        """GET / on web: (status, body); (0, the error) when web itself did not answer."""
        conn = http.client.HTTPConnection("127.0.0.1", self.web.port, timeout=timeout)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as exc:
            return 0, f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()

    def answered_by(self, body: str) -> int:
        """Which api instance (its port) answered a request through web, 0 for none."""
        for app in (self.api1, self.api2):
            if "-> api: hello from api (" in body and body.rstrip().endswith(f":{app.port})"):
                return app.port
        return 0

    def ok(self) -> str:
        status, body = self.call()
        return body if status == 200 and "-> api: hello from api" in body else ""

    def leaf(self, agent: Agent, service: str, directory: Path) -> tuple[str, str]:
        """The agent's leaf for `service` written as (cert path, key path)."""
        leaf = retry(lambda: agent.get(f"/v1/agent/connect/ca/leaf/{service}"), 10, 0.1, f"leaf for {service}")
        cert, key = directory / f"{service}.crt", directory / f"{service}.key"
        cert.write_text(leaf["CertPEM"])
        key.write_text(leaf["PrivateKeyPEM"])
        return str(cert), str(key)

    def roots(self, agent: Agent, path: Path) -> str:
        pem, _ = agent.request("GET", "/v1/agent/connect/ca/roots?pem=true")
        path.write_bytes(pem)
        return str(path)

    def logs(self) -> str:
        parts = [self.cluster.logs()]
        for agent in self.cluster.clients:
            for log in sorted(Path(agent.data_dir, "proxies").glob("*.log")):
                lines = log.read_bytes().splitlines()[-30:]
                parts.append(f"--- {agent.name} {log.name} ---\n" + b"\n".join(lines).decode("utf-8", "replace"))
        for app in (self.web, self.api1, self.api2):
            with contextlib.suppress(OSError):
                lines = Path(app.log_path).read_bytes().splitlines()[-10:]
                parts.append(f"--- {app.role} {app.port} ---\n" + b"\n".join(lines).decode("utf-8", "replace"))
        return "\n".join(parts)

    def cleanup(self) -> None:
        """Agents first (so none restarts a proxy), then every proxy any of them ran (by
        the PIDs seen and the pidfiles left behind), then the apps."""
        self.cluster.stop()
        kill_proxies(self.cluster.clients, self.pids)
        for app in (self.web, self.api1, self.api2):
            app.kill()


def mesh_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def _register(agent: Agent, parent: str, name: str, port: int, sidecar: dict[str, Any]) -> None:
    agent.put("/v1/agent/service/register", {
        "ID": parent, "Name": name, "Port": port,
        "Check": {"CheckID": f"{parent}-tcp", "TCP": f"127.0.0.1:{port}", "Interval": "1s", "Timeout": "1s"},
        "Connect": {"SidecarService": sidecar}})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("mesh")
    policy = ["-default-intention-policy", "deny"]
    cluster = Cluster(tmp, 3, extra_args=policy)
    upstream = free_port()
    m = Mesh(cluster, None, None, tmp,  # type: ignore[arg-type]
             App("web", free_port(), str(tmp / "web.log"), upstream=upstream),
             App("api", free_port(), str(tmp / "api1.log")), App("api", free_port(), str(tmp / "api2.log")),
             upstream)
    try:
        cluster.start()
        base = 0
        for name in ("c1", "c2"):
            base = sidecar_range(8, base)
            agent = cluster.start_client(name, [*policy, "-sidecar-min-port", str(base),
                                                "-sidecar-max-port", str(base + 7)])
            setattr(m, name, agent)
        m.api1.start()
        m.api2.start()
        m.web.start()
        _register(m.c2, API1, "api", m.api1.port, {})
        _register(m.c1, API2, "api", m.api2.port, {})
        _register(m.c1, WEB, "web", m.web.port,
                  {"Proxy": {"Upstreams": [{"DestinationName": "api", "LocalBindPort": upstream}]}})
        out = mesh_cli("intention", "create", "-http-addr", cluster.agents[0].http, "web", "api")
        assert out.returncode == 0, out.stderr
        retry(lambda: m.ready(m.c1, WEB, API2), 30, 0.1, "web's and api-2's sidecars ready on c1")
        retry(lambda: m.ready(m.c2, API1), 30, 0.1, "api-1's sidecar ready on c2")
        retry(lambda: len(m.c1.get("/v1/health/connect/api?passing")) == 2, 20, 0.1, "both api sidecars passing")
        yield m
    except BaseException:
        print(m.logs())
        raise
    finally:
        m.cleanup()


@pytest.fixture(autouse=True)
def _logs_on_failure(request, mesh):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(mesh.logs())


def _both_instances_answer(m: Mesh) -> bool:
    seen = set()
    for _ in range(8):
        body = m.ok()
        assert body, "a request through the mesh failed"
        seen.add(m.answered_by(body))
    return seen == {m.api1.port, m.api2.port}


class Traffic:
    """Requests through web, back to back, in a thread, while a test does something;
    `results` holds (time sent, status, body)."""

    def __init__(self, m: Mesh) -> None:
        self.m = m
        self.results: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()  # when the request was sent
            status, body = self.m.call()
            self.results.append((started, status, body))
            time.sleep(0.01)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if not (r[1] == 200 and "-> api: hello from api" in r[2])]


# ---- 1 -------------------------------------------------------------------------------------
def test_web_calls_api_through_both_sidecars(mesh):
    status, body = mesh.call()
    assert status == 200, body
    assert "-> api: hello from api" in body
    # both api instances are reached (round robin over the healthy sidecars)
    retry(lambda: _both_instances_answer(mesh), 10, 0.1, "both api instances answer")
    listed = mesh.proxies(mesh.c1)[SIDECAR(WEB)]
    assert listed["Listeners"]["Upstreams"] == {"api": f"127.0.0.1:{mesh.upstream_port}"}
    assert listed["Listeners"]["Public"].endswith(f":{mesh.public_port(mesh.c1, WEB)}")


# ---- 2 -------------------------------------------------------------------------------------
def test_deny_refuses_new_connections_within_a_second_and_allow_restores(mesh):
    assert mesh.ok()
    out = mesh_cli("intention", "create", "-http-addr", mesh.c1.http, "-deny", "-replace", "web", "api")
    written = time.monotonic()
    assert out.returncode == 0, out.stderr
    status, body = retry(lambda: (lambda r: r if r[0] == 502 else None)(mesh.call()), 3, 0.02, "denied")
    denied_after = time.monotonic() - written
    assert "could not reach api through the mesh" in body
    assert denied_after < 1.0, f"deny took {denied_after:.2f}s"
    # stays denied: every api instance refuses web now
    for _ in range(5):
        assert mesh.call()[0] == 502

    out = mesh_cli("intention", "create", "-http-addr", mesh.c1.http, "-allow", "-replace", "web", "api")
    written = time.monotonic()
    assert out.returncode == 0, out.stderr
    retry(mesh.ok, 3, 0.02, "allowed again")
    allowed_after = time.monotonic() - written
    assert allowed_after < 1.0, f"allow took {allowed_after:.2f}s"
    for _ in range(5):
        assert mesh.ok()


# ---- 3 -------------------------------------------------------------------------------------
def _s_client(port: int, directory: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    """openssl s_client to api-1's public listener sending one HTTP request; waits for
    the server to close (-ign_eof), bounded."""
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-ign_eof", *extra],
                          input=HTTP_GET, capture_output=True, timeout=20, cwd=directory)


def test_public_listener_requires_a_valid_client_certificate(mesh, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    port = mesh.public_port(mesh.c2, API1)
    roots = mesh.roots(mesh.c2, tmp_path / "roots.pem")
    web_cert, web_key = mesh.leaf(mesh.c1, "web", tmp_path)

    # a valid leaf for web (allowed by the intention): the handshake completes, and the
    # connection (one TLS connection, no mux: openssl offers no ALPN) reaches api
    good = _s_client(port, tmp_path, "-cert", web_cert, "-key", web_key, "-CAfile", roots)
    assert b"hello from api" in good.stdout, good.stderr.decode()
    assert b"Verify return code: 0 (ok)" in good.stdout

    # no client certificate: refused at the handshake, api never answers
    bare = _s_client(port, tmp_path, "-CAfile", roots)
    assert b"hello from api" not in bare.stdout
    assert b"alert" in bare.stderr.lower() or bare.returncode != 0, bare.stderr.decode()

    # a certificate for web from another CA (same trust domain name even): refused
    other = TestCA(trust_domain=mesh.c1.get("/v1/connect/ca/roots")["TrustDomain"])
    leaf = other.leaf("web")
    (tmp_path / "other.crt").write_text(leaf["CertPEM"])
    (tmp_path / "other.key").write_text(leaf["PrivateKeyPEM"])
    forged = _s_client(port, tmp_path, "-cert", "other.crt", "-key", "other.key", "-CAfile", roots)
    assert b"hello from api" not in forged.stdout
    assert b"alert" in forged.stderr.lower() or forged.returncode != 0, forged.stderr.decode()

    # a valid leaf of an identity the intentions do not allow (db -> api, default deny):
    # closed right after the handshake, nothing reaches api
    mesh.c2.put("/v1/agent/service/register", {"ID": "db-e2e", "Name": "db", "Port": 1})
    try:
        db_cert, db_key = mesh.leaf(mesh.c2, "db", tmp_path)
        wrong = _s_client(port, tmp_path, "-cert", db_cert, "-key", db_key, "-CAfile", roots)
        assert b"hello from api" not in wrong.stdout
        log = Path(mesh.c2.data_dir, "proxies", f"{SIDECAR(API1)}.log").read_text()
        for reason in ("inbound_handshake_failed", "inbound_denied"):
            assert reason in log, f"no {reason} in api-1's sidecar log"
    finally:
        mesh.c2.request("PUT", "/v1/agent/service/deregister/db-e2e")


class Imposter:
    """A TLS server that presents a valid leaf of the wrong service (db) and asks for a
    client certificate, counting handshakes and application bytes received."""

    def __init__(self, cert: str, key: str, roots: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.load_verify_locations(roots)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.completed = 0
        self.app_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.settimeout(2)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.completed += 1
                    self.app_bytes += len(tls.recv(65536))
            except (OSError, ssl.SSLError):
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def test_an_instance_presenting_another_identity_is_never_used(mesh, tmp_path):
    """An `api` sidecar in the catalog whose listener presents a valid leaf for db: web's
    sidecar checks the server's SPIFFE ID, refuses it, and the request goes elsewhere."""
    mesh.c2.put("/v1/agent/service/register", {"ID": "db-e2e", "Name": "db", "Port": 1})
    db_cert, db_key = mesh.leaf(mesh.c2, "db", tmp_path)
    imposter = Imposter(db_cert, db_key, mesh.roots(mesh.c2, tmp_path / "roots.pem"))
    try:
        mesh.c2.put("/v1/agent/service/register", {
            "ID": "imposter", "Name": "api-sidecar-proxy", "Kind": "connect-proxy", "Port": imposter.port,
            "Address": "127.0.0.1",
            "Proxy": {"DestinationServiceName": "api", "DestinationServiceID": "api-x", "LocalServicePort": 1}})
        retry(lambda: len(mesh.c1.get("/v1/health/connect/api?passing")) == 3, 10, 0.1, "the imposter listed")
        failures, ok = [], 0
        deadline = time.monotonic() + 15
        while (imposter.accepted < 1 or ok < 12) and time.monotonic() < deadline:
            status, body = mesh.call()
            if status == 200 and "-> api: hello from api" in body:
                ok += 1
            else:
                failures.append((status, body))
        assert imposter.accepted >= 1, "web's sidecar never tried the imposter (the test proves nothing)"
        assert imposter.app_bytes == 0, "web's sidecar sent application data to a server that is not api"
        assert not failures, f"requests failed instead of moving to a real api instance: {failures[:3]}"
        log = Path(mesh.c1.data_dir, "proxies", f"{SIDECAR(WEB)}.log").read_text()
        assert "upstream_dial_failed" in log
    finally:
        mesh.c2.request("PUT", "/v1/agent/service/deregister/imposter")
        mesh.c2.request("PUT", "/v1/agent/service/deregister/db-e2e")
        imposter.close()
    retry(lambda: len(mesh.c1.get("/v1/health/connect/api?passing")) == 2, 10, 0.1, "the imposter gone")


# ---- 7 (before the destructive ones) ---------------------------------------------------------
def _tls_to(port: int, cert: str, key: str, cafile: str) -> str:
    """A full mutual handshake with a sidecar's public listener; the SPIFFE URI it presents."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile)
    ctx.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="api") as tls:
        peer = tls.getpeercert()
    return next(v for k, v in peer.get("subjectAltName", ()) if k == "URI")


def _answers(port: int, cert: str, key: str, cafile: str) -> bool:
    """One request straight to an api sidecar's public listener over mutual TLS (the
    plain path, one TLS connection): whether api answered."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile)
    ctx.load_cert_chain(cert, key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="api") as tls:
            tls.sendall(HTTP_GET)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except (OSError, ssl.SSLError):
        return False
    return b"hello from api" in data


def test_root_rotation_fails_no_request(mesh, tmp_path):
    server = mesh.cluster.agents[0]
    before = server.get("/v1/connect/ca/roots")
    config = server.get("/v1/connect/ca/configuration")
    with Traffic(mesh) as traffic:
        time.sleep(1)
        server.put("/v1/connect/ca/configuration",
                   {"Provider": config["Provider"], "Config": config["Config"], "ForceRotation": True})
        rotated = server.get("/v1/connect/ca/roots")
        assert rotated["ActiveRootID"] != before["ActiveRootID"]
        new_root = next(r["RootCert"] for r in rotated["Roots"] if r["ID"] == rotated["ActiveRootID"])
        (tmp_path / "new-root.pem").write_text(new_root)

        # the sidecars take leaves from the new root: a handshake that trusts only the
        # new root (and presents web's new leaf) succeeds with api-1's and api-2's listeners
        def on_new_root(agent: Agent, parent: str) -> str:
            cert, key = mesh.leaf(mesh.c1, "web", tmp_path)
            return _tls_to(mesh.public_port(agent, parent), cert, key, str(tmp_path / "new-root.pem"))

        for agent, parent in ((mesh.c2, API1), (mesh.c1, API2)):
            uri = retry(lambda a=agent, p=parent: on_new_root(a, p), 20, 0.2, f"{parent}'s sidecar on the new root")
            assert uri.endswith("/svc/api")
        time.sleep(2)
    assert len(traffic.results) > 20
    assert not traffic.failures(), f"{len(traffic.failures())} of {len(traffic.results)} failed: " \
                                   f"{traffic.failures()[:3]}"


# ---- 4 -------------------------------------------------------------------------------------
def test_killing_an_api_instance_moves_new_connections_to_the_other(mesh):
    retry(lambda: _both_instances_answer(mesh), 10, 0.1, "both api instances answer")
    with Traffic(mesh) as traffic:
        time.sleep(0.5)
        mesh.api1.kill()
        killed = time.monotonic()

        def settled() -> bool:
            after = [r for r in traffic.results if r[0] > killed + 0.2]
            tail = after[-15:]
            return len(tail) == 15 and all(mesh.answered_by(r[2]) == mesh.api2.port for r in tail)

        retry(settled, 15, 0.1, "requests answered by api-2 only")
        settled_after = time.monotonic() - killed
        # api-1's check goes critical (1 s interval): its sidecar leaves the healthy set
        retry(lambda: len(mesh.c1.get("/v1/health/connect/api?passing")) == 1, 10, 0.1, "api-1 critical")
    # a request in flight at api-1 when it died may fail (it reached the app); one sent
    # after the kill does not: api-1's sidecar cannot reach its app, so web's sidecar
    # tries api-2 (nothing reached an app yet)
    failed = [r for r in traffic.failures() if r[0] > killed]
    assert settled_after < 10
    assert not failed, f"{len(failed)} requests sent after the kill failed: {failed[:3]}"

    mesh.api1.start()  # put it back for the tests that follow
    retry(lambda: len(mesh.c1.get("/v1/health/connect/api?passing")) == 2, 15, 0.1, "api-1 passing again")
    retry(lambda: _both_instances_answer(mesh), 15, 0.2, "both api instances answer again")


# ---- 5 -------------------------------------------------------------------------------------
def test_a_killed_sidecar_is_restarted_and_traffic_resumes(mesh):
    before = mesh.ready(mesh.c1, WEB)[SIDECAR(WEB)]
    port = mesh.public_port(mesh.c1, WEB)
    os.kill(before["PID"], signal.SIGKILL)
    killed = time.monotonic()

    def restarted() -> dict[str, Any] | None:
        entry = mesh.proxies(mesh.c1)[SIDECAR(WEB)]
        return entry if entry["PID"] not in (0, before["PID"]) and entry["State"] == "ready" else None

    after = retry(restarted, 15, 0.1, "web's sidecar restarted")
    assert after["Restarts"] >= before["Restarts"] + 1
    assert after["LastExit"]["Signal"] == "SIGKILL"
    retry(mesh.ok, 10, 0.05, "traffic through the restarted sidecar")
    assert time.monotonic() - killed < 10
    assert mesh.public_port(mesh.c1, WEB) == port
    assert after["Listeners"]["Public"].endswith(f":{port}")
    assert proxy_pids(mesh.c1, WEB) == [after["PID"]]


# ---- 6 and 9 -------------------------------------------------------------------------------
def test_proxies_outlive_a_killed_agent_and_are_adopted_on_its_restart(mesh, tmp_path):
    before = mesh.ready(mesh.c1, WEB, API2)
    ports = {p: mesh.public_port(mesh.c1, p) for p in (WEB, API2)}
    for parent in (WEB, API2):
        assert proxy_pids(mesh.c1, parent) == [before[SIDECAR(parent)]["PID"]]
    mesh.c1.kill(keep_proxies=True)

    # the agent is gone; its proxies keep serving (web's sidecar from its cached config)
    with Traffic(mesh) as traffic:
        time.sleep(3)
    assert len(traffic.results) > 10 and not traffic.failures(), traffic.failures()[:3]
    for parent in (WEB, API2):
        assert proxy_pids(mesh.c1, parent) == [before[SIDECAR(parent)]["PID"]]

    mesh.c1.start()  # same data-dir, same flags
    retry(lambda: mesh.c1.get("/v1/agent/self"), 15, 0.1, "c1 back")
    restarted = time.monotonic()
    found = mesh.proxies(mesh.c1)
    for parent in (WEB, API2):
        old, new = before[SIDECAR(parent)], found[SIDECAR(parent)]
        assert new["PID"] == old["PID"], f"{parent}: pid {old['PID']} -> {new['PID']}"
        assert new["Adopted"] is True
        assert new["State"] in ("running", "ready")
        assert proxy_pids(mesh.c1, parent) == [old["PID"]], f"{parent}: a second process was started"
        # 9: the sidecar keeps its port across the agent restart
        assert mesh.public_port(mesh.c1, parent) == ports[parent]
    # the adopted proxies report to the new agent at once (listeners, leaf, config age)
    after = retry(lambda: mesh.ready(mesh.c1, WEB, API2), 5, 0.05, "adopted proxies report ready")
    print(f"adopted proxies ready {time.monotonic() - restarted:.2f}s after c1 answered")
    for parent in (WEB, API2):
        entry = after[SIDECAR(parent)]
        assert entry["PID"] == before[SIDECAR(parent)]["PID"] and entry["Adopted"] is True
        assert entry["Listeners"]["Public"].endswith(f":{ports[parent]}")
        assert entry["LeafExpires"]

    # and they follow changes again: an intention written now applies on api-2's adopted
    # sidecar (asked directly over mTLS, one TLS connection) within a second, both ways
    roots = mesh.roots(mesh.c2, tmp_path / "roots.pem")
    cert, key = mesh.leaf(mesh.c1, "web", tmp_path)
    assert _answers(ports[API2], cert, key, roots)
    for action, answers in (("-deny", False), ("-allow", True)):
        out = mesh_cli("intention", "create", "-http-addr", mesh.c2.http, action, "-replace", "web", "api")
        written = time.monotonic()
        assert out.returncode == 0, out.stderr
        retry(lambda a=answers: _answers(ports[API2], cert, key, roots) == a, 5, 0.05, f"{action} on api-2")
        took = time.monotonic() - written
        assert took < 1.0, f"{action} applied on api-2's adopted sidecar after {took:.2f}s"
    time.sleep(2)  # a supervisor step or two later, still one process each
    for parent in (WEB, API2):
        assert proxy_pids(mesh.c1, parent) == [before[SIDECAR(parent)]["PID"]]
    retry(mesh.ok, 5, 0.05, "traffic after the restart")
    retry(lambda: _both_instances_answer(mesh), 20, 0.2, "both api instances answer after the restart")


# ---- 8 (last: the cluster does not come back) ----------------------------------------------
def test_traffic_keeps_flowing_with_every_server_stopped(mesh, tmp_path):
    roots = mesh.roots(mesh.c2, tmp_path / "roots.pem")
    cert, key = mesh.leaf(mesh.c1, "web", tmp_path)
    with Traffic(mesh) as traffic:
        time.sleep(0.5)
        for server in mesh.cluster.agents:
            server.kill()
        stopped = time.monotonic()
        time.sleep(6)  # past the proxies' failed watches and their backoff
    after = [r for r in traffic.results if r[0] > stopped]
    assert len(after) > 20
    assert not traffic.failures(), f"{len(traffic.failures())} of {len(traffic.results)} failed: " \
                                   f"{traffic.failures()[:3]}"
    # a new full handshake (not a pooled connection) still works on the cached leaf and roots
    assert _tls_to(mesh.public_port(mesh.c2, API1), cert, key, roots).endswith("/svc/api")
    assert mesh.ok()
