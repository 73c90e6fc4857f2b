"""A 3-member etcd cluster on 127.0.0.1 for the benchmarks' baselines (Debian's
etcd-server): free ports, one data-dir each, every process killed by PID at the end.

The benchmarks wrap it with their own request shapes (bench/raft_writes.py,
bench/kv.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from typing import Any

from tests.harness.cluster import free_port

__all__ = ["EtcdCluster", "available"]


def available() -> bool:
    return shutil.which("etcd") is not None


class EtcdCluster:
    def __init__(self, tmp: str, size: int = 3) -> None:
        self.tmp = os.path.join(tmp, "etcd")
        self.size = size
        self.client_ports = [free_port() for _ in range(size)]
        self.peer_ports = [free_port() for _ in range(size)]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def _cmd(self, i: int) -> list[str]:
        cluster = ",".join(f"e{j}=http://127.0.0.1:{self.peer_ports[j]}" for j in range(self.size))
        return ["etcd", "--name", f"e{i}", "--data-dir", os.path.join(self.tmp, f"e{i}"),
                "--listen-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{self.client_ports[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "bench", "--log-level", "error"]

    def start(self) -> None:
        """Every member, then wait for a leader."""
        os.makedirs(self.tmp, exist_ok=True)
        for i in range(self.size):
            self.restart(i)
        self.leader_index()

    def restart(self, i: int) -> None:
        log = open(os.path.join(self.tmp, f"e{i}.log"), "ab")  # noqa: SIM115 - handed to the child
        self.procs[i] = subprocess.Popen(self._cmd(i), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def status(self, i: int) -> dict[str, Any]:
        req = urllib.request.Request(f"{self.endpoint(i)}/v3/maintenance/status", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=1) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def leader_index(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in self.alive():
                try:
                    st = self.status(i)
                except OSError:
                    continue
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return i
            time.sleep(0.02)
        raise RuntimeError("etcd elected no leader")

    def endpoint(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    def endpoints(self) -> list[str]:
        return [self.endpoint(i) for i in self.alive()]

    def alive(self) -> list[int]:
        return [i for i, p in self.procs.items() if p.poll() is None]

    def pids(self) -> list[int]:
        return [self.procs[i].pid for i in self.alive()]

    def kill(self, i: int) -> None:
        proc = self.procs.pop(i)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for i in list(self.procs):
            self.kill(i)

    def logs(self, lines: int = 20) -> str:
        out = []
        for i in range(self.size):
            try:
                with open(os.path.join(self.tmp, f"e{i}.log"), "rb") as f:
                    out.append(f"--- e{i} ---\n" + b"".join(f.readlines()[-lines:]).decode("utf-8", "replace"))
            except OSError:
                pass
        return "\n".join(out)
