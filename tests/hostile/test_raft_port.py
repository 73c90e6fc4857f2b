"""The Raft port as an attacker reaches it: pickles, giant frames, junk floods.

Replays issue 10's findings against real agents: pysyncobj unpickled whatever reached
the Raft port of a server without a key (a dev agent and a single server ran
`os.system`), and buffered a frame up to its declared 2 GiB before authenticating,
which kept a follower out of contact for minutes and forced an election."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import time
import zlib

import pytest

from tests.harness.cluster import Agent, Cluster, dev_agent, free_port, retry, rss_kib

pytestmark = pytest.mark.cluster


class _Exploit:
    """Unpickling this runs a shell command that creates `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


# about 2 GiB read as big-endian (ours) and as little-endian (pysyncobj's native int)
HUGE_HEADER = b"\x7f\xff\xff\x7f"


def _pysyncobj_frame(obj) -> bytes:
    """A frame as pysyncobj 0.3.17 reads it: native int length, zlib of a pickle."""
    data = zlib.compress(pickle.dumps(obj), 3)
    return struct.pack("i", len(data)) + data


def _send_and_wait_close(port: int, payload: bytes, source: str = "127.0.0.1", timeout: float = 5.0) -> float:
    """Send `payload`, return how long the server took to close the connection."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        s.settimeout(timeout)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, TimeoutError):
            pass
    return time.monotonic() - started


def _metric(agent: Agent, name: str) -> float:
    raw = agent.get("/v1/agent/metrics?format=prometheus")
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def _single(tmp_path, dev: bool) -> Agent:
    data = tmp_path / ("dev" if dev else "s1")
    data.mkdir()
    if dev:
        return dev_agent(data, name="a")
    agent = Agent("a", str(data), free_port(), free_port(), free_port(), [], str(tmp_path / "a.log"))
    agent.args = ["-server", "-bootstrap-expect", "1", "-node", "a", "-data-dir", str(data), "-bind", "127.0.0.1",
                  "-http-port", str(agent.http_port), "-server-port", str(agent.server_port),
                  "-raft-port", str(agent.raft_port), "-dns-port", "-1"]
    agent.start()
    retry(lambda: agent.leader(), 15, 0.05, "leader")
    return agent


@pytest.mark.parametrize("dev", [True, False], ids=["dev", "single-server-no-key"])
def test_pickled_payload_on_the_raft_port_runs_nothing(tmp_path, dev):
    agent = _single(tmp_path, dev)
    try:
        marker = tmp_path / "pwned"
        for message in (_Exploit(str(marker)), (b"k" * 32, _Exploit(str(marker))), [_Exploit(str(marker))]):
            _send_and_wait_close(agent.raft_port, _pysyncobj_frame(message))
        # a frame that our framing accepts as to length, holding a pickle
        body = pickle.dumps(_Exploit(str(marker)))
        _send_and_wait_close(agent.raft_port, struct.pack(">I", len(body)) + body)
        time.sleep(0.5)
        assert not marker.exists(), "a pickle sent to the Raft port was executed"
        assert agent.leader()
        agent.put("/v1/catalog/register", {"Node": "n1", "Address": "10.0.0.1"})
        assert agent.get("/v1/catalog/node/n1")["Node"]["Node"] == "n1"
        assert "Traceback" not in agent.log_tail(400)
    finally:
        agent.kill()


def test_oversized_frame_is_dropped_at_its_header(tmp_path):
    agent = _single(tmp_path, dev=True)
    try:
        rss_before = rss_kib(agent)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", agent.raft_port), timeout=5) as s:
            s.sendall(HUGE_HEADER)
            sent = 0
            chunk = b"\0" * (1 << 20)
            try:
                while sent < (150 << 20) and time.monotonic() - started < 10:
                    s.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
        elapsed = time.monotonic() - started
        assert sent < (8 << 20), f"the server kept reading a 2 GiB frame ({sent} bytes accepted)"
        assert elapsed < 5
        assert rss_kib(agent) - rss_before < 50_000
        assert agent.leader()
    finally:
        agent.kill()


def test_junk_sender_is_penalised_but_members_are_not(tmp_path):
    """Junk from an address that is no member is refused for a while; a stranger on a
    member's address only gets its connection dropped (no lock-out of the member)."""
    agent = _single(tmp_path, dev=True)
    try:
        junk = struct.pack(">I", 200) + os.urandom(200)
        assert _send_and_wait_close(agent.raft_port, junk, source="127.0.0.2") < 2
        # now refused at once, before anything is read
        with socket.create_connection(("127.0.0.1", agent.raft_port), timeout=3, source_address=("127.0.0.2", 0)) as s:
            s.settimeout(3)
            assert s.recv(10) == b""
        metrics = agent.get("/v1/agent/metrics?format=prometheus")
        text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
        assert 'mesh_raft_wire_rejects_total{reason="penalised"}' in text
        assert 'mesh_raft_wire_rejects_total{reason="auth"}' in text
        # a connection that says nothing is closed after the handshake timeout
        assert 2 < _send_and_wait_close(agent.raft_port, b"", source="127.0.0.3", timeout=10) < 6
    finally:
        agent.kill()


def test_follower_under_a_frame_flood_keeps_the_leader(tmp_path):
    """Streaming a declared 2 GiB frame into a follower's Raft port, repeatedly, neither
    delays its ticks nor forces an election."""
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()
        leader = cluster.wait_leader()
        followers = [a for a in cluster.agents if a is not leader]
        # the gauge is refreshed once a second: wait until it shows the settled cluster
        # (and every server's term gauge shows the leader's term: a follower's gauge can lag
        # the election by up to a second, which would look like a term change later)
        retry(lambda: all(_metric(f, "mesh_raft_last_contact_seconds") < 0.5 for f in followers)
              and len({_metric(a, "mesh_raft_term") for a in cluster.agents}) == 1
              and _metric(leader, "mesh_raft_term") > 0, 10, 0.1, "followers in contact")
        terms_before = [_metric(a, "mesh_raft_term") for a in cluster.agents]
        deadline = time.monotonic() + 6
        rounds, contact = 0, 0.0
        while time.monotonic() < deadline:
            for f in followers:
                with socket.create_connection(("127.0.0.1", f.raft_port), timeout=3) as s:
                    try:
                        s.sendall(HUGE_HEADER + b"\0" * (4 << 20))
                    except (BrokenPipeError, ConnectionResetError):
                        pass
            rounds += 1
            contact = max(contact, *(_metric(f, "mesh_raft_last_contact_seconds") for f in followers))
        assert rounds > 3
        assert contact < 1.0, f"a follower went {contact:.1f}s without hearing the leader"
        assert cluster.wait_leader(5) is leader
        assert [_metric(a, "mesh_raft_term") for a in cluster.agents] == terms_before
        for f in followers:
            assert f.leader() == leader.rpc
        leader.put("/v1/catalog/register", {"Node": "after-flood", "Address": "10.0.0.9"})
        for a in cluster.agents:
            retry(lambda a=a: a.get("/v1/catalog/node/after-flood?stale"), 5, 0.05, "replicated")
    finally:
        cluster.stop()


def test_raft_port_in_use_exits_1_with_the_reason(tmp_path):
    """A taken Raft port used to leave the agent running and leaderless."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        agent = Agent("a", str(tmp_path), free_port(), free_port(), port, [], str(tmp_path / "a.log"))
        agent.args = ["-dev", "-node", "a", "-http-port", str(agent.http_port), "-server-port",
                      str(agent.server_port), "-raft-port", str(port), "-dns-port", "-1"]
        agent.start()
        try:
            assert agent.proc.wait(15) == 1
        finally:
            agent.kill()
        log = agent.log_tail()
        assert f"Raft port 127.0.0.1:{port}" in log and "in use" in log
        assert "Traceback" not in log
