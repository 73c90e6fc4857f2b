"""The HTTPS API end to end: certificates from `mesh tls ca create` / `tls cert create`,
dev agents serving only HTTPS (-https-port, -http-port -1), the CLI over HTTPS by flags
and by CONSUL_* variables, client certificates with verify_incoming, py-consul, and a
listener that garbage and stalled handshakes do not disturb."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import consul
import pytest

from tests.harness.cli import run_cli
from tests.harness.cluster import Agent, closed_within, free_port, retry


def _https_get(port: int, path: str, ctx: ssl.SSLContext) -> object:
    with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=ctx, timeout=5) as resp:
        return json.loads(resp.read())


def _start(tmp: Path, name: str, extra: list[str], ctx: ssl.SSLContext) -> Agent:
    """A dev agent with HTTP off and HTTPS on a free port, up once it answers over HTTPS
    and its catalog holds its `consul` service."""
    agent = Agent(name, str(tmp), -1, free_port(), free_port(), [], str(tmp / f"{name}.log"))
    agent.https_port = free_port()  # type: ignore[attr-defined]
    agent.args = ["-dev", "-node", f"{name}node", "-http-port", "-1", "-https-port", str(agent.https_port),  # type: ignore[attr-defined]
                  "-server-port", str(agent.server_port), "-raft-port", str(agent.raft_port), "-dns-port", "-1",
                  *extra]
    agent.start()
    try:
        retry(lambda: _https_get(agent.https_port, "/v1/status/leader", ctx), 20, 0.05,  # type: ignore[attr-defined]
              f"{name} over HTTPS")
        # and its own `consul` service synced into the catalog, which the tests list
        retry(lambda: _https_get(agent.https_port, "/v1/catalog/service/consul", ctx), 20, 0.05,  # type: ignore[attr-defined]
              f"{name}'s consul service in the catalog")
    except BaseException:
        print(agent.log_tail())
        agent.kill()
        raise
    return agent


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A CA, a server certificate and a CLI certificate, made by the CLI in a tmp dir."""
    tmp = tmp_path_factory.mktemp("certs")
    cwd = os.getcwd()
    os.chdir(tmp)
    try:
        out = run_cli(["tls", "ca", "create"])
        assert out.returncode == 0, out.stderr
        assert out.stdout == "==> Saved consul-agent-ca.pem\n==> Saved consul-agent-ca-key.pem\n"
        again = run_cli(["tls", "ca", "create"])
        assert again.returncode == 1 and again.stderr == "consul-agent-ca.pem already exists.\n"
        out = run_cli(["tls", "cert", "create", "-server"])
        assert out.returncode == 0, out.stderr
        assert out.stdout.endswith("==> Using consul-agent-ca.pem and consul-agent-ca-key.pem\n"
                                   "==> Saved dc1-server-consul-0.pem\n==> Saved dc1-server-consul-0-key.pem\n")
        out = run_cli(["tls", "cert", "create", "-cli"])
        assert out.returncode == 0 and "==> Saved dc1-cli-consul-0-key.pem" in out.stdout
        assert (tmp / "dc1-cli-consul-0-key.pem").stat().st_mode & 0o777 == 0o600
    finally:
        os.chdir(cwd)
    names = {"ca": "consul-agent-ca.pem", "server": "dc1-server-consul-0.pem", "server_key": "dc1-server-consul-0-key.pem",
             "cli": "dc1-cli-consul-0.pem", "cli_key": "dc1-cli-consul-0-key.pem"}
    return {k: str(tmp / v) for k, v in names.items()} | {"dir": str(tmp)}


def _context(certs: dict[str, str], client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs["ca"])
    if client_cert:
        ctx.load_cert_chain(certs["cli"], certs["cli_key"])
    return ctx


@pytest.fixture(scope="module")
def plain(certs, tmp_path_factory):
    """HTTPS with the -ca-file/-cert-file/-key-file flags (tls.defaults), no client certificates."""
    tmp = tmp_path_factory.mktemp("plain")
    agent = _start(tmp, "plain", ["-ca-file", certs["ca"], "-cert-file", certs["server"], "-key-file",
                                  certs["server_key"]], _context(certs, False))
    yield agent
    agent.kill()


@pytest.fixture(scope="module")
def mutual(certs, tmp_path_factory):
    """HTTPS from a `tls { https { ... verify_incoming = true } }` block: client certificates required."""
    tmp = tmp_path_factory.mktemp("mutual")
    conf = tmp / "tls.hcl"
    conf.write_text(f'tls {{\n  https {{\n    ca_file = "{certs["ca"]}"\n    cert_file = "{certs["server"]}"\n'
                    f'    key_file = "{certs["server_key"]}"\n    verify_incoming = true\n  }}\n}}\n'
                    'limits {\n  https_handshake_timeout = "500ms"\n}\n')
    agent = _start(tmp, "mutual", ["-config-file", str(conf), "-supervise-proxies=false"], _context(certs, True))
    yield agent
    agent.kill()


def test_cli_over_https_with_ca_file_flag(plain, certs):
    address = f"https://127.0.0.1:{plain.https_port}"
    out = run_cli(["members", "-http-addr", address, "-ca-file", certs["ca"]])
    assert out.returncode == 0, out.stderr
    assert "plainnode" in out.stdout and "alive" in out.stdout
    out = run_cli(["catalog", "services", "-http-addr", address, "-ca-file", certs["ca"], "-tls-server-name",
                   "server.dc1.consul"])
    assert out.returncode == 0 and "consul" in out.stdout.split()
    # without the CA the system's trust store does not know the agent's certificate
    out = run_cli(["members", "-http-addr", address])
    assert out.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in out.stderr and out.stderr.count("\n") == 1
    # a name the certificate does not hold
    out = run_cli(["members", "-http-addr", address, "-ca-file", certs["ca"], "-tls-server-name", "other.example"])
    assert out.returncode == 1 and out.stderr.count("\n") == 1


def test_cli_over_https_with_environment(plain, certs):
    env = {"CONSUL_HTTP_ADDR": f"127.0.0.1:{plain.https_port}", "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": certs["ca"]}
    out = run_cli(["catalog", "services"], env=env)
    assert out.returncode == 0, out.stderr
    assert "consul" in out.stdout.split()
    out = run_cli(["members"], env={**env, "CONSUL_CACERT": "", "CONSUL_CAPATH": certs["dir"]})
    assert out.returncode == 0, out.stderr
    out = run_cli(["members"], env={**env, "CONSUL_CACERT": "", "CONSUL_HTTP_SSL_VERIFY": "false"})
    assert out.returncode == 0, out.stderr
    out = run_cli(["members"], env={**env, "MESH_CACERT": "/nonexistent/ca.pem"})  # MESH_ first
    assert out.returncode == 1 and out.stderr == "Error: cannot read CA file /nonexistent/ca.pem: no such file\n"
    out = run_cli(["members"], env={**env, "CONSUL_CLIENT_CERT": certs["cli"]})
    assert out.returncode == 1 and "needs its key" in out.stderr and out.stderr.count("\n") == 1


def test_self_reports_the_https_port(plain):
    ctx = ssl.create_default_context(cafile=None)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    debug = _https_get(plain.https_port, "/v1/agent/self", ctx)["DebugConfig"]  # type: ignore[index]
    assert debug["HTTPSPort"] == plain.https_port and debug["HTTPPort"] == -1
    log = Path(plain.log_path).read_text()
    assert f"https=127.0.0.1:{plain.https_port}" in log
    assert "proxy_supervision_off" in log  # supervised sidecars need plain HTTP: said at start


def test_verify_incoming_refuses_a_client_without_certificate(mutual, certs):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        raw = socket.create_connection(("127.0.0.1", mutual.https_port), timeout=5)
        with _context(certs, False).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            # TLS 1.3: the server's refusal arrives with the first read
            tls.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(100) == b"", "answered a client without a certificate"
            raise ConnectionResetError("closed without an answer")
    address = f"https://127.0.0.1:{mutual.https_port}"
    out = run_cli(["members", "-http-addr", address, "-ca-file", certs["ca"]])
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    out = run_cli(["members", "-http-addr", address, "-ca-file", certs["ca"], "-client-cert", certs["cli"],
                   "-client-key", certs["cli_key"]])
    assert out.returncode == 0 and "mutualnode" in out.stdout, out.stderr
    env = {"CONSUL_HTTP_ADDR": address, "CONSUL_CACERT": certs["ca"], "CONSUL_CLIENT_CERT": certs["cli"],
           "CONSUL_CLIENT_KEY": certs["cli_key"]}
    out = run_cli(["catalog", "services"], env=env)
    assert out.returncode == 0 and "consul" in out.stdout.split(), out.stderr


def test_py_consul_over_https_with_client_certificate(mutual, certs):
    c = consul.Consul(host="127.0.0.1", port=mutual.https_port, scheme="https", verify=certs["ca"],
                      cert=(certs["cli"], certs["cli_key"]))
    assert c.kv.put("https/key", "v") is True
    _, entry = c.kv.get("https/key")
    assert entry["Value"] == b"v"
    assert "consul" in c.catalog.services()[1]


def test_garbage_and_stalled_handshakes_do_not_disturb_the_listener(mutual, certs):
    port = mutual.https_port
    ctx = _context(certs, True)
    garbage = socket.create_connection(("127.0.0.1", port), timeout=5)
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(512))
    # half a ClientHello: the record header promises more than is sent
    stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
    stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(20))
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]  # never say anything
    try:
        started = time.monotonic()
        assert _https_get(port, "/v1/status/leader", ctx)
        assert time.monotonic() - started < 2
        assert b"HTTP/1.1" not in garbage.recv(100)  # closed by the server, or an alert: never an answer
        assert closed_within(stalled, 3), "a stalled handshake outlived limits.https_handshake_timeout"
    finally:
        for s in (garbage, stalled, *idle):
            s.close()
    assert _https_get(port, "/v1/catalog/services", ctx)
    log = Path(mutual.log_path).read_text()
    assert "Traceback" not in log
