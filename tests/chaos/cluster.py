"""A mesh cluster of hosts in namespaces: N servers, 2 clients and an observer.

The observer namespace is where every HTTP request comes from (the workload process
and the one-shot probes); it is never cut off, so it talks to both sides of a
partition, like clients that sit on either side.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from typing import Any

from .agents import AgentProc, client_args, server_args
from .netns import Host, Network

__all__ = ["ChaosCluster", "REPO_ROOT"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ChaosCluster:
    def __init__(self, workdir: str, servers: int = 3, clients: int = 2, client_seeds: str = "mixed") -> None:
        """`client_seeds`: which servers a client is given as -retry-join: "all", "one"
        (client i gets server i only, the way issue 11 found people write it) or "mixed"
        (the first client all, the others one each)."""
        self.workdir = workdir
        self.client_seeds = client_seeds
        self.net = Network()
        self.n_servers = servers
        self.n_clients = clients
        self.servers: list[AgentProc] = []
        self.clients: list[AgentProc] = []
        self.observer: Host | None = None

    # lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> ChaosCluster:
        atexit.register(self.stop)  # also when the caller never reaches its finally
        self.net.create()
        server_hosts = [self.net.add_host(f"s{i + 1}") for i in range(self.n_servers)]
        client_hosts = [self.net.add_host(f"c{i + 1}") for i in range(self.n_clients)]
        self.observer = self.net.add_host("obs")
        for h in server_hosts:
            data = self._dir(h.name)
            self.servers.append(AgentProc(h.name, h, server_args(h.name, h, data, server_hosts, self.n_servers),
                                          os.path.join(self.workdir, f"{h.name}.log"), server=True))
        for i, h in enumerate(client_hosts):
            data = self._dir(h.name)
            one = self.client_seeds == "one" or (self.client_seeds == "mixed" and i > 0)
            seeds = [server_hosts[i % len(server_hosts)]] if one else server_hosts
            self.clients.append(AgentProc(h.name, h, client_args(h.name, h, data, seeds),
                                          os.path.join(self.workdir, f"{h.name}.log"), server=False))
        for a in self.servers + self.clients:
            a.start()
        self.wait_leader(timeout)
        self._register_leaf_services(timeout)
        return self

    def _dir(self, name: str) -> str:
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def _register_leaf_services(self, timeout: float) -> None:
        """One service per client agent, so the workload can ask that client for its leaf."""
        deadline = time.monotonic() + timeout
        for c in self.clients:
            while True:
                r = self.ask({"op": "request", "method": "PUT", "addr": c.http, "path": "/v1/agent/service/register",
                              "body": {"Name": f"chaos-web-{c.name}", "Port": 8080}})
                if r["status"] == 200:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"client {c.name} did not take a service: {r}")
                time.sleep(0.5)

    def stop(self) -> None:
        """Kill our agents by PID and delete our namespaces; safe to call twice."""
        for a in self.servers + self.clients:
            try:
                a.kill()
            except Exception:  # noqa: BLE001, S110 - teardown goes on to the namespaces
                pass
        self.net.destroy()

    # the observer ---------------------------------------------------------------------
    def observer_cmd(self, module: str, *args: str) -> list[str]:
        assert self.observer is not None
        return [*self.observer.exec_prefix(), sys.executable, "-m", module, *args]

    def ask(self, req: dict[str, Any], timeout: float = 30) -> Any:
        """Run one probe in the observer namespace and return its JSON answer."""
        res = subprocess.run(self.observer_cmd("tests.chaos.probe", json.dumps(req)), cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"probe {req['op']} failed: {res.stderr[-500:]}")
        return json.loads(res.stdout)

    # views ------------------------------------------------------------------------------
    def server_map(self, only_alive: bool = True) -> dict[str, str]:
        return {s.name: s.http for s in self.servers if s.alive() and not s.paused or not only_alive}

    def client_map(self) -> dict[str, str]:
        return {c.name: c.http for c in self.clients}

    def leaders(self) -> dict[str, Any]:
        return self.ask({"op": "leaders", "servers": self.server_map()})

    def leader(self) -> AgentProc | None:
        """The server every live server names as leader, if they agree."""
        seen = set(self.leaders().values())
        if len(seen) != 1:
            return None
        (rpc,) = seen
        return next((s for s in self.servers if s.rpc == rpc), None)

    def wait_leader(self, timeout: float) -> tuple[AgentProc, float]:
        """(leader, seconds it took) once all live servers agree; raises after timeout."""
        t0 = time.monotonic()
        while True:
            leader = self.leader()
            if leader is not None and leader.alive():
                return leader, time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"no agreed leader within {timeout}s: {self.leaders()}")
            time.sleep(0.3)

    def logs(self, lines: int = 25) -> str:
        return "\n".join(f"--- {a.name} ({a.log_path}) ---\n{a.log_tail(lines)}" for a in self.servers + self.clients)
