"""Secrets on disk: after real use, every file in a server's and a client's data-dir is
0600 and every directory 0700, the data-dir itself included.

Replays issue 10's finding: `raft/journal`, `journal.meta` and `peers.json` were 0644
in 0755 directories on servers; `local/state.json` (service tokens, check headers such
as Authorization) and `node-id` were 0644 on every agent. The server's data-dir is
created by the agent; the client's is an old one (0755 with a 0644 node-id), which the
agent tightens once at start."""

from __future__ import annotations

import os
import stat

import pytest

from tests.harness.cluster import KEY, Agent, free_port, retry

pytestmark = pytest.mark.cluster

SECRET = "Bearer s3cr3t-check-header"
TOKEN = "5bd1f9c2-6f4e-4b8a-9a3e-0d7c2f1e8a11"


def loose_entries(root: str) -> list[str]:
    """Everything under `root` (and root) that is not 0600 (files) or 0700 (directories)."""
    found = []
    for path in [root] + [os.path.join(p, n) for p, dirs, files in os.walk(root) for n in dirs + files]:
        st = os.lstat(path)
        want = 0o700 if stat.S_ISDIR(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) != want:
            found.append(f"{os.path.relpath(path, root)} {stat.S_IMODE(st.st_mode):o}")
    return found


def test_server_and_client_data_dirs_are_private(tmp_path):
    server_dir, client_dir = str(tmp_path / "server-data"), str(tmp_path / "client-data")
    os.makedirs(client_dir, mode=0o755)  # an older version's data-dir
    os.chmod(client_dir, 0o755)
    with open(os.path.join(client_dir, "node-id"), "w") as f:
        f.write("0b8a7c9e-3f55-4a8d-9f8e-6a1b2c3d4e5f")
    os.chmod(os.path.join(client_dir, "node-id"), 0o644)

    server = Agent("s1", server_dir, free_port(), free_port(), free_port(), [], str(tmp_path / "s1.log"))
    server.args = ["-server", "-bootstrap-expect", "1", "-node", "s1", "-data-dir", server_dir, "-encrypt", KEY,
                   "-bind", "127.0.0.1", "-http-port", str(server.http_port), "-server-port", str(server.server_port),
                   "-raft-port", str(server.raft_port), "-dns-port", "-1", "-log-level", "debug"]
    client = Agent("c1", client_dir, free_port(), 0, 0, [], str(tmp_path / "c1.log"))
    client.args = ["-node", "c1", "-data-dir", client_dir, "-encrypt", KEY, "-bind", "127.0.0.1",
                   "-http-port", str(client.http_port), "-dns-port", "-1", "-retry-join", server.rpc]
    try:
        server.start()
        retry(lambda: server.leader(), 20, 0.1, "single server leader")
        client.start()
        retry(lambda: client.get("/v1/agent/self"), 20, 0.1, "client up")
        for agent in (server, client):
            agent.put("/v1/agent/service/register", {
                "Name": "web", "Port": 8080, "Token": TOKEN,
                "Check": {"HTTP": "http://127.0.0.1:1/health", "Interval": "30s",
                          "Header": {"Authorization": [SECRET]}}})
            leaf = retry(lambda a=agent: a.get("/v1/agent/connect/ca/leaf/web"), 20, 0.2, "leaf certificate")
            assert "PRIVATE KEY" in leaf["PrivateKeyPEM"]
        retry(lambda: os.path.exists(os.path.join(client_dir, "connect", "leaf-web.json")), 10, 0.1, "leaf on disk")
        with open(os.path.join(client_dir, "local", "state.json")) as f:
            assert SECRET in f.read()  # the secret is on disk: its mode is what protects it
    finally:
        for agent in (client, server):
            agent.stop()
    assert os.path.exists(os.path.join(server_dir, "raft", "journal"))
    for agent in (server, client):
        loose = loose_entries(agent.data_dir)
        assert not loose, f"{agent.name}: {loose}\n{agent.log_tail()}"
    with open(client.log_path) as f:
        assert f.read().count("data_dir_permissions_tightened") == 1
