"""The `mesh` command against a real dev agent: output, exit codes, one-line errors."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest


def mesh(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/", env={**os.environ, **(env or {})})


def test_members_and_list_peers(dev):
    out = mesh("members", "-http-addr", dev.http)
    assert out.returncode == 0, out.stderr
    assert "devnode" in out.stdout and "alive" in out.stdout and "server" in out.stdout
    out = mesh("operator", "raft", "list-peers", f"-http-addr={dev.http}")
    assert out.returncode == 0 and "leader" in out.stdout and "devnode" in out.stdout


def test_http_addr_from_environment(dev):
    out = mesh("catalog", "datacenters", env={"CONSUL_HTTP_ADDR": f"http://{dev.http}"})
    assert out.returncode == 0 and out.stdout.strip() == "dc1"
    out = mesh("catalog", "services", env={"MESH_HTTP_ADDR": dev.http})
    assert out.returncode == 0 and "consul" in out.stdout.split()


def test_snapshot_save_and_restore(dev, tmp_path):
    dev.put("/v1/catalog/register", {"Node": "snapnode", "Address": "10.0.0.1"})
    path = tmp_path / "backup.snap"
    out = mesh("snapshot", "save", "-http-addr", dev.http, str(path))
    assert out.returncode == 0 and "Saved and verified snapshot to index" in out.stdout
    dev.put("/v1/catalog/deregister", {"Node": "snapnode"})
    assert dev.get("/v1/catalog/node/snapnode") is None
    out = mesh("snapshot", "restore", "-http-addr", dev.http, str(path))
    assert out.returncode == 0, out.stderr
    assert dev.get("/v1/catalog/node/snapnode")["Node"]["Address"] == "10.0.0.1"
    bad = tmp_path / "bad.snap"
    bad.write_bytes(b"not a snapshot")
    out = mesh("snapshot", "restore", "-http-addr", dev.http, str(bad))
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "400" in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("members", "-http-addr", "127.0.0.1:1"),
        ("nonsense",),
        ("members", "-bogus"),
        ("operator", "raft", "remove-peer"),
        ("snapshot", "save"),
        ("agent", "-nope"),
        ("agent", "-server", "-bootstrap-expect", "3", "-data-dir", "/tmp/never", "-bind", "127.0.0.1"),
    ],
)
def test_errors_exit_1_with_one_line(args):
    out = mesh(*args)
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_remove_unknown_peer(dev):
    out = mesh("operator", "raft", "remove-peer", "-http-addr", dev.http, "-address", "127.0.0.1:9")
    assert out.returncode == 1 and "not found" in out.stderr


def test_keygen_and_version():
    out = mesh("keygen")
    assert out.returncode == 0 and len(base64.b64decode(out.stdout.strip())) == 32
    assert mesh("version").stdout.startswith("mesh v")


def test_connect_ca_commands(dev, tmp_path):
    import json as _json

    from tests.harness.cluster import retry

    retry(lambda: dev.get("/v1/connect/ca/roots")["Roots"], 10, 0.1, "CA initialized")
    status = mesh("connect", "ca", "status", "-http-addr", dev.http)
    assert status.returncode == 0 and "active" in status.stdout and "Trust domain:" in status.stdout
    config = _json.loads(mesh("connect", "ca", "get-config", "-http-addr", dev.http).stdout)
    assert config["Provider"] == "consul" and config["Config"]["LeafCertTTL"] == "72h"
    bad = tmp_path / "bad.json"
    bad.write_text('{"Provider": "consul", "Config": {"LeafCertTTL": "9999h"}}')
    out = mesh("connect", "ca", "set-config", "-http-addr", dev.http, "-config-file", str(bad))
    assert out.returncode == 1 and "LeafCertTTL" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    good = tmp_path / "good.json"
    good.write_text('{"Provider": "consul", "Config": {"LeafCertTTL": "24h"}}')
    out = mesh("connect", "ca", "set-config", "-http-addr", dev.http, "-config-file", str(good))
    assert out.returncode == 0 and "Configuration updated!" in out.stdout
    assert dev.get("/v1/connect/ca/configuration")["Config"]["LeafCertTTL"] == "24h"
