"""Catalog scale: one process simulating N client agents against 3 local servers.

    .venv/bin/python bench/catalog_scale.py [--nodes 1000 5000] [--watchers 100]

For each N: registers N nodes with 10 services each (a TTL-style check per service)
through the servers' RPC port, then keeps every simulated node alive the way an agent
does (heartbeats at the interval the leader asks for, anti-entropy reads at Consul's
scaled period) while it measures:

- server CPU (seconds used during the run) and RSS, and RSS growth per service instance;
- how long a health change takes to reach W blocking watchers of that service
  (`/v1/health/service/<name>?index=`), p50/p99 over several changes;
- `/v1/health/service/<name>` latency (an unfiltered service with N instances, and a
  `?passing&tag=` query that narrows it down).

Everything stays on 127.0.0.1; the servers are killed by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mesh.agent.backend import ServerPool  # noqa: E402
from mesh.agent.local.anti_entropy import scaled_interval  # noqa: E402
from mesh.agent.reads import ReadOptions  # noqa: E402
from mesh.catalog.commands import MessageType, RegisterRequest, encode  # noqa: E402
from mesh.catalog.structs import Check, Node, Service  # noqa: E402
from tests.harness.cluster import KEY, Cluster  # noqa: E402

SERVICES_PER_NODE = 10


def _proc_stat(pid: int) -> tuple[float, float]:
    """(cpu seconds, rss MiB) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return cpu, rss


def _node(i: int) -> Node:
    return Node(node=f"sim-{i:05d}", address=f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", datacenter="dc1")


def _register(i: int, rng: random.Random) -> list[bytes]:
    node = _node(i)
    out = []
    for k in range(SERVICES_PER_NODE):
        sid = f"svc-{k}-{i}"
        service = Service(id=sid, service=f"svc-{k}", port=8000 + k, tags=("v1", f"shard-{i % 10}"))
        check = Check(check_id=f"service:{sid}", name="ttl", status="passing", service_id=sid, type="ttl")
        req = RegisterRequest(node=node, service=service, checks=(check,))
        out.append(encode(MessageType.REGISTER, req, rng.getrandbits(128).to_bytes(16, "big")))
    return out


class Simulator:
    """N agents in one process: heartbeats and anti-entropy reads, as real agents make them."""

    def __init__(self, pool: ServerPool, nodes: int) -> None:
        self.pool = pool
        self.nodes = nodes
        self.heartbeats = 0
        self.ae_reads = 0
        self.errors = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def _heartbeats(self, i: int) -> None:
        node = _node(i)
        info = {"node": node.node, "address": node.address, "id": "", "tagged": {}, "meta": {}, "role": "client"}
        await asyncio.sleep(random.random() * 2)
        while True:
            try:
                interval = float(await self.pool.call("Node.Heartbeat", info, timeout=5, deadline=5))
                self.heartbeats += 1
            except Exception:  # noqa: BLE001 - counted; the simulation keeps going
                self.errors += 1
                interval = 1.0
            await asyncio.sleep(interval * (0.9 + 0.2 * random.random()))

    async def _anti_entropy(self, i: int) -> None:
        rng = random.Random(i)
        await asyncio.sleep(rng.random() * 60)
        while True:
            try:
                await self.pool.call("Read", {"q": "internal.node_state", "p": {"name": _node(i).node},
                                              "o": ReadOptions(stale=True).to_wire()}, timeout=10, deadline=10)
                self.ae_reads += 1
            except Exception:  # noqa: BLE001 - counted
                self.errors += 1
            await asyncio.sleep(scaled_interval(60, self.nodes, rng))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.nodes):
            self._tasks.append(loop.create_task(self._heartbeats(i)))
            self._tasks.append(loop.create_task(self._anti_entropy(i)))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _fill(pool: ServerPool, nodes: int) -> float:
    rng = random.Random(7)
    sem = asyncio.Semaphore(128)
    t0 = time.perf_counter()

    async def one(raw: bytes) -> None:
        async with sem:
            await pool.call("Catalog.Apply", {"raw": raw}, timeout=30, deadline=60)

    await asyncio.gather(*(one(raw) for i in range(nodes) for raw in _register(i, rng)))
    return time.perf_counter() - t0


async def _propagation(cluster: Cluster, pool: ServerPool, watchers: int, rounds: int) -> list[float]:
    """Flip one instance's check; time until each blocking watcher of the service returns."""
    servers = cluster.agents
    latencies: list[float] = []
    rng = random.Random(11)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=watchers + 10)) as session:
        for r in range(rounds):
            name = "svc-3"
            victim = r * 7 + 3  # a different instance each round, so every change is real
            tag = f"shard-{victim % 10}"
            base = f"http://{servers[0].http}"
            async with session.get(f"{base}/v1/health/service/{name}?stale&tag={tag}") as resp:
                index = int(resp.headers["X-Consul-Index"])
            done: list[float] = []

            async def watch(k: int, query: str, sink: list[float]) -> None:
                url = f"http://{servers[k % 3].http}/v1/health/service/{query}"
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as resp:
                    await resp.read()
                sink.append(time.perf_counter())

            query = f"{name}?stale&index={index}&wait=30s&tag={tag}"
            tasks = [asyncio.create_task(watch(k, query, done)) for k in range(watchers)]
            await asyncio.sleep(1.0)  # let every watcher reach the servers and block
            sid = f"svc-3-{victim}"
            check = Check(check_id=f"service:{sid}", name="ttl", status="critical", service_id=sid, type="ttl")
            req = RegisterRequest(node=_node(victim), checks=(check,), skip_node_update=True)
            changed = time.perf_counter()
            await pool.call("Catalog.Apply", {"raw": encode(MessageType.REGISTER, req, rng.getrandbits(128).to_bytes(16, "big"))})
            await asyncio.gather(*tasks)
            latencies.extend(t - changed for t in done)
    return latencies


async def _query_latency(cluster: Cluster, path: str, n: int = 20) -> tuple[float, int]:
    lat = []
    size = 0
    async with aiohttp.ClientSession() as session:
        for k in range(n):
            url = f"http://{cluster.agents[k % 3].http}{path}"
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.read()
            lat.append((time.perf_counter() - t0) * 1000)
            size = len(body)
    return statistics.median(lat), size


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def run_one(nodes: int, watchers: int, rounds: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="mesh-scale-")
    cluster = Cluster(tmp, 3)
    cluster.start()
    leader = cluster.wait_leader()
    pool = ServerPool([a.rpc for a in cluster.agents], KEY)
    try:
        await asyncio.sleep(2)
        before = {a.name: _proc_stat(a.proc.pid) for a in cluster.agents}
        fill_s = await _fill(pool, nodes)
        await asyncio.sleep(3)
        filled = {a.name: _proc_stat(a.proc.pid) for a in cluster.agents}
        sim = Simulator(pool, nodes)
        sim.start()
        await asyncio.sleep(5)
        mid = {a.name: _proc_stat(a.proc.pid) for a in cluster.agents}
        t_cpu = time.perf_counter()
        latencies = await _propagation(cluster, pool, watchers, rounds)
        full = await _query_latency(cluster, "/v1/health/service/svc-1?stale")
        narrow = await _query_latency(cluster, "/v1/health/service/svc-1?stale&passing&tag=shard-3")
        steady_window = time.perf_counter() - t_cpu
        after = {a.name: _proc_stat(a.proc.pid) for a in cluster.agents}
        await sim.stop()
        instances = nodes * SERVICES_PER_NODE
        return {
            "nodes": nodes,
            "instances": instances,
            "fill_s": round(fill_s, 1),
            "fill_per_s": round(instances / fill_s),
            "rss_mib": {k: round(v[1], 1) for k, v in after.items()},
            "rss_growth_bytes_per_instance_after_fill": {
                k: round((filled[k][1] - before[k][1]) * 1024 * 1024 / instances) for k in filled},
            "rss_growth_bytes_per_instance": {
                k: round((after[k][1] - before[k][1]) * 1024 * 1024 / instances) for k in after},
            "steady_cpu_percent": {
                k: round((after[k][0] - mid[k][0]) / steady_window * 100, 1) for k in after},
            "leader": leader.name,
            "watchers": watchers,
            "propagation_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "propagation_p99_ms": round(_pct(latencies, 0.99) * 1000, 1),
            "propagation_samples": len(latencies),
            "health_service_all_p50_ms": round(full[0], 1),
            "health_service_all_bytes": full[1],
            "health_service_filtered_p50_ms": round(narrow[0], 1),
            "heartbeats": sim.heartbeats,
            "ae_reads": sim.ae_reads,
            "sim_errors": sim.errors,
        }
    finally:
        await pool.close()
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    results = [asyncio.run(run_one(n, args.watchers, args.rounds)) for n in args.nodes]
    print(json.dumps(results, indent=2))
    print()
    print("| N nodes | instances | fill/s | leader RSS MiB | RSS growth B/instance after fill / after load (max) "
          "| propagation p50 / p99 ms | /health/service all: ms (bytes) | filtered ms | server CPU % under load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['nodes']} | {r['instances']} | {r['fill_per_s']} | {r['rss_mib'][r['leader']]} "
              f"| {max(r['rss_growth_bytes_per_instance_after_fill'].values())} / "
              f"{max(r['rss_growth_bytes_per_instance'].values())} "
              f"| {r['propagation_p50_ms']} / {r['propagation_p99_ms']} "
              f"| {r['health_service_all_p50_ms']} ({r['health_service_all_bytes']}) "
              f"| {r['health_service_filtered_p50_ms']} | {max(r['steady_cpu_percent'].values())} |")
    print("\ntargets: propagation p99 <= 1000 ms at 5,000 nodes; RSS growth < 2048 B per instance, linear")
    return 0


if __name__ == "__main__":
    sys.exit(main())
