"""KV store through 3 mesh servers beside a 3-member etcd, same client, same run.

    .venv/bin/python bench/kv.py [--quick] [--rounds N]

Needs Debian's etcd-server (`apt-get install etcd-server`); without it only mesh is
measured and the script says so. Everything listens on 127.0.0.1 with free ports; every
process it starts is killed by PID at the end. Each round starts a fresh mesh cluster,
measures it, kills it, then does the same for etcd; every figure is the median over the
rounds (--rounds, default 3; --quick: one round with smaller counts).

One aiohttp client does the same things to both, 256-byte values throughout:

- puts/s with 64 and 256 in flight, spread over the three members.
  mesh: PUT /v1/kv/bench/<i> (raw body); etcd: POST /v3/kv/put (JSON gateway, base64).
- sequential put p50/p99 and linearizable get p50/p99, one client, to the leader.
  mesh: GET /v1/kv/<key>?consistent; etcd: /v3/kv/range with serializable=false.
- CAS successes/s, 16 contenders on one key, each one read-then-CAS in a loop, spread
  over the members. mesh: GET (default consistency) for ModifyIndex, PUT ?cas=<idx>;
  etcd: range for mod_revision, /v3/kv/txn comparing mod_revision, then put.
- blocking watchers on as many keys (1,000; 300 with --quick), spread over the
  members, then one write to each key (64 in flight, each through a different member than
  its watcher's): time from a write being sent to its watcher seeing the new value, p50
  and p99, and from the first write to the last wakeup. mesh: one long-poll per key,
  GET /v1/kv/w/<i>?index=<X-Consul-Index>&wait=60s, re-polled on a wakeup without the new
  value; etcd: one /v3/watch HTTP stream per key through the gateway (start_revision =
  the key's mod_revision + 1), the same shape: one HTTP exchange per watcher.
- server CPU per phase: user+sys of the three server processes (/proc/<pid>/stat).

mesh servers run with `-log-level warn` (etcd with `--log-level error`) and with
`limits { http_max_conns_per_client = 4096 }`: Consul's default cap of 200 connections per
client address would refuse most of the watchers, which all come from 127.0.0.1.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.etcd import EtcdCluster  # noqa: E402
from tests.harness.cluster import Cluster  # noqa: E402

VALUE = b"v" * 256
SETUP_VALUE = b"s" * 256
WOKEN_VALUE = b"w" * 256
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _timeout(seconds: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def _cpu(pids: list[int]) -> float:
    """user+sys seconds of the processes (their threads included)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class MeshTarget:
    name = "mesh"
    watch_how = "one long-poll GET /v1/kv/w/<i>?index=<X-Consul-Index>&wait=60s per key"

    def __init__(self, tmp: str) -> None:
        conf = os.path.join(tmp, "mesh-bench.json")
        os.makedirs(tmp, exist_ok=True)
        with open(conf, "w") as f:
            json.dump({"limits": {"http_max_conns_per_client": 4096}}, f)
        self.cluster = Cluster(os.path.join(tmp, "mesh"), 3, ["-log-level", "warn", "-config-file", conf])

    def start(self) -> None:
        self.cluster.start()

    def stop(self) -> None:
        self.cluster.stop()

    def pids(self) -> list[int]:
        return [a.proc.pid for a in self.cluster.agents if a.proc is not None and a.alive()]

    def endpoints(self) -> list[str]:
        return [f"http://{a.http}" for a in self.cluster.live()]

    def leader_endpoint(self) -> str:
        return f"http://{self.cluster.wait_leader().http}"

    def logs(self) -> str:
        return self.cluster.logs()

    async def put(self, s: aiohttp.ClientSession, base: str, key: str, value: bytes = VALUE,
                  timeout: float = 30) -> bool:
        async with s.put(f"{base}/v1/kv/{key}", data=value, timeout=_timeout(timeout)) as resp:
            body = await resp.read()
            return resp.status == 200 and body.strip() == b"true"

    async def get(self, s: aiohttp.ClientSession, base: str, key: str) -> bool:
        async with s.get(f"{base}/v1/kv/{key}?consistent", timeout=_timeout(30)) as resp:
            body = await resp.read()
            return resp.status == 200 and bool(json.loads(body))

    async def version(self, s: aiohttp.ClientSession, base: str, key: str) -> int | None:
        """The key's ModifyIndex by a default-consistency read."""
        async with s.get(f"{base}/v1/kv/{key}", timeout=_timeout(30)) as resp:
            body = await resp.read()
            if resp.status != 200:
                return None
            return int(json.loads(body)[0]["ModifyIndex"])

    async def cas(self, s: aiohttp.ClientSession, base: str, key: str, version: int, value: bytes) -> bool | None:
        async with s.put(f"{base}/v1/kv/{key}?cas={version}", data=value, timeout=_timeout(30)) as resp:
            body = (await resp.read()).strip()
            if resp.status != 200 or body not in (b"true", b"false"):
                return None
            return body == b"true"

    async def watch_start(self, s: aiohttp.ClientSession, base: str, key: str) -> int:
        """The index a watcher of `key` blocks on: the X-Consul-Index of a plain read."""
        async with s.get(f"{base}/v1/kv/{key}", timeout=_timeout(30)) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET /v1/kv/{key}: HTTP {resp.status}")
            return int(resp.headers["X-Consul-Index"])

    async def watch(self, s: aiohttp.ClientSession, base: str, key: str, start: int, established: Callable[[], None],
                    stats: dict[str, int]) -> float:
        """Block until `key` holds WOKEN_VALUE; the perf_counter of that wakeup. Every
        other return (a timeout, a wakeup without the new value) is counted and re-polled."""
        index = start
        first = True
        while True:
            url = f"{base}/v1/kv/{key}?index={index}&wait=60s"
            ctx = {"on_sent": established if first else None}
            first = False
            async with s.get(url, timeout=_timeout(90), trace_request_ctx=ctx) as resp:
                body = await resp.read()
                now = time.perf_counter()
                if resp.status == 200:
                    entry = json.loads(body)[0]
                    if entry.get("Value") and base64.b64decode(entry["Value"]) == WOKEN_VALUE:
                        return now
                stats["spurious"] += 1
                new = int(resp.headers.get("X-Consul-Index", index))
                index = new if new >= 1 else 1

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        """A mesh long-poll is "established" once its request went out (nothing comes back)."""
        tc = aiohttp.TraceConfig()

        async def sent(_s: Any, ctx: Any, _p: Any) -> None:
            cb = (ctx.trace_request_ctx or {}).get("on_sent")
            if cb:
                cb()

        tc.on_request_headers_sent.append(sent)
        return [tc]


class EtcdTarget(EtcdCluster):
    """The etcd baseline through its HTTP/JSON gateway, with the same calls as MeshTarget."""

    name = "etcd"
    watch_how = "one /v3/watch HTTP stream per key through the JSON gateway"

    def leader_endpoint(self) -> str:
        return self.endpoint(self.leader_index())

    async def _post(self, s: aiohttp.ClientSession, url: str, body: dict[str, Any], timeout: float = 30
                    ) -> dict[str, Any] | None:
        async with s.post(url, data=json.dumps(body).encode(), timeout=_timeout(timeout)) as resp:
            data = await resp.read()
            if resp.status != 200:
                return None
            return json.loads(data)  # type: ignore[no-any-return]

    async def put(self, s: aiohttp.ClientSession, base: str, key: str, value: bytes = VALUE,
                  timeout: float = 30) -> bool:
        return await self._post(s, f"{base}/v3/kv/put", {"key": _b64(key), "value": _b64(value)}, timeout) is not None

    async def get(self, s: aiohttp.ClientSession, base: str, key: str) -> bool:
        out = await self._post(s, f"{base}/v3/kv/range", {"key": _b64(key), "serializable": False})
        return out is not None and bool(out.get("kvs"))

    async def version(self, s: aiohttp.ClientSession, base: str, key: str) -> int | None:
        """The key's mod_revision by a (linearizable, etcd's default) range."""
        out = await self._post(s, f"{base}/v3/kv/range", {"key": _b64(key)})
        if not out or not out.get("kvs"):
            return None
        return int(out["kvs"][0]["mod_revision"])

    async def cas(self, s: aiohttp.ClientSession, base: str, key: str, version: int, value: bytes) -> bool | None:
        txn = {"compare": [{"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(version)}],
               "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]}
        out = await self._post(s, f"{base}/v3/kv/txn", txn)
        if out is None:
            return None
        return bool(out.get("succeeded"))

    async def watch_start(self, s: aiohttp.ClientSession, base: str, key: str) -> int:
        rev = await self.version(s, base, key)
        if rev is None:
            raise RuntimeError(f"etcd range {key}: no such key")
        return rev + 1

    async def watch(self, s: aiohttp.ClientSession, base: str, key: str, start: int, established: Callable[[], None],
                    stats: dict[str, int]) -> float:
        body = {"create_request": {"key": _b64(key), "start_revision": str(start)}}
        async with s.post(f"{base}/v3/watch", data=json.dumps(body).encode(), timeout=_timeout(90)) as resp:
            if resp.status != 200:
                raise RuntimeError(f"etcd watch {key}: HTTP {resp.status}")
            while True:
                line = await resp.content.readline()
                now = time.perf_counter()
                if not line:
                    raise RuntimeError(f"etcd watch {key}: stream ended")
                if not line.strip():
                    continue
                result = json.loads(line).get("result", {})
                if result.get("created"):
                    established()
                for ev in result.get("events", []):
                    if base64.b64decode(ev.get("kv", {}).get("value", "")) == WOKEN_VALUE:
                        return now
                if not result.get("created"):
                    stats["spurious"] += 1

    def trace_configs(self) -> list[aiohttp.TraceConfig]:
        return []


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


async def _with_cpu(target: Any, out: dict[str, float], name: str, phase: Awaitable[dict[str, float]]) -> None:
    c0 = _cpu(target.pids())
    res = await phase
    res["cpu_s"] = _cpu(target.pids()) - c0
    for k, v in res.items():
        out[f"{name}.{k}"] = v


async def _gather_limited(n: int, in_flight: int, fn: Callable[[int], Awaitable[Any]]) -> list[Any]:
    """fn(0..n-1) with at most `in_flight` running; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> Any:
        async with sem:
            try:
                return await fn(i)
            except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, IndexError) as exc:
                return exc

    return await asyncio.gather(*(one(i) for i in range(n)))


async def puts(target: Any, n: int, in_flight: int) -> dict[str, float]:
    bases = target.endpoints()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as s:
        t0 = time.perf_counter()
        res = await _gather_limited(n, in_flight, lambda i: target.put(s, bases[i % len(bases)], f"bench/{i}"))
        elapsed = time.perf_counter() - t0
    ok = sum(1 for r in res if r is True)
    return {"per_s": ok / elapsed, "ok": ok, "failed": n - ok}


async def sequential(target: Any, n: int, op: str) -> dict[str, float]:
    base = target.leader_endpoint()
    lat, failed = [], 0
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            t0 = time.perf_counter()
            try:
                ok = await (target.put(s, base, f"bench/{i}") if op == "put" else target.get(s, base, f"bench/{i}"))
            except (TimeoutError, aiohttp.ClientError, ValueError):
                ok = False
            if ok:
                lat.append((time.perf_counter() - t0) * 1000)
            else:
                failed += 1
    if not lat:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "failed": failed}
    return {"p50_ms": statistics.median(lat), "p99_ms": _pct(lat, 0.99), "failed": failed}


async def cas(target: Any, contenders: int, seconds: float) -> dict[str, float]:
    bases = target.endpoints()
    key = "bench/cas"
    counts = {"ok": 0, "lost": 0, "error": 0}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=contenders)) as s:
        if not await target.put(s, bases[0], key, SETUP_VALUE):
            raise RuntimeError("cannot create the CAS key")
        deadline = time.perf_counter() + seconds

        async def contender(j: int) -> None:
            base = bases[j % len(bases)]
            value = f"{j:04d}".encode() * 64
            while time.perf_counter() < deadline:
                try:
                    ver = await target.version(s, base, key)
                    won = None if ver is None else await target.cas(s, base, key, ver, value)
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, IndexError):
                    won = None
                counts["ok" if won else "lost" if won is False else "error"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(contender(j) for j in range(contenders)))
        elapsed = time.perf_counter() - t0
    attempts = sum(counts.values())
    return {"ok_per_s": counts["ok"] / elapsed, "attempts_per_s": attempts / elapsed,
            "lost": counts["lost"], "error": counts["error"]}


async def _quiet(target: Any, limit: float = 5.0) -> None:
    """Until the servers use under 10% of a core for 200 ms (or `limit` seconds)."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        c0 = _cpu(target.pids())
        await asyncio.sleep(0.2)
        if _cpu(target.pids()) - c0 < 0.02:
            return


async def watchers(target: Any, n: int) -> dict[str, float]:
    """n watchers on n keys, then one write to each; wake latency per key."""
    bases = target.endpoints()
    keys = [f"w/{i}" for i in range(n)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
        res = await _gather_limited(n, 64, lambda i: target.put(s, bases[i % len(bases)], keys[i], SETUP_VALUE))
        if not all(r is True for r in res):
            raise RuntimeError(f"watch setup: {sum(1 for r in res if r is not True)} of {n} puts failed")
        starts = await _gather_limited(n, 64, lambda i: target.watch_start(s, bases[i % len(bases)], keys[i]))
        bad = [r for r in starts if not isinstance(r, int)]
        if bad:
            raise RuntimeError(f"watch setup: {len(bad)} reads failed, first {bad[0]!r}")

    c0 = _cpu(target.pids())
    established = 0
    all_established = asyncio.Event()
    stats = {"spurious": 0}

    def on_established() -> None:
        nonlocal established
        established += 1
        if established >= n:
            all_established.set()

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn, trace_configs=target.trace_configs()) as ws:
        tasks = [asyncio.create_task(target.watch(ws, bases[i % len(bases)], keys[i], starts[i], on_established,
                                                  stats)) for i in range(n)]
        t_est = time.perf_counter()
        try:
            await asyncio.wait_for(all_established.wait(), 60)
        except TimeoutError:
            for t in tasks:
                t.cancel()
            raise RuntimeError(f"only {established} of {n} watchers established within 60 s") from None
        establish_s = time.perf_counter() - t_est
        await _quiet(target)
        spurious_before = stats["spurious"]
        c1 = _cpu(target.pids())

        sent: list[float] = [0.0] * n
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as s:
            async def write(i: int) -> bool:
                sent[i] = time.perf_counter()
                return bool(await target.put(s, bases[(i + 1) % len(bases)], keys[i], WOKEN_VALUE))

            t_first = time.perf_counter()
            writes = await _gather_limited(n, 64, write)
            writes_s = time.perf_counter() - t_first
        done, pending = await asyncio.wait(tasks, timeout=70)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    woke = [(i, t.result()) for i, t in enumerate(tasks) if t in done and t.exception() is None]
    lat = [(at - sent[i]) * 1000 for i, at in woke]
    c2 = _cpu(target.pids())
    return {
        "woken": len(woke), "n": n, "writes_failed": sum(1 for w in writes if w is not True),
        "wake_p50_ms": statistics.median(lat) if lat else float("nan"),
        "wake_p99_ms": _pct(lat, 0.99) if lat else float("nan"),
        "wake_max_ms": max(lat) if lat else float("nan"),
        "all_woken_ms": (max(at for _, at in woke) - t_first) * 1000 if len(woke) == n else float("nan"),
        "writes_s": writes_s, "establish_s": establish_s,
        "spurious_before_writes": spurious_before, "spurious": stats["spurious"],
        "cpu_establish_s": c1 - c0, "cpu_s": c2 - c1,
    }


@dataclass
class Sizes:
    puts: int
    seq: int
    cas_seconds: float
    watchers: int


async def _ready(target: Any) -> None:
    """Every member takes a KV write (the leader may still be settling in), then 500
    unmeasured puts warm both sides up."""
    async with aiohttp.ClientSession() as s:
        for base in target.endpoints():
            deadline = time.monotonic() + 30
            last: object = None
            while True:
                try:
                    if await target.put(s, base, "bench/ready", SETUP_VALUE, timeout=5):
                        break
                    last = "not accepted"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    last = exc
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{target.name} at {base} takes no KV write: {last!r}")
                await asyncio.sleep(0.2)
        # warm-up, not measured: connections, caches, the first Raft batches
        bases = target.endpoints()
        await _gather_limited(500, 64, lambda i: target.put(s, bases[i % len(bases)], f"warm/{i}", SETUP_VALUE))


async def measure(target: Any, sizes: Sizes) -> dict[str, float]:
    await _ready(target)
    out: dict[str, float] = {}
    await _with_cpu(target, out, "put64", puts(target, sizes.puts, 64))
    await _with_cpu(target, out, "put256", puts(target, sizes.puts, 256))
    await _with_cpu(target, out, "seqput", sequential(target, sizes.seq, "put"))
    await _with_cpu(target, out, "get", sequential(target, sizes.seq, "get"))
    await _with_cpu(target, out, "cas", cas(target, 16, sizes.cas_seconds))
    for k, v in (await watchers(target, sizes.watchers)).items():
        out[f"watch.{k}"] = v
    return out


def run_round(cls: Any, tmp: str, sizes: Sizes) -> dict[str, float]:
    target = cls(tmp)
    try:
        target.start()
        return asyncio.run(measure(target, sizes))
    except BaseException:
        print(f"--- {target.name} failed; server logs ---\n{target.logs()}", file=sys.stderr)
        raise
    finally:
        target.stop()


def _median(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None or v != v else fmt.format(v)


def table(m: dict[str, float], e: dict[str, float] | None, n_watch: int) -> list[str]:
    def at_least(a: float, b: float | None) -> str:
        return "n/a (no etcd)" if b is None else ("yes" if a >= b else f"no ({a / b:.2f}x etcd)")

    def at_most(a: float, b: float | None) -> str:
        return "n/a (no etcd)" if b is None else ("yes" if a <= b else f"no ({a / b:.2f}x etcd)")

    def ev(k: str) -> float | None:
        return None if e is None else e[k]

    rows = [
        ("puts/s, 64 in flight (target >= etcd)", "put64.per_s", "{:.0f}", at_least),
        ("puts/s, 256 in flight (target >= etcd)", "put256.per_s", "{:.0f}", at_least),
        ("sequential put p50 ms (target <= etcd)", "seqput.p50_ms", "{:.2f}", at_most),
        ("sequential put p99 ms", "seqput.p99_ms", "{:.2f}", None),
        ("consistent get p50 ms (target <= etcd)", "get.p50_ms", "{:.2f}", at_most),
        ("consistent get p99 ms", "get.p99_ms", "{:.2f}", None),
        ("CAS successes/s, 16 contenders, 1 key", "cas.ok_per_s", "{:.0f}", None),
        ("CAS attempts/s (read + CAS)", "cas.attempts_per_s", "{:.0f}", None),
        (f"watchers woken of {n_watch}", "watch.woken", "{:.0f}", "woken"),
        ("watch wake p50 ms", "watch.wake_p50_ms", "{:.1f}", None),
        ("watch wake p99 ms (target <= 1000)", "watch.wake_p99_ms", "{:.1f}", "p99"),
        ("first write -> last wakeup ms", "watch.all_woken_ms", "{:.1f}", None),
        ("server CPU s: puts, 64 in flight", "put64.cpu_s", "{:.2f}", None),
        ("server CPU s: puts, 256 in flight", "put256.cpu_s", "{:.2f}", None),
        ("server CPU s: sequential puts", "seqput.cpu_s", "{:.2f}", None),
        ("server CPU s: consistent gets", "get.cpu_s", "{:.2f}", None),
        ("server CPU s: CAS", "cas.cpu_s", "{:.2f}", None),
        ("server CPU s: establishing watchers", "watch.cpu_establish_s", "{:.2f}", None),
        ("server CPU s: watch writes + wakeups", "watch.cpu_s", "{:.2f}", None),
    ]
    lines = ["| metric | mesh | etcd | target met? |", "|---|---:|---:|---|"]
    for label, key, fmt, check in rows:
        mv = m[key]
        if check is None:
            met = "-"
        elif check == "woken":
            met = "yes" if mv >= n_watch else "no"
        elif check == "p99":
            met = "yes" if mv == mv and mv <= 1000 and m["watch.woken"] >= n_watch else "no"
        else:
            met = "-" if mv != mv else check(mv, ev(key))
        lines.append(f"| {label} | {_fmt(mv, fmt)} | {_fmt(ev(key), fmt)} | {met} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, smaller counts")
    parser.add_argument("--rounds", type=int, default=3, help="rounds to take the median of (default 3)")
    args = parser.parse_args()
    rounds = 1 if args.quick else max(1, args.rounds)
    sizes = (Sizes(puts=2000, seq=200, cas_seconds=3, watchers=300) if args.quick
             else Sizes(puts=10000, seq=1000, cas_seconds=10, watchers=1000))
    has_etcd = shutil.which("etcd") is not None
    if not has_etcd:
        print("etcd not found: measuring mesh only. For the side-by-side baseline install Debian's etcd-server "
              "(`apt-get install etcd-server`).", file=sys.stderr)
    results: dict[str, list[dict[str, float]]] = {"mesh": [], "etcd": []}
    with open("/proc/loadavg") as f:
        load0 = f.read().split()[:3]
    tmp = tempfile.mkdtemp(prefix="mesh-bench-kv-")
    try:
        for r in range(rounds):
            for cls in (MeshTarget, EtcdTarget) if has_etcd else (MeshTarget,):
                res = run_round(cls, os.path.join(tmp, f"r{r}"), sizes)
                results[cls.name].append(res)
                print(f"round {r + 1}/{rounds} {cls.name}: put64 {res['put64.per_s']:.0f}/s, "
                      f"put256 {res['put256.per_s']:.0f}/s, put p50 {res['seqput.p50_ms']:.2f} ms, "
                      f"get p50 {res['get.p50_ms']:.2f} ms, cas {res['cas.ok_per_s']:.0f}/s, "
                      f"wake p99 {res['watch.wake_p99_ms']:.0f} ms ({res['watch.woken']:.0f}/{sizes.watchers})",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load1 = f.read().split()[:3]
    m = _median(results["mesh"])
    e = _median(results["etcd"]) if results["etcd"] else None
    def rounded(d: dict[str, float] | None) -> dict[str, float] | None:
        return None if d is None else {k: round(v, 3) for k, v in d.items()}

    print(json.dumps({"rounds": rounds, "sizes": sizes.__dict__, "mesh": rounded(m), "etcd": rounded(e)}, indent=1))
    print()
    print(f"kv bench: {rounds} round(s), median; {sizes.puts} puts per concurrency level, {sizes.seq} sequential "
          f"puts and gets, CAS for {sizes.cas_seconds:g} s, {sizes.watchers} watchers; {os.cpu_count()} CPUs, "
          f"load average {' '.join(load0)} before, {' '.join(load1)} after")
    print(f"watchers: mesh = {MeshTarget.watch_how}; etcd = {EtcdTarget.watch_how}")
    print()
    print("\n".join(table(m, e, sizes.watchers)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
