"""Soak: mixed load through client agents while servers are killed and restarted.

    .venv/bin/python bench/soak.py [--minutes 30] [--kill-every 180] [--down 10] [--clients 2]

Starts 3 servers and client agents on free 127.0.0.1 ports (killed by PID at the end).
Workers send, through the client agents only: catalog registrations of unique nodes
(each acknowledged one is remembered) and some deregistrations, TTL health updates,
blocking watchers on a service, DNS queries, and intention checks. Every --kill-every
seconds one server (the leader every other time) is SIGKILLed and restarted on its
data-dir --down seconds later.

Each minute it prints operations per second and p99 latency by kind, errors by kind,
and the leader's RSS. At the end every acknowledged registration that was not
deregistered must be on every server (read with ?stale from each), and the report says
how many errors fell outside the 15 seconds after a kill ("confined") and whether RSS
stopped growing over the last third of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import signal
import sys
import tempfile
import time
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness.cluster import Agent, Cluster, retry  # noqa: E402

QUIET = ["-log-level", "warn"]
KINDS = ("register", "deregister", "health", "watch", "dns", "authorize")


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = collections.defaultdict(list)
        self.errors: collections.Counter[str] = collections.Counter()
        self.error_times: list[float] = []

    def ok(self, kind: str, seconds: float) -> None:
        self.lat[kind].append(seconds)

    def fail(self, kind: str, why: str) -> None:
        self.errors[f"{kind}: {why}"] += 1
        self.error_times.append(time.monotonic())


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


async def timed(stats: Stats, kind: str, coro: Any) -> Any:
    started = time.monotonic()
    try:
        result = await coro
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        stats.fail(kind, type(exc).__name__)
        return None
    except HTTPStatus as exc:
        stats.fail(kind, str(exc.status))
        return None
    stats.ok(kind, time.monotonic() - started)
    return result


class HTTPStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def call(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Any:
    async with session.request(method, url, timeout=aiohttp.ClientTimeout(total=kw.pop("timeout", 15)), **kw) as r:
        body = await r.read()
        if r.status >= 400:
            raise HTTPStatus(r.status)
        return body, r.headers


KEYS_PER_REGISTRAR = 2000  # a bounded state, so memory can level off


async def registrar(session, base: str, rid: int, stats: Stats, acked: dict[str, str], gone: set[str], stop,
                    rng) -> None:
    """Registers nodes with unique addresses over a fixed set of names; the last value
    acknowledged for each name is what every server must hold at the end."""
    n = 0
    while not stop.is_set():
        n += 1
        node = f"soak-{base.rsplit(':', 1)[1]}-{rid}-{n % KEYS_PER_REGISTRAR}"
        value = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        r = await timed(stats, "register", call(session, "PUT", f"{base}/v1/catalog/register",
                                                json={"Node": node, "Address": value}))
        # None: the outcome is unknown (a timeout, a kill): either value may be there
        acked[node] = value if r is not None else None
        gone.discard(node)
        prefix = node.rsplit("-", 1)[0] + "-"
        mine = [k for k, v in acked.items() if v is not None and k.startswith(prefix)] if n % 10 == 0 else []
        if mine:
            victim = rng.choice(mine)
            r = await timed(stats, "deregister", call(session, "PUT", f"{base}/v1/catalog/deregister", json={"Node": victim}))
            if r is not None:
                acked.pop(victim, None)
                gone.add(victim)
            else:
                acked[victim] = None
        await asyncio.sleep(0.01)


async def health(session, base: str, stats: Stats, stop, rng) -> None:
    while not stop.is_set():
        verb = rng.choice(["pass", "pass", "pass", "warn", "fail"])
        await timed(stats, "health", call(session, "PUT", f"{base}/v1/agent/check/{verb}/service:soak-web"))
        await asyncio.sleep(0.05)


async def watcher(session, base: str, stats: Stats, stop) -> None:
    index = "0"
    while not stop.is_set():
        r = await timed(stats, "watch", call(session, "GET", f"{base}/v1/health/service/soak-web?index={index}&wait=5s",
                                             timeout=20))
        if r is not None:
            index = r[1].get("X-Consul-Index", index)
        else:
            await asyncio.sleep(0.2)


async def dns_client(port: int, stats: Stats, stop) -> None:
    query = dns.message.make_query("soak-web.service.consul", "SRV")
    while not stop.is_set():
        started = time.monotonic()
        try:
            await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
            stats.ok("dns", time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - every failure counts by its kind
            stats.fail("dns", type(exc).__name__)
        await asyncio.sleep(0.005)


async def authorizer(session, base: str, stats: Stats, stop, rng) -> None:
    while not stop.is_set():
        src = rng.choice(["web", "api", "cache"])
        await timed(stats, "authorize", call(session, "POST", f"{base}/v1/agent/connect/authorize",
                                             json={"Target": "db", "ClientCertURI": f"spiffe://x.consul/ns/default/dc/dc1/svc/{src}"}))
        await asyncio.sleep(0.01)


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * 0.99))]


def leader_of(cluster: Cluster) -> Agent | None:
    for a in cluster.live():
        try:
            rpc = a.leader()
        except Exception:  # noqa: BLE001 - a server being restarted
            continue
        for b in cluster.live():
            if b.rpc == rpc:
                return b
    return None


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--kill-every", type=float, default=180)
    ap.add_argument("--down", type=float, default=10)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"soak: {args.minutes} min, a server killed every {args.kill_every}s for {args.down}s, seed {seed}")
    tmp = tempfile.mkdtemp(prefix="mesh-soak-")
    cluster = Cluster(tmp, 3, extra_args=QUIET)
    cluster.start()
    clients = [cluster.start_client(f"c{i}", QUIET, dns=True) for i in range(args.clients)]
    for c in clients:
        c.put("/v1/agent/service/register", {"Name": "soak-web", "Port": 80, "Check": {"TTL": "30s"}})
    retry(lambda: clients[0].get("/v1/catalog/service/soak-web"), 15, 0.1, "soak-web registered")
    clients[0].put("/v1/connect/intentions/exact?source=web&destination=db", {"Action": "allow"})

    stats, acked, gone = Stats(), {}, set()
    stop = asyncio.Event()
    kills: list[float] = []
    minute_rows: list[tuple[int, dict[str, tuple[float, float]], int, int]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        tasks = []
        for c in clients:
            base = f"http://{c.http}"
            tasks += [asyncio.create_task(registrar(session, base, rid, stats, acked, gone, stop,
                                                    random.Random(rng.random()))) for rid in range(2)]
            tasks.append(asyncio.create_task(health(session, base, stats, stop, random.Random(rng.random()))))
            tasks += [asyncio.create_task(watcher(session, base, stats, stop)) for _ in range(5)]
            tasks.append(asyncio.create_task(dns_client(c.dns_port, stats, stop)))
            tasks.append(asyncio.create_task(authorizer(session, base, stats, stop, random.Random(rng.random()))))
        started = time.monotonic()
        end = started + args.minutes * 60
        next_kill = started + args.kill_every
        restart_at: tuple[float, Agent] | None = None
        minute = 0
        last_row = started
        while time.monotonic() < end:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            if restart_at is not None and now >= restart_at[0]:
                restart_at[1].start()
                restart_at = None
            if now >= next_kill and restart_at is None:
                leader = await asyncio.to_thread(leader_of, cluster)
                victims = [a for a in cluster.live()]
                victim = leader if (len(kills) % 2 == 0 and leader is not None) else rng.choice(victims)
                victim.signal(signal.SIGKILL)
                victim.proc.wait(10)
                kills.append(now)
                print(f"  t={now - started:6.0f}s  SIGKILL {victim.name}{' (leader)' if victim is leader else ''}")
                restart_at = (now + args.down, victim)
                next_kill = now + args.kill_every
            if now - last_row >= 60 or now >= end:
                minute += 1
                span, last_row = now - last_row, now
                leader = await asyncio.to_thread(leader_of, cluster)
                rss = rss_kib(leader.proc.pid) if leader and leader.proc else 0
                row = {k: (len(stats.lat[k]) / span, p99(stats.lat[k]) * 1000) for k in KINDS}
                errors = sum(stats.errors.values())
                minute_rows.append((minute, row, errors, rss))
                cells = "  ".join(f"{k} {v[0]:5.0f}/s p99 {v[1]:6.1f}ms" for k, v in row.items())
                print(f"  min {minute:3d}  {cells}  leader RSS {rss / 1024:6.1f} MiB  errors {errors}"
                      + (f" {dict(stats.errors.most_common(4))}" if errors else ""), flush=True)
                stats.lat = collections.defaultdict(list)
                stats.errors.clear()
        stop.set()
        await asyncio.wait(tasks, timeout=25)
        for t in tasks:
            t.cancel()
    if restart_at is not None:
        restart_at[1].start()
    cluster.wait_leader(30)

    # every acknowledged registration still wanted is on every server
    missing: dict[str, int] = {}
    for s in cluster.agents:
        def read(s: Agent = s) -> list[dict[str, Any]]:
            return s.get("/v1/catalog/nodes?stale")
        have = {n["Node"]: n["Address"] for n in retry(read, 30, 0.5, f"{s.name} answers")}
        missing[s.name] = sum(1 for n, v in acked.items() if v is not None and have.get(n) != v)
        missing[s.name] += sum(1 for n in gone if n in have)
    confined = sum(1 for t in stats.error_times if not any(0 <= t - k <= 15 for k in kills))
    rss = [r[3] for r in minute_rows if r[3]]
    third = max(1, len(rss) // 3)
    growth = (max(rss[-third:]) - max(rss[:-third] or rss[-third:])) / 1024 if len(rss) > 1 else 0.0
    known = sum(1 for v in acked.values() if v is not None)
    print(f"acknowledged registrations checked: {known} (+{len(gone)} deregistrations); wrong per server: {missing}")
    print(f"errors outside the 15 s after a kill: {confined} of {len(stats.error_times)}")
    print(f"leader RSS growth over the last third: {growth:+.1f} MiB")
    cluster.stop()
    if any(missing.values()):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
