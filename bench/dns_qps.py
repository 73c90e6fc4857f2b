"""DNS queries per second: a mesh agent beside dnsmasq serving the same records, same run.

    .venv/bin/python bench/dns_qps.py [--services 100 1000 10000] [--seconds 10]

Needs Debian's dnsperf and dnsmasq (`apt-get install dnsperf dnsmasq-base`); the
script says so and stops without them. For each catalog size it starts `mesh agent
-dev` on free 127.0.0.1 ports, registers the services (1-3 passing instances each),
writes a mixed A/SRV query file over all of them, warms the agent's view, and runs
dnsperf: saturated (100 outstanding) and paced at 10,000 QPS for latency (p50/p99
from dnsperf's per-query report). dnsmasq serves the same names from a config file
(host-record and srv-host) and gets the same dnsperf runs. Processes are killed by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness.cluster import free_port, retry  # noqa: E402


def _put(port: int, path: str, body: dict) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="PUT")
    urllib.request.urlopen(req, timeout=30).read()


def _instances(services: int, rng: random.Random) -> list[tuple[str, str, str, int]]:
    """(service, node, address, port) rows."""
    rows = []
    for i in range(services):
        for k in range(rng.randint(1, 3)):
            n = i * 3 + k
            rows.append((f"svc-{i}", f"n-{n}", f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}", 8000 + k))
    return rows


def _query_file(path: str, services: int, rng: random.Random, lines: int = 20000) -> None:
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(f"svc-{rng.randrange(services)}.service.consul {'A' if rng.random() < 0.5 else 'SRV'}\n")


def _dnsperf(port: int, queries: str, seconds: int, qps: int | None = None) -> dict[str, float]:
    cmd = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries, "-l", str(seconds), "-q", "100", "-c", "4"]
    if qps:
        cmd += ["-Q", str(qps), "-v"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    result = {
        "qps": float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1)),
        "lost": float(re.search(r"Queries lost:\s+(\d+)", out).group(1)),
        "avg_ms": float(re.search(r"Average Latency \(s\):\s+([\d.]+)", out).group(1)) * 1000,
    }
    if qps:
        lat = sorted(float(m) * 1000 for m in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
        if lat:
            result["p50_ms"] = lat[len(lat) // 2]
            result["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    return result


def _measure(port: int, queries: str, seconds: int) -> dict[str, float]:
    """Saturated throughput, then latency paced at 10,000 QPS: the same for both servers."""
    saturated = _dnsperf(port, queries, seconds)
    paced = _dnsperf(port, queries, seconds, qps=10000)
    return {"qps": saturated["qps"], "lost": saturated["lost"], "p50_ms_at_10k": paced.get("p50_ms", -1),
            "p99_ms_at_10k": paced.get("p99_ms", -1), "qps_paced": paced["qps"]}


def _run_mesh(tmp: str, rows: list[tuple[str, str, str, int]], queries: str, seconds: int) -> dict[str, float]:
    http, dns = free_port(), free_port()
    log = open(os.path.join(tmp, "mesh.log"), "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", "agent", "-dev", "-http-port", str(http),
                             "-server-port", str(free_port()), "-raft-port", str(free_port()), "-dns-port", str(dns),
                             "-log-level", "warn"], stdout=log, stderr=subprocess.STDOUT, cwd="/")
    try:
        retry(lambda: urllib.request.urlopen(f"http://127.0.0.1:{http}/v1/status/leader", timeout=2).read() != b'""',
              15, 0.1)
        for service, node, address, port in rows:
            _put(http, "/v1/catalog/register", {"Node": node, "Address": address,
                                                "Service": {"Service": service, "Port": port},
                                                "Check": {"Name": "ok", "Status": "passing", "ServiceID": service}})
        # warm the view: one query per name, so the run measures steady state
        subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(dns), "-d", queries, "-n", "1", "-q", "50"],
                       capture_output=True, timeout=120)
        time.sleep(1)
        return _measure(dns, queries, seconds)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _run_dnsmasq(tmp: str, rows: list[tuple[str, str, str, int]], queries: str, seconds: int) -> dict[str, float]:
    conf = os.path.join(tmp, "dnsmasq.conf")
    with open(conf, "w") as f:
        for service, node, address, port in rows:
            f.write(f"host-record={service}.service.consul,{address}\n")
            f.write(f"srv-host={service}.service.consul,{node}.node.dc1.consul,{port},1,1\n")
            f.write(f"host-record={node}.node.dc1.consul,{address}\n")
    port = free_port()
    proc = subprocess.Popen(["dnsmasq", "--no-daemon", "--conf-file=" + conf, "--port", str(port),
                             "--listen-address=127.0.0.1", "--bind-interfaces", "--no-resolv", "--no-hosts",
                             "--cache-size=10000", "--user=root", "--pid-file=" + os.path.join(tmp, "dnsmasq.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        return _measure(port, queries, seconds)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    missing = [tool for tool in ("dnsperf", "dnsmasq") if shutil.which(tool) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install dnsperf dnsmasq-base", file=sys.stderr)
        return 1
    results = []
    for services in args.services:
        tmp = tempfile.mkdtemp(prefix="mesh-dns-bench-")
        rng = random.Random(services)
        rows = _instances(services, rng)
        queries = os.path.join(tmp, "queries.txt")
        _query_file(queries, services, rng)
        try:
            mesh = _run_mesh(tmp, rows, queries, args.seconds)
            dnsmasq = _run_dnsmasq(tmp, rows, queries, args.seconds)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        results.append({"services": services, "instances": len(rows), "mesh": mesh, "dnsmasq": dnsmasq})
    print(json.dumps(results, indent=2))
    print()
    print("| services | mesh QPS | dnsmasq QPS | ratio | mesh p50 / p99 ms at 10k QPS | dnsmasq p50 / p99 ms at 10k QPS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m, d = r["mesh"], r["dnsmasq"]
        print(f"| {r['services']} | {m['qps']:.0f} | {d['qps']:.0f} | {m['qps'] / d['qps']:.2f}x "
              f"| {m['p50_ms_at_10k']:.3f} / {m['p99_ms_at_10k']:.3f} | {d['p50_ms_at_10k']:.3f} / {d['p99_ms_at_10k']:.3f} |")
    qps = [r["mesh"]["qps"] for r in results]
    print(f"\nmesh QPS spread across sizes: {(max(qps) - min(qps)) / max(qps) * 100:.1f}% "
          "(target: within 10%); targets: >= 2.5x dnsmasq, p99 <= 1 ms at 10,000 QPS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
