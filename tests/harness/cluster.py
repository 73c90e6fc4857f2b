"""Real `mesh agent` processes on 127.0.0.1 for integration and cluster tests.

Ports come from the kernel (bind to port 0, release, hand to the agent); processes get
their own process group and are killed by recorded PID; each agent logs to a file whose
tail is attached to failures. `retry` polls a condition instead of sleeping.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

KEY = base64.b64encode(b"k" * 32).decode()


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port nothing listens on, never the same one twice in a test run (the kernel
    may hand a just-released port out again, and two agents' ports must differ)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))  # free for UDP too (DNS binds both)
            except OSError:
                continue
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def retry(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.05, what: str = "") -> T:
    """Call fn until it returns a truthy value without raising; return that value."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - the condition is allowed to fail meanwhile
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or fn}: last error {last!r}")


class HTTPError(Exception):
    def __init__(self, status: int, body: str, headers: dict[str, str]) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body, self.headers = status, body, headers


@dataclass
class Agent:
    name: str
    data_dir: str
    http_port: int
    server_port: int
    raft_port: int
    args: list[str]
    log_path: str
    proc: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    dns_port: int = -1

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def rpc(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def start(self) -> Agent:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.agent.cli.main", "agent", *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
            env={**os.environ, **self.extra_env},
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, sig)

    def kill(self, keep_proxies: bool = False) -> None:
        """SIGKILL the agent and, unless `keep_proxies` (a test of adoption), the sidecar
        proxies it started: they outlive a crashed agent by design, not a test."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if not keep_proxies:
            for pid in proxy_pids(self.http):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def stop(self, timeout: float = 10) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                timeout: float = 15, token: str = "") -> tuple[Any, dict[str, str]]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(f"http://{self.http}{path}", data=data, method=method,
                                     headers={"X-Consul-Token": token} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = resp.read()
                headers = dict(resp.headers)
                if resp.headers.get_content_type() == "application/json":
                    return (json.loads(payload) if payload else None), headers
                return payload, headers
        except urllib.error.HTTPError as exc:
            raise HTTPError(exc.code, exc.read().decode("utf-8", "replace"), dict(exc.headers)) from None

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)[0]

    def put(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.request("PUT", path, body, **kw)[0]

    def leader(self) -> str:
        return str(self.get("/v1/status/leader", timeout=3))


class Cluster:
    """N servers with -bootstrap-expect N, each with its own ports and data-dir."""

    def __init__(self, tmp_path: Any, size: int = 3, extra_args: list[str] | None = None) -> None:
        self.tmp = str(tmp_path)
        self.agents: list[Agent] = []
        self.clients: list[Agent] = []
        self.size = size
        self.extra_args = extra_args or []
        for i in range(size):
            self.agents.append(self._make(f"s{i + 1}"))

    def _make(self, name: str, join_to: list[Agent] | None = None, expect: int | None = None) -> Agent:
        data_dir = os.path.join(self.tmp, name)
        os.makedirs(data_dir, exist_ok=True)
        agent = Agent(name, data_dir, free_port(), free_port(), free_port(), [], os.path.join(self.tmp, f"{name}.log"))
        return agent

    def _args(self, agent: Agent, peers: list[Agent], expect: int) -> list[str]:
        args = ["-server", "-node", agent.name, "-data-dir", agent.data_dir, "-bind", "127.0.0.1",
                "-http-port", str(agent.http_port), "-server-port", str(agent.server_port),
                "-raft-port", str(agent.raft_port), "-dns-port", "-1", "-encrypt", KEY, "-log-level", "debug"]
        if expect:
            args += ["-bootstrap-expect", str(expect)]
        for p in peers:
            if p is not agent:
                args += ["-retry-join", p.rpc]
        return args + self.extra_args

    def start(self) -> Cluster:
        for agent in self.agents:
            agent.args = self._args(agent, self.agents, self.size)
            agent.start()
        self.wait_leader()
        return self

    def add_server(self) -> Agent:
        agent = self._make(f"s{len(self.agents) + 1}")
        agent.args = self._args(agent, [a for a in self.agents if a.alive()], 0)
        self.agents.append(agent)
        return agent.start()

    def start_client(self, name: str, extra: list[str] | None = None, dns: bool = False) -> Agent:
        """add_client, started, and answering its HTTP API."""
        agent = self.add_client(name, extra, dns)
        agent.start()
        retry(lambda: agent.get("/v1/agent/self"), 15, 0.1, f"client agent {name} up")
        return agent

    def add_client(self, name: str, extra: list[str] | None = None, dns: bool = False) -> Agent:
        """A client agent (not started) that joins every server; `extra` flags appended;
        with `dns`, a DNS listener on a free port (`agent.dns_port`)."""
        agent = self._make(name)
        agent.server_port = 0
        agent.raft_port = 0
        agent.dns_port = free_port() if dns else -1
        args = ["-node", name, "-data-dir", agent.data_dir, "-bind", "127.0.0.1", "-http-port", str(agent.http_port),
                "-dns-port", str(agent.dns_port), "-encrypt", KEY, "-log-level", "debug"]
        for s in self.agents:
            if s.server_port:
                args += ["-retry-join", s.rpc]
        agent.args = args + (extra or [])
        self.clients.append(agent)
        return agent

    def live(self) -> list[Agent]:
        return [a for a in self.agents if a.alive()]

    def wait_leader(self, timeout: float = 20, among: list[Agent] | None = None) -> Agent:
        """Every live agent agrees on one leader, and that leader is live; returns it."""
        among = among or self.live()

        def agreed() -> Agent | None:
            leaders = {a.leader() for a in among}
            if len(leaders) != 1 or "" in leaders:
                return None
            (rpc,) = leaders
            for a in among:
                if a.rpc == rpc:
                    return a
            return None

        return retry(agreed, timeout, 0.1, "one agreed leader")

    def stop(self) -> None:
        for a in self.agents + self.clients:
            a.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {a.name} ---\n{a.log_tail()}" for a in self.agents + self.clients)


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [p.decode("utf-8", "replace") for p in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def proxy_pids(agent_http: str, parent_id: str = "") -> list[int]:
    """Live `connect proxy` processes (of `parent_id`'s sidecar when given) whose
    CONSUL_HTTP_ADDR is `agent_http`: what `pgrep -f` finds, narrowed to one agent,
    since other runs on this machine may use the same service IDs."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        cmd = _cmdline(int(name))
        if not any(a == "connect" and b == "proxy" for a, b in zip(cmd, cmd[1:], strict=False)):
            continue
        if parent_id and not ("-sidecar-for" in cmd and parent_id in cmd):
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if state not in ("Z", "X") and f"CONSUL_HTTP_ADDR={agent_http}".encode() in env:
            out.append(int(name))
    return out


def dev_agent(tmp: Any, name: str = "dev", extra: list[str] | None = None, dns: bool = False,
              node: str = "") -> Agent:
    """A started `mesh agent -dev` on free ports (DNS off unless `dns`), with a leader.
    The caller kills it."""
    tmp = str(tmp)
    agent = Agent(name, tmp, free_port(), free_port(), free_port(), [], os.path.join(tmp, f"{name}.log"))
    agent.dns_port = free_port() if dns else -1
    agent.args = ["-dev", "-node", node or f"{name}node", "-http-port", str(agent.http_port),
                  "-server-port", str(agent.server_port), "-raft-port", str(agent.raft_port),
                  "-dns-port", str(agent.dns_port), *(extra or [])]
    started = time.monotonic()
    agent.start()
    try:
        retry(lambda: agent.leader(), 20, 0.02, f"{name} agent leader")
    except BaseException:
        agent.kill()
        raise
    agent.ready_seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return agent


def rss_kib(agent_or_pid: Agent | int, field: str = "VmRSS") -> int:
    """A field of /proc/PID/status in KiB (resident memory by default)."""
    pid = agent_or_pid if isinstance(agent_or_pid, int) else agent_or_pid.proc.pid  # type: ignore[union-attr]
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def metric_value(data: dict[str, Any], name: str, **labels: str) -> float:
    """A gauge or counter from /v1/agent/metrics (JSON), 0 when absent."""
    for kind, key in (("Gauges", "Value"), ("Counters", "Count")):
        for m in data.get(kind, []):
            if m["Name"] == name and all(m.get("Labels", {}).get(k) == v for k, v in labels.items()):
                return float(m[key])
    return 0.0


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the peer closes `sock` (EOF or reset) within `seconds`; data is skipped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except OSError:
            return True
    return False


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def sidecar_range(n: int, taken: int = 0) -> int:
    """The first of `n` consecutive free ports below the kernel's ephemeral range (where
    free_port takes its ports), away from Consul's default 21000-21255 and from the range
    starting at `taken`, so each client agent (and other test runs) gets its own."""
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(22000, 32000 - n)
        if taken and abs(base - taken) < n:
            continue
        if all(_bindable(p) for p in range(base, base + n)):
            return base
    raise AssertionError("no free range of sidecar ports")


def kill_proxies(agents: list[Agent], seen: set[int]) -> None:
    """SIGKILL every sidecar proxy the agents ran: the PIDs `seen` and those in the
    pidfiles left in their data-dirs, each only if its command line is a proxy's (a
    recycled PID is left alone). Call after the agents are stopped, so none restarts one."""
    pids = set(seen)
    for agent in agents:
        if agent is None:
            continue
        for pidfile in Path(agent.data_dir, "proxies").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.add(int(json.loads(pidfile.read_text())["Pid"]))
    for pid in pids:
        cmd = _cmdline(pid)
        if any(a == "connect" and b == "proxy" for a, b in zip(cmd, cmd[1:], strict=False)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
