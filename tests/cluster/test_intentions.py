"""Intentions across a cluster: written through one server, enforced by a client's cache."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.harness.cluster import Cluster, retry

pytestmark = pytest.mark.cluster

WEB = "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web"


def authorized(agent, source_uri: str, target: str) -> bool:
    body = agent.request("POST", "/v1/agent/connect/authorize", {"Target": target, "ClientCertURI": source_uri})[0]
    return bool(body["Authorized"])


def mesh_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_intentions_reach_clients_fast_and_survive_failover_and_restart(tmp_path):
    cluster = Cluster(tmp_path, 3, extra_args=["-default-intention-policy", "deny"])
    try:
        cluster.start()
        client = cluster.start_client("c1", ["-default-intention-policy", "deny"])
        assert authorized(client, WEB, "db") is False  # default deny
        out = mesh_cli("intention", "create", "-http-addr", cluster.agents[1].http, "-allow", "web", "db")
        assert out.returncode == 0 and "Created: web => db (allow)" in out.stdout
        t0 = time.monotonic()
        retry(lambda: authorized(client, WEB, "db"), 2, 0.01, "authorize follows the new intention")
        assert time.monotonic() - t0 < 1.0
        assert mesh_cli("intention", "check", "-http-addr", client.http, "web", "db").returncode == 0
        denied = mesh_cli("intention", "check", "-http-addr", client.http, "api", "db")
        assert denied.returncode == 2 and "Denied" in denied.stdout and "default" in denied.stdout.lower()
        dup = mesh_cli("intention", "create", "-http-addr", client.http, "-deny", "web", "db")
        assert dup.returncode == 1 and "duplicate" in dup.stderr
        assert mesh_cli("intention", "create", "-http-addr", client.http, "-deny", "-replace", "web",
                        "db").returncode == 0
        retry(lambda: not authorized(client, WEB, "db"), 2, 0.01, "replaced by a deny")

        leader = cluster.wait_leader()
        leader.kill()
        survivor = cluster.wait_leader(among=cluster.live())
        assert mesh_cli("intention", "create", "-http-addr", survivor.http, "-allow", "*", "cache").returncode == 0
        retry(lambda: authorized(client, WEB, "cache"), 3, 0.05)
        leader.start()
        retry(lambda: len(leader.get("/v1/connect/intentions?stale")) == 2, 15, 0.2, "restarted server has both")
        listing = mesh_cli("intention", "list", "-http-addr", leader.http).stdout
        assert "web" in listing and "cache" in listing
        # servers unreachable: the client keeps deciding from its cache
        for server in cluster.agents:
            server.kill()
        assert authorized(client, WEB, "cache") is True and authorized(client, WEB, "db") is False
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
