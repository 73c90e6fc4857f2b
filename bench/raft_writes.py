"""Catalog writes through 3 mesh servers beside a 3-member etcd, same client, same run.

    .venv/bin/python bench/raft_writes.py [--quick]

Needs Debian's etcd-server (`apt-get install etcd-server`); without it only mesh is
measured and the script says so. Everything listens on 127.0.0.1 with free ports;
every process it starts is killed by PID at the end.

Figures: sequential write latency p50/p99 (one writer, to the leader), concurrent
writes/s with 64 and 256 in flight (spread over the three members), and failover
(SIGKILL the leader -> first successful write through a survivor, median of 5).
mesh writes are /v1/catalog/register calls with durability on (fsync); etcd writes
are 256-byte puts through its HTTP/JSON gateway (/v3/kv/put).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.etcd import EtcdCluster  # noqa: E402
from tests.harness.cluster import Cluster  # noqa: E402

VALUE = b"v" * 256


class MeshTarget:
    name = "mesh"

    def __init__(self, tmp: str) -> None:
        self.cluster = Cluster(os.path.join(tmp, "mesh"), 3)

    def start(self) -> None:
        self.cluster.start()

    def endpoints(self) -> list[str]:
        return [f"http://{a.http}" for a in self.cluster.live()]

    def leader_index(self) -> int:
        leader = self.cluster.wait_leader()
        return self.cluster.agents.index(leader)

    def endpoint(self, i: int) -> str:
        return f"http://{self.cluster.agents[i].http}"

    def request(self, base: str, i: int) -> tuple[str, str, bytes]:
        body = {"Node": f"bench-{i % 1000}", "Address": "10.0.0.1",
                "Service": {"ID": f"w-{i}", "Service": "bench", "Port": 8080, "Tags": ["v1"],
                            "Meta": {"pad": "x" * 120}}}
        return "PUT", base + "/v1/catalog/register", json.dumps(body).encode()

    def kill(self, i: int) -> None:
        self.cluster.agents[i].kill()

    def restart(self, i: int) -> None:
        self.cluster.agents[i].start()

    def alive(self) -> list[int]:
        return [i for i, a in enumerate(self.cluster.agents) if a.alive()]

    def stop(self) -> None:
        self.cluster.stop()


class EtcdTarget(EtcdCluster):
    """The etcd baseline: 256-byte puts through its HTTP/JSON gateway."""

    name = "etcd"

    def request(self, base: str, i: int) -> tuple[str, str, bytes]:
        body = {"key": base64.b64encode(f"bench/{i}".encode()).decode(), "value": base64.b64encode(VALUE).decode()}
        return "POST", base + "/v3/kv/put", json.dumps(body).encode()


async def _one(session: aiohttp.ClientSession, target: Any, base: str, i: int, timeout: float = 10) -> float | None:
    method, url, body = target.request(base, i)
    t0 = time.perf_counter()
    try:
        async with session.request(method, url, data=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            await resp.read()
            if resp.status != 200:
                return None
    except (TimeoutError, aiohttp.ClientError):
        return None
    return time.perf_counter() - t0


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def sequential(target: Any, n: int) -> dict[str, float]:
    base = target.endpoint(target.leader_index())
    lat = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            dt = await _one(session, target, base, 10_000_000 + i)
            if dt is not None:
                lat.append(dt * 1000)
    return {"p50_ms": statistics.median(lat), "p99_ms": _pct(lat, 0.99), "ok": len(lat)}


async def concurrent(target: Any, n: int, in_flight: int, offset: int) -> dict[str, float]:
    bases = target.endpoints()
    sem = asyncio.Semaphore(in_flight)
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def run(i: int) -> bool:
            async with sem:
                return await _one(session, target, bases[i % len(bases)], offset + i, 30) is not None

        t0 = time.perf_counter()
        ok = sum(await asyncio.gather(*(run(i) for i in range(n))))
        elapsed = time.perf_counter() - t0
    return {"writes_per_s": ok / elapsed, "ok": ok, "n": n}


async def failover(target: Any, trials: int) -> dict[str, Any]:
    times = []
    async with aiohttp.ClientSession() as session:
        for trial in range(trials):
            leader = target.leader_index()
            survivors = [i for i in target.alive() if i != leader]
            await asyncio.sleep(0.5)
            target.kill(leader)
            t0 = time.perf_counter()
            i = 0
            while time.perf_counter() - t0 < 30:
                base = target.endpoint(survivors[i % len(survivors)])
                if await _one(session, target, base, 20_000_000 + trial * 10_000 + i, 0.5) is not None:
                    break
                i += 1
            times.append(time.perf_counter() - t0)
            target.restart(leader)
            await asyncio.sleep(1.0)
            target.leader_index()
            # wait until the restarted member answers before the next trial
            for _ in range(200):
                if await _one(session, target, target.endpoint(leader), 30_000_000 + trial, 1.0) is not None:
                    break
    return {"median_s": statistics.median(times), "all_s": [round(t, 2) for t in times]}


def measure(target: Any, quick: bool) -> dict[str, Any]:
    n_seq = 200 if quick else 1000
    n_conc = 3000 if quick else 10000
    out: dict[str, Any] = {}
    target.start()
    try:
        out["seq"] = asyncio.run(sequential(target, n_seq))
        out["c64"] = asyncio.run(concurrent(target, n_conc, 64, 1_000_000))
        out["c256"] = asyncio.run(concurrent(target, n_conc, 256, 2_000_000))
        out["failover"] = asyncio.run(failover(target, 3 if quick else 5))
    finally:
        target.stop()
    return out


def _row(label: str, mesh: float | None, etcd: float | None, fmt: str, better: Callable[[float, float], float]) -> str:
    m = fmt.format(mesh) if mesh is not None else "-"
    e = fmt.format(etcd) if etcd is not None else "-"
    ratio = f"{better(mesh, etcd):.2f}x" if mesh is not None and etcd else "-"
    return f"| {label} | {m} | {e} | {ratio} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer writes and failover trials")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="mesh-bench-")
    try:
        results = {"mesh": measure(MeshTarget(tmp), args.quick)}
        if shutil.which("etcd"):
            results["etcd"] = measure(EtcdTarget(tmp), args.quick)
        else:
            print("etcd not found: install Debian's etcd-server for the side-by-side baseline", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    m, e = results["mesh"], results.get("etcd")
    print(json.dumps(results, indent=2))
    print()
    print("| figure | mesh | etcd | mesh vs etcd |")
    print("|---|---:|---:|---:|")
    print(_row("sequential p50 (ms)", m["seq"]["p50_ms"], e and e["seq"]["p50_ms"], "{:.2f}", lambda a, b: b / a))
    print(_row("sequential p99 (ms)", m["seq"]["p99_ms"], e and e["seq"]["p99_ms"], "{:.2f}", lambda a, b: b / a))
    print(_row("writes/s, 64 in flight", m["c64"]["writes_per_s"], e and e["c64"]["writes_per_s"], "{:.0f}", lambda a, b: a / b))
    print(_row("writes/s, 256 in flight", m["c256"]["writes_per_s"], e and e["c256"]["writes_per_s"], "{:.0f}", lambda a, b: a / b))
    print(_row("failover median (s)", m["failover"]["median_s"], e and e["failover"]["median_s"], "{:.2f}", lambda a, b: b / a))
    print("\n(ratios > 1 mean mesh is better: faster, more writes/s, or quicker failover)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
