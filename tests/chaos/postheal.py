"""What must hold once the nemesis has healed everything.

One leader within 5 s; every key's final value (read `?consistent`) on every server
(read `?stale`), and every server's catalog hash equal, within 10 s; every client agent
lists every server alive and answers a read within 10 s; no agent process died that
the nemesis did not kill; each server's RSS within a bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .analysis import Anomaly
from .cluster import ChaosCluster
from .linearizability import Op

__all__ = ["PostHeal", "check_recovery", "check_state"]

LEADER_WITHIN = 5.0
CONVERGE_WITHIN = 10.0
CLIENTS_WITHIN = 10.0


@dataclass
class PostHeal:
    anomalies: list[Anomaly] = field(default_factory=list)
    final_reads: list[Op] = field(default_factory=list)
    leader_after: float | None = None
    converged_after: float | None = None
    clients_after: float | None = None
    rss_mib: dict[str, float | None] = field(default_factory=dict)


def check_recovery(cluster: ChaosCluster, out: PostHeal) -> None:
    """Right after healing (the workload may still run): a leader within 5 s, every
    client sees every server within 10 s."""
    healed = time.monotonic()
    try:
        _, took = cluster.wait_leader(LEADER_WITHIN)
        out.leader_after = took
    except TimeoutError as exc:
        out.anomalies.append(Anomaly("leader", f"no single leader within {LEADER_WITHIN}s of healing: {exc}"))
    _clients(cluster, out, healed)


def check_state(cluster: ChaosCluster, keys: list[str], rss_bound_mib: float, out: PostHeal) -> None:
    """Once the workload has stopped: final values, convergence, deaths, memory."""
    try:
        leader, _ = cluster.wait_leader(30)
    except TimeoutError as exc:
        out.anomalies.append(Anomaly("leader", f"no leader 30 s after the workload stopped: {exc}"))
        return
    _final_values(cluster, leader.http, keys, out)
    _converge(cluster, keys, out)
    for a in cluster.servers + cluster.clients:
        if a.died_unexpectedly():
            out.anomalies.append(Anomaly("process", f"{a.name} exited by itself with code {a.exit_code()}\n"
                                                    f"{a.log_tail(15)}"))
    for s in cluster.servers:
        rss = s.rss_mib()
        out.rss_mib[s.name] = rss
        if rss is not None and rss > rss_bound_mib:
            out.anomalies.append(Anomaly("memory", f"{s.name} RSS {rss:.0f} MiB > {rss_bound_mib:.0f} MiB"))


def _final_values(cluster: ChaosCluster, addr: str, keys: list[str], out: PostHeal) -> None:
    """`?consistent` reads of every key through the leader, retried until none fails."""
    deadline = time.monotonic() + 20
    while True:
        t0 = time.monotonic()
        values = cluster.ask({"op": "consistent", "addr": addr, "keys": keys}, timeout=120)
        t1 = time.monotonic()
        errors = {k: v for k, v in values.items() if isinstance(v, dict)}
        if not errors:
            out.final_reads = [Op(k, "read", v, t0, t1, "ok", "final") for k, v in values.items()]
            return
        if time.monotonic() > deadline:
            out.anomalies.append(Anomaly("final-read", f"consistent reads still failing 20 s after heal: "
                                                       f"{dict(list(errors.items())[:5])}"))
            return
        time.sleep(0.5)


def _converge(cluster: ChaosCluster, keys: list[str], out: PostHeal) -> None:
    final = {op.key: op.value for op in out.final_reads}
    t0 = time.monotonic()
    problems: list[str] = []
    while True:
        problems = []
        state: dict[str, Any] = cluster.ask({"op": "state", "servers": cluster.server_map(), "keys": keys}, timeout=120)
        hashes = {name: s["hash"] for name, s in state.items()}
        if len(set(hashes.values())) != 1 or None in hashes.values():
            problems.append(f"catalog hashes differ: {hashes} (indexes {({n: s['index'] for n, s in state.items()})})")
        for name, s in state.items():
            missing = {k: (s["values"].get(k), v) for k, v in final.items() if s["values"].get(k) != v}
            if missing:
                sample = dict(list(missing.items())[:4])
                problems.append(f"{name} differs from the final values on {len(missing)} keys "
                                f"(server's, final): {sample}")
        if not problems:
            out.converged_after = time.monotonic() - t0
            return
        if time.monotonic() - t0 > CONVERGE_WITHIN:
            for p in problems:
                out.anomalies.append(Anomaly("convergence", f"{CONVERGE_WITHIN:g}s after heal: {p}"))
            return
        time.sleep(0.5)


def _clients(cluster: ChaosCluster, out: PostHeal, healed: float) -> None:
    servers = sorted(s.name for s in cluster.servers)
    while True:
        seen = cluster.ask({"op": "clients", "clients": cluster.client_map()})
        bad = {n: v for n, v in seen.items() if v["servers_alive"] != servers or v["read_status"] != 200}
        if not bad:
            out.clients_after = time.monotonic() - healed
            return
        if time.monotonic() - healed > CLIENTS_WITHIN:
            for name, v in bad.items():
                out.anomalies.append(Anomaly(
                    "client-servers", f"client {name} {CLIENTS_WITHIN:g}s after heal lists servers alive "
                                      f"{v['servers_alive']} (want {servers}), a read through it answers "
                                      f"{v['read_status']}"))
            return
        time.sleep(0.5)
