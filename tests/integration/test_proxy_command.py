"""`mesh connect proxy` as a user runs it, against a real `mesh agent -dev` that
supervises the sidecars it registered: the agent starts the real proxy, which reports
ready; a proxy started by hand for the same sidecar is refused; bad flags and unknown
sidecars are one line on stderr and exit 1; flags mode carries traffic."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from tests.harness.cluster import dev_agent, free_port, retry

pytestmark = pytest.mark.timeout(120)
MESH = [sys.executable, "-m", "mesh"]


def _get(agent, path: str):
    with urllib.request.urlopen(f"http://127.0.0.1:{agent.http_port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _put(agent, path: str, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{agent.http_port}{path}", method="PUT",
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read()


def _mesh(agent, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{agent.http_port}"}
    env.pop("MESH_HTTP_ADDR", None)
    env.pop("MESH_PROXY_SUPERVISED", None)
    return subprocess.run([*MESH, *args], env=env, capture_output=True, text=True, timeout=timeout)


class Echo:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(b"echo:" + data)


@pytest.fixture
def agent(tmp_path):
    a = dev_agent(tmp_path, extra=["-sidecar-min-port", "23000", "-sidecar-max-port", "23099"])
    yield a
    a.kill()


def test_the_agent_runs_the_real_proxy_and_a_twin_by_hand_is_refused(agent):
    echo = Echo()
    _put(agent, "/v1/agent/service/register",
         {"Name": "api", "Port": echo.port, "Connect": {"SidecarService": {}}})
    proxies = retry(lambda: (p := _get(agent, "/v1/agent/mesh/proxies")) and
                    p.get("api-sidecar-proxy", {}).get("State") == "ready" and p, 60, 0.1, "proxy ready")
    row = proxies["api-sidecar-proxy"]
    assert row["Supervised"] and row["PID"] > 0
    assert row["Listeners"]
    checks = retry(lambda: (c := _get(agent, "/v1/health/checks/api-sidecar-proxy")) and
                   all(x["Status"] == "passing" for x in c) and c, 20, 0.1, "sidecar checks passing")
    assert {c["Name"] for c in checks} == {"Connect Sidecar Listening", "Connect Sidecar Aliasing api"}
    twin = _mesh(agent, "connect", "proxy", "-sidecar-for", "api")
    assert twin.returncode == 1
    lines = twin.stderr.strip().splitlines()
    assert "supervises the proxy for api-sidecar-proxy" in lines[-1], twin.stderr
    table = _mesh(agent, "connect", "proxies")
    assert table.returncode == 0 and "api-sidecar-proxy" in table.stdout and "ready" in table.stdout
    # deregistering the parent stops its proxy
    _put(agent, "/v1/agent/service/deregister/api")
    retry(lambda: "api-sidecar-proxy" not in _get(agent, "/v1/agent/mesh/proxies"), 20, 0.1, "proxy gone")
    retry(lambda: not os.path.exists(f"/proc/{row['PID']}"), 20, 0.1, "proxy process gone")


@pytest.mark.parametrize("args, message", [
    (["-sidecar-for", "nothing"], "No sidecar proxy registered for nothing"),
    (["-upstream", "api"], "one of -sidecar-for, -proxy-id or -service is required"),
    (["-service", "web", "-upstream", "api:notaport"], "-upstream"),
    (["-service", "web", "-listen", "127.0.0.1:1"], "-listen requires -service-addr"),
    (["-sidecar-for", "a", "-proxy-id", "b"], "mutually exclusive"),
    (["-bogus"], "flag provided but not defined: -bogus"),
])
def test_bad_invocations_exit_1_with_one_line(agent, args, message):
    result = _mesh(agent, "connect", "proxy", *args)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert message in last and "Traceback" not in result.stderr, result.stderr


def test_flags_mode_with_register_carries_traffic_and_deregisters_on_stop(agent):
    echo = Echo()
    public, upstream = free_port(), free_port()
    _put(agent, "/v1/connect/intentions/exact?source=web&destination=api", {"Action": "allow"})
    # the agent signs a leaf only for a service registered on it (or fronted by a proxy there)
    _put(agent, "/v1/agent/service/register", {"Name": "web", "Port": 1})
    env = {**os.environ, "CONSUL_HTTP_ADDR": f"127.0.0.1:{agent.http_port}"}
    server = subprocess.Popen([*MESH, "connect", "proxy", "-service", "api", "-listen", f"127.0.0.1:{public}",
                               "-service-addr", f"127.0.0.1:{echo.port}", "-register"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = subprocess.Popen([*MESH, "connect", "proxy", "-service", "web", "-upstream", f"api:{upstream}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        retry(lambda: any(e["Service"]["Port"] == public for e in _get(agent, "/v1/health/connect/api?passing")),
              30, 0.1, "api-proxy registered and passing")

        def call() -> bytes | None:
            try:
                with socket.create_connection(("127.0.0.1", upstream), timeout=2) as s:
                    s.sendall(b"hi")
                    return s.recv(100) or None
            except OSError:
                return None

        assert retry(call, 30, 0.1, "traffic through flags-mode proxies") == b"echo:hi"
    finally:
        for proc in (client, server):
            proc.terminate()
        for proc in (client, server):
            assert proc.wait(timeout=15) == 0, proc.stderr.read() if proc.stderr else ""
    services = _get(agent, "/v1/agent/services")
    assert "api-proxy" not in services
