"""Locks through real processes (issue 15): contenders on different client agents, the
holder's agent SIGKILLed, the leader SIGKILLed under a held and renewed session, and a
blocking read that sleeps through other keys' writes.

Short TTLs keep the suite fast: the agents run with -session-ttl-min 1s (Consul's
session_ttl_min) and a 3 s liveness timeout. A watcher on a surviving agent records
every holder the servers ever gave the key, so "never two holders" and "never before
the lock delay" are checked on the servers' own history, not on the contenders' word.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import consul
import pytest

from tests.harness.cluster import Agent, Cluster, HTTPError, retry

pytestmark = pytest.mark.cluster

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TTL = 3.0
LOCK_DELAY = 2.0
LIVENESS = 3.0
KEY = "service/pg/leader"
LEADER_KEY = "service/pg2/leader"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cluster for the module (the test that kills the leader runs last)."""
    c = Cluster(tmp_path_factory.mktemp("kvlocks"), 3,
                extra_args=["-liveness-timeout", f"{LIVENESS}s", "-session-ttl-min", "1s"])
    c.lockers = []  # type: ignore[attr-defined]
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def cluster(shared, request):
    try:
        yield shared
    finally:
        for proc in shared.lockers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        shared.lockers.clear()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(shared.logs())


def _client(cluster: Cluster, name: str) -> Agent:
    agent = cluster.start_client(name, ["-session-ttl-min", "1s", "-liveness-timeout", f"{LIVENESS}s"])
    retry(lambda: agent.get(f"/v1/catalog/node/{name}")["Node"], 15, 0.1, f"{name} registered")
    return agent


def _locker(cluster: Cluster, agent: Agent, out: str, key: str = KEY) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.harness.locker", "--http", agent.http, "--key", key,
                             "--ttl", f"{TTL}s", "--lock-delay", f"{LOCK_DELAY}s", "--out", out], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster.lockers.append(proc)  # type: ignore[attr-defined]
    return proc


def _events(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def _acquired(path: str) -> list[dict[str, Any]]:
    return [e for e in _events(path) if e["event"] == "acquired"]


class HolderWatch:
    """Every (wall time, holder session) the key had, seen through `agent` by blocking
    reads: the servers' history of the lock."""

    def __init__(self, agents: list[Agent], key: str = KEY) -> None:
        self.agents = agents
        self.key = key
        self.history: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        index, turn = 0, 0
        while not self._stop.is_set():
            agent = self.agents[turn % len(self.agents)]
            try:
                entries, headers = agent.request("GET", f"/v1/kv/{self.key}?index={index}&wait=2s", timeout=10)
                holder = entries[0].get("Session", "")
                index = int(headers["X-Consul-Index"])
            except HTTPError as exc:
                holder = ""
                if exc.status != 404:
                    turn += 1
                    time.sleep(0.05)
                    continue
                index = int(exc.headers.get("X-Consul-Index", "0"))
            except OSError:
                turn += 1
                time.sleep(0.05)
                continue
            if not self.history or self.history[-1][1] != holder:
                self.history.append((time.time(), holder))

    def holders(self) -> list[str]:
        return [h for _, h in self.history if h]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def test_the_holders_agent_dies_and_the_other_takes_the_lock_after_the_delay(cluster, tmp_path):
    a, b = _client(cluster, "app-a"), _client(cluster, "app-b")
    out_a, out_b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    _locker(cluster, a, out_a)
    retry(lambda: _acquired(out_a), 20, 0.1, "A holds the lock")
    _locker(cluster, b, out_b)
    retry(lambda: [e for e in _events(out_b) if e["event"] == "session"], 20, 0.1, "B has a session")
    watch = HolderWatch([b, cluster.agents[0]])
    time.sleep(1.0)  # B blocked on the held lock for a while: it must not get it
    assert not _acquired(out_b)
    killed_at = time.time()
    a.kill()
    got = retry(lambda: _acquired(out_b), 2 * TTL + LOCK_DELAY + 10, 0.05, "B takes the lock")[0]
    watch.stop()
    taken_after = got["t"] - killed_at
    # the servers released it (node failed or TTL ran out), then held it back for the delay
    released = [t for t, holder in watch.history if holder == ""]
    assert released, watch.history
    assert got["t"] - released[0] >= LOCK_DELAY - 0.2, (watch.history, got)
    assert LOCK_DELAY <= taken_after <= 2 * TTL + LOCK_DELAY + 1.0, taken_after
    session_a = _acquired(out_a)[0]["session"]
    assert watch.holders() == [session_a, got["session"]], watch.history


def test_a_blocking_key_read_sleeps_through_other_keys_and_wakes_on_its_own(cluster):
    client = _client(cluster, "app-w")
    client.put("/v1/kv/watched/key", raw=b"v0")
    index = int(client.request("GET", "/v1/kv/watched/key")[1]["X-Consul-Index"])
    woke: list[float] = []
    result: list[Any] = []

    def wait() -> None:
        body, headers = client.request("GET", f"/v1/kv/watched/key?index={index}&wait=20s", timeout=30)
        woke.append(time.monotonic())
        result.append((body, headers))

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    time.sleep(0.3)
    for i in range(20):
        client.put(f"/v1/kv/watched/other-{i}", raw=b"x")
        client.put(f"/v1/kv/watched/key-{i}", raw=b"x")  # shares the key as a prefix: still another key
    time.sleep(0.3)
    assert not woke, "woke for another key's write"
    client.put("/v1/kv/watched/key", raw=b"v1")
    written = time.monotonic()
    thread.join(10)
    assert woke and woke[0] - written < 0.1, woke[0] - written if woke else None
    body, headers = result[0]
    assert json.loads(body) if isinstance(body, bytes) else body
    assert int(headers["X-Consul-Index"]) > index


def test_a_session_on_a_dead_node_is_invalidated_and_its_delete_keys_go(cluster):
    client = _client(cluster, "app-d")
    sid = client.put("/v1/session/create", {"Behavior": "delete", "LockDelay": "0s"})["ID"]
    assert client.put(f"/v1/kv/ephemeral/member?acquire={sid}", raw=b"me") is True
    client.kill()
    server = cluster.agents[0]
    retry(lambda: server.get(f"/v1/session/info/{sid}") == [], LIVENESS + 10, 0.1, "session invalidated")
    with pytest.raises(HTTPError) as missing:
        server.get("/v1/kv/ephemeral/member")
    assert missing.value.status == 404


def test_mesh_lock_stops_its_command_when_the_cluster_invalidates_its_session(cluster, tmp_path):
    """`mesh lock` through a client agent whose node then fails liveness (SIGSTOP): the
    leader invalidates the lock's session (linked to serfHealth, as consul lock's is);
    once the agent runs again, mesh lock sees the lock gone and stops its command."""
    agent = _client(cluster, "app-l")
    started, stopped = tmp_path / "started", tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.agent.cli.main", "lock", "-verbose", "jobs/nightly",
         f"trap 'echo term > {stopped}; exit 0' TERM; touch {started}; while true; do sleep 0.05; done"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "CONSUL_HTTP_ADDR": agent.http})
    try:
        retry(lambda: started.exists(), 20, 0.05, "the command runs under the lock")
        server = cluster.agents[0]
        session = server.get("/v1/kv/jobs/nightly/.lock")[0]["Session"]
        agent.signal(signal.SIGSTOP)
        try:
            retry(lambda: server.get(f"/v1/session/info/{session}") == [], LIVENESS + 10, 0.1,
                  "the leader invalidates the session of a failed node")
        finally:
            agent.signal(signal.SIGCONT)
        stdout, stderr = proc.communicate(timeout=30)
        assert stopped.read_text() == "term\n", (stdout, stderr)
        assert "Lock lost, killing child" in stdout, (stdout, stderr)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def test_a_leader_killed_under_a_renewed_session_loses_no_lock(cluster, tmp_path):
    a, b = _client(cluster, "app-c"), _client(cluster, "app-e")
    out_a, out_b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    _locker(cluster, a, out_a, LEADER_KEY)
    retry(lambda: _acquired(out_a), 20, 0.1, "A holds the lock")
    _locker(cluster, b, out_b, LEADER_KEY)
    watch = HolderWatch([b, a], LEADER_KEY)
    session_a = _acquired(out_a)[0]["session"]
    # a real client across the failover too: py-consul's blocking get and session renew
    pc = consul.Consul(host="127.0.0.1", port=b.http_port)
    pc.kv.put("cfg/failover", "before")
    index, _ = pc.kv.get("cfg/failover")
    py_session = pc.session.create(name="py", ttl=10, lock_delay=0, checks=[])
    blocked: dict[str, Any] = {}
    waiter = threading.Thread(target=lambda: blocked.update(r=pc.kv.get("cfg/failover", index=index, wait="30s")))
    waiter.start()
    leader = next(s for s in cluster.agents if s.rpc == cluster.agents[0].leader())
    leader.kill()
    survivors = [s for s in cluster.agents if s is not leader]
    cluster.wait_leader(among=survivors)
    assert retry(lambda: pc.session.renew(py_session), 10, 0.2, "py-consul renews after the failover")["ID"] == py_session
    assert waiter.is_alive(), blocked  # the blocking get rode out the failover, still waiting
    pc.kv.put("cfg/failover", "after")
    waiter.join(15)
    assert blocked["r"][1]["Value"] == b"after" and blocked["r"][0] > index
    # past the TTL-expiry window (2 x TTL) after the failover: a TTL cut short would show by now
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:
        assert not _acquired(out_b), watch.history
        time.sleep(0.2)
    watch.stop()
    info = retry(lambda: a.get(f"/v1/session/info/{session_a}"), 10, 0.2, "session readable")
    assert [s["ID"] for s in info] == [session_a]
    assert watch.holders() == [session_a] and not [e for e in _events(out_a) if e["event"] == "lost"]
    entry = a.get(f"/v1/kv/{LEADER_KEY}")[0]
    assert entry["Session"] == session_a and entry["LockIndex"] == 1
