"""Authorization speed: in-process decisions and /v1/agent/connect/authorize.

    .venv/bin/python bench/authorize.py [--intentions 10000] [--requests 20000]

In-process: an IntentionIndex over 100 and over N intentions (exact pairs plus a few
wildcards), timing each decision for exact matches (p50/p99 in microseconds), which
must not depend on N. Over HTTP: a `mesh agent -dev` on free 127.0.0.1 ports gets N
intentions, and once its cache holds them all, authorize requests with 64 in flight
measure requests per second. The agent is killed by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mesh.catalog.intentions import Intention, IntentionIndex, precedence  # noqa: E402
from tests.harness.cluster import free_port, retry  # noqa: E402


def _pairs(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    out = {(f"svc-{i}", f"svc-{(i * 7 + 1) % n}", "allow" if i % 3 else "deny") for i in range(n - 3)}
    out |= {("*", "svc-1", "deny"), ("svc-2", "*", "allow"), ("*", "*", "deny")}
    return sorted(out)


def in_process(n: int, samples: int = 100_000) -> dict[str, float]:
    rng = random.Random(n)
    pairs = _pairs(n, rng)
    index = IntentionIndex(Intention(id=str(i), source_name=s, destination_name=d, action=a, precedence=precedence(s, d))
                           for i, (s, d, a) in enumerate(pairs))
    exact = [(s, d) for s, d, _ in pairs if s != "*" and d != "*"]
    queries = [rng.choice(exact) for _ in range(samples)]
    times = []
    clock = time.perf_counter_ns
    for s, d in queries:
        t0 = clock()
        index.decide(s, d, True)
        times.append(clock() - t0)
    times.sort()
    return {"intentions": len(pairs), "p50_us": times[len(times) // 2] / 1000,
            "p99_us": times[int(len(times) * 0.99)] / 1000, "mean_us": statistics.fmean(times) / 1000}


async def over_http(n: int, requests: int) -> dict[str, float]:
    http = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-http-port", str(http),
                             "-server-port", str(free_port()), "-raft-port", str(free_port()), "-dns-port", "-1",
                             "-log-level", "warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    base = f"http://127.0.0.1:{http}"
    try:
        retry(lambda: urllib.request.urlopen(base + "/v1/status/leader", timeout=2).read() != b'""', 15, 0.1)
        pairs = _pairs(n, random.Random(n))
        sem = asyncio.Semaphore(64)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
            async def put(s: str, d: str, a: str) -> None:
                async with sem, session.put(f"{base}/v1/connect/intentions/exact", params={"source": s, "destination": d},
                                            data=json.dumps({"Action": a})) as resp:
                    assert resp.status == 200, await resp.text()

            t0 = time.perf_counter()
            await asyncio.gather(*(put(*p) for p in pairs))
            write_s = time.perf_counter() - t0

            def cached() -> bool:
                text = urllib.request.urlopen(base + "/v1/agent/metrics?format=prometheus", timeout=5).read().decode()
                m = re.search(r"^mesh_intentions_cached (\S+)$", text, re.M)
                return bool(m and float(m.group(1)) >= len(pairs))

            retry(cached, 30, 0.2, "agent cache holds every intention")
            exact = [(s, d) for s, d, _ in pairs if s != "*" and d != "*"]
            rng = random.Random(1)

            async def authorize(i: int) -> None:
                s, d = rng.choice(exact)
                body = {"Target": d, "ClientCertURI": f"spiffe://td.consul/ns/default/dc/dc1/svc/{s}"}
                async with sem, session.post(f"{base}/v1/agent/connect/authorize", data=json.dumps(body)) as resp:
                    await resp.read()

            t0 = time.perf_counter()
            await asyncio.gather(*(authorize(i) for i in range(requests)))
            elapsed = time.perf_counter() - t0
        return {"intentions": len(pairs), "write_s": round(write_s, 1), "authorize_per_s": round(requests / elapsed)}
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intentions", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    small, big = in_process(100), in_process(args.intentions)
    http = asyncio.run(over_http(args.intentions, args.requests))
    print(json.dumps({"in_process": [small, big], "http": http}, indent=2))
    print()
    print("| intentions | decision p50 µs | decision p99 µs |")
    print("|---:|---:|---:|")
    for r in (small, big):
        print(f"| {r['intentions']} | {r['p50_us']:.2f} | {r['p99_us']:.2f} |")
    print(f"\n/v1/agent/connect/authorize with {http['intentions']} intentions: {http['authorize_per_s']} requests/s "
          f"(64 in flight); writing them took {http['write_s']} s")
    print("target: in-process p99 <= 20 µs, independent of the number of intentions for exact matches")
    return 0


if __name__ == "__main__":
    sys.exit(main())
