"""Real `mesh agent` processes inside host namespaces, controlled by PID.

`ip netns exec` enters the namespace and execs the command, so the PID Popen returns
is the agent's own: signals (SIGKILL, SIGSTOP, SIGCONT) go straight to it. Every
process remembers whether the nemesis killed it, so the final check can tell a death
it caused from one it did not.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from tests.harness.cluster import KEY

from .netns import Host

__all__ = ["AgentProc", "server_args", "client_args", "HTTP_PORT", "SERVER_PORT"]

HTTP_PORT = 8500
SERVER_PORT = 8300


def _mesh_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "mesh")


def server_args(name: str, host: Host, data_dir: str, peers: list[Host], expect: int) -> list[str]:
    args = ["-server", "-node", name, "-bootstrap-expect", str(expect), "-bind", host.addr,
            "-client", "0.0.0.0", "-data-dir", data_dir, "-encrypt", KEY, "-dns-port", "-1",
            "-log-level", "debug"]
    for p in peers:
        if p is not host:
            args += ["-retry-join", f"{p.addr}:{SERVER_PORT}"]
    return args


def client_args(name: str, host: Host, data_dir: str, servers: list[Host]) -> list[str]:
    args = ["-node", name, "-bind", host.addr, "-client", "0.0.0.0", "-data-dir", data_dir,
            "-encrypt", KEY, "-dns-port", "-1", "-log-level", "debug"]
    for s in servers:
        args += ["-retry-join", f"{s.addr}:{SERVER_PORT}"]
    return args


@dataclass
class AgentProc:
    name: str
    host: Host
    args: list[str]
    log_path: str
    server: bool
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False  # the nemesis (or teardown) ended it on purpose
    paused: bool = False
    pids: list[int] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)  # CLOCK_MONOTONIC of each start

    @property
    def http(self) -> str:
        return f"{self.host.addr}:{HTTP_PORT}"

    @property
    def rpc(self) -> str:
        return f"{self.host.addr}:{SERVER_PORT}"

    def start(self) -> AgentProc:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [*self.host.exec_prefix(), _mesh_bin(), "agent", *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd="/",
        )
        log.close()
        self.killed = False
        self.paused = False
        self.pids.append(self.proc.pid)
        self.starts.append(time.monotonic())
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def died_unexpectedly(self) -> bool:
        return self.proc is not None and not self.killed and self.proc.poll() is not None

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> None:
        """SIGKILL by PID (and SIGCONT first is not needed: SIGKILL ends a stopped process)."""
        self.killed = True
        self.paused = False
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        if self.alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def rss_mib(self) -> float | None:
        """Resident set size from /proc (the PID namespace is shared with ours)."""
        if not self.alive():
            return None
        assert self.proc is not None
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def log_tail(self, lines: int = 30) -> str:
        """The last lines above debug level (the debug stream is mostly raft_applied)."""
        try:
            with open(self.log_path, "rb") as f:
                kept = [line for line in f.readlines() if b"[debug" not in line]
            return b"".join(kept[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""
