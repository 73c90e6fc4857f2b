"""Leaf signing through the cluster, with 1,000 services renewing at once.

    .venv/bin/python bench/ca_sign.py [--services 1000] [--agents 2] [--steady 90]

Starts 3 servers and client agents on free 127.0.0.1 ports (processes killed by PID at
the end) and registers the services spread over the agents. Every signing is the real
path: the agent makes the key and CSR, a server checks the identity, Raft records the
serial, the server signs.

1. first issue: every service's leaf requested at once over HTTP;
2. all renew at once: a forced root rotation (with LeafCertTTL 30s) makes every agent
   re-issue every leaf; timed until all carry the new root;
3. steady renewals: --steady seconds of 30-second leaves; every renewal must arrive
   before the old leaf's 90% mark (agents' mesh_ca_leaf_renewed_at_fraction).

The baseline printed beside it is the ceiling of the same work in one process without
RPC or Raft (key, CSR, identity check, signature), measured in the same run, and
Consul's default CSR rate limit (CSRMaxPerSecond, 50/s), which is configuration, not a
measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import pathlib
import sys
import tempfile
import time
from typing import Any

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mesh.ca import manager  # noqa: E402
from mesh.ca import x509 as certs  # noqa: E402
from mesh.ca.spiffe import ServiceID  # noqa: E402
from tests.harness.cluster import Cluster, retry  # noqa: E402

QUIET = ["-log-level", "warn"]


def ceiling(n: int = 1000) -> float:
    """Signings per second in one process: the work without the cluster around it."""
    now = datetime.datetime.now(datetime.UTC)
    state = manager.initial_state(now, "", 1)
    t0 = time.perf_counter()
    for i in range(n):
        name = f"svc-{i}"
        _, csr = certs.make_csr(ServiceID(state["trust_domain"], "default", "dc1", name).uri())
        manager.sign_csr(state, csr, name, "dc1", i + 2, now, "")
    return n / (time.perf_counter() - t0)


def metric(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--steady", type=float, default=90.0)
    args = parser.parse_args()

    print(f"ceiling (one process, no RPC/Raft): {ceiling():,.0f} signings/s")
    print("Consul default CSRMaxPerSecond: 50 signings/s (a rate limit, for scale)")

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(pathlib.Path(tmp), 3, extra_args=QUIET)
        try:
            cluster.start()
            agents = [cluster.start_client(f"c{i}", QUIET) for i in range(args.agents)]
            owner = {f"svc-{i}": agents[i % len(agents)] for i in range(args.services)}
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as http:
                sem = asyncio.Semaphore(128)

                async def call(agent: Any, method: str, path: str, body: Any = None) -> Any:
                    async with sem, http.request(method, f"http://{agent.http}{path}", json=body) as resp:
                        if resp.status != 200:
                            raise RuntimeError(f"{method} {path}: {resp.status} {await resp.text()}")
                        return await resp.json(content_type=None)

                await asyncio.gather(*(call(a, "PUT", "/v1/agent/service/register", {"Name": s, "Port": 9000})
                                       for s, a in owner.items()))
                retry(lambda: len(cluster.agents[0].get("/v1/catalog/services")) > args.services, 60, 0.5,
                      "services in the catalog")
                retry(lambda: cluster.agents[0].get("/v1/connect/ca/roots")["Roots"], 30, 0.2, "CA")

                t0 = time.perf_counter()
                await asyncio.gather(*(call(a, "GET", f"/v1/agent/connect/ca/leaf/{s}") for s, a in owner.items()))
                first = time.perf_counter() - t0
                print(f"first issue:        {args.services} leaves in {first:.2f} s = "
                      f"{args.services / first:,.0f} signings/s (HTTP request to leaf in hand)")

                old_root = cluster.agents[0].get("/v1/connect/ca/roots")["ActiveRootID"]
                t0 = time.perf_counter()
                await call(agents[0], "PUT", "/v1/connect/ca/configuration",
                           {"Provider": "consul", "Config": {"LeafCertTTL": "30s"}, "ForceRotation": True})
                new_root = cluster.agents[0].get("/v1/connect/ca/roots")["ActiveRootID"]
                assert new_root != old_root

                async def renewed() -> int:
                    lists = await asyncio.gather(*(call(a, "GET", "/v1/agent/mesh/leaves") for a in agents))
                    return sum(1 for lst in lists for leaf in lst["Leaves"] if leaf["RootID"] == new_root)

                done = 0
                while done < args.services and time.perf_counter() - t0 < 120:
                    await asyncio.sleep(0.05)
                    done = await renewed()
                storm = time.perf_counter() - t0
                print(f"all renew at once:  {done}/{args.services} leaves re-issued {storm:.2f} s after the "
                      f"rotation = {done / storm:,.0f} signings/s")

                await asyncio.sleep(args.steady)
                late = total = errors = 0.0
                for agent in agents:
                    async with http.get(f"http://{agent.http}/v1/agent/metrics?format=prometheus") as resp:
                        text = await resp.text()
                    buckets = metric(text, "mesh_ca_leaf_renewed_at_fraction_bucket")
                    within = next((v for k, v in buckets.items() if 'le="0.9"' in k), 0.0)
                    count = next((v for k, v in buckets.items() if 'le="+Inf"' in k), 0.0)
                    late += count - within
                    total += count
                    errors += sum(metric(text, "mesh_ca_leaf_renewal_errors_total").values())
                sign_counts = [metric(s.get("/v1/agent/metrics?format=prometheus").decode(), "mesh_ca_sign_seconds_count")
                               for s in cluster.agents]
                signed = sum(v for d in sign_counts for v in d.values())
                print(f"steady ({args.steady:.0f} s of 30 s leaves): {total:.0f} renewals, {late:.0f} after their "
                      f"90% mark, {errors:.0f} renewal errors; servers signed {signed:.0f} leaves in all")
        finally:
            cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
