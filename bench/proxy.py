"""Sidecar proxy throughput and latency: mesh's web -> api sidecar pairs beside haproxy
mutual-TLS pairs and a direct connection to the same nginx, same run: the L4 rows (issue 12,
Benchmark), the http rows (issue 13, Benchmark) and a traffic-managed http pair in them
(issue 14, Benchmark).

    .venv/bin/python bench/proxy.py [--protocol tcp|http|both] [--quick] [--seconds 10] [--runs 3]
                                    [--no-profile] [--no-wait]

Needs Debian's wrk, hey, haproxy and nginx (`apt-get install wrk hey haproxy nginx`); the
script says so and stops without them. Everything runs on 127.0.0.1 free ports:

- `mesh agent -dev -supervise-proxies=false` (one in-memory server holding the CA).
- tcp (L4): `api` (nginx's port) and `web` registered through the API with sidecars (web's
  sidecar has an upstream `api` on a local port; both have `prometheus_bind_addr`), an allow
  web -> api intention, and the two real `mesh connect proxy -sidecar-for ...` processes
  started by hand (info logs to a file, metrics on), configured from the agent's API.
- http: the same for `web-http` and `api-http`, with `Proxy.Config.protocol` "http" on both
  sidecars and on web-http's upstream (set in the registrations, as the agent would merge
  them from service-defaults), and access logs on (`Proxy.AccessLogs`, type file, one
  file per sidecar), metrics on as well.
- http, traffic management: `web-tm` -> `api-tm`, the same shape as web-http -> api-http
  (api-tm registered with `Meta {"tier": "bench"}`, which its sidecar copies), with every
  traffic-management entry configured and none of it triggering, written through
  `PUT /v1/config` before its sidecars start: service-defaults `api-tm` (Protocol http;
  RateLimits: 1,000,000 req/s instance-wide, burst 1,000,000, and a route PathPrefix
  "/never" at 1 req/s), service-defaults `web-tm` (Protocol http; UpstreamConfig Defaults:
  Limits of 100,000 connections, pending and concurrent requests, PassiveHealthCheck every
  10s, 5 failures), service-resolver `api-tm` (DefaultSubset v1; subsets v1 and v2, both
  `Service.Meta.tier == bench`, so both are every instance; Failover "*" to v2) and
  service-splitter `api-tm` (90% to v1, 10% to v2). No service-router.
- A haproxy pair doing the same hop (tcp mode, defaults: 16 KiB buffers, TLS session
  reuse; client haproxy -> TLS with web's client certificate -> server haproxy verifying
  it -> nginx), with the dev agent's own EC P-256 leaves for web and api and its roots, so
  both pairs use the same certificates; a second pair with `tune.bufsize 65536` for the
  bulk row (perf-baselines.md uses it as the bulk reference).
- A haproxy http pair (`mode http`, same certificates, mutual TLS verified as above): the
  client haproxy shares kept-alive TLS connections to the server haproxy across client
  connections (`http-reuse always`), the server haproxy keeps nginx connections alive
  (`option http-keep-alive`); both log every request (`option httplog` to stdout, into a
  file), as both mesh http sidecars do. The request log files of the http pairs are
  counted and emptied between runs.
- nginx, 1 worker: /small (128 B) and /1m (1 MiB).

Before measuring, once: a request through each mesh http pair returns nginx's own body and
each http sidecar's access log file gets a JSON line for it; for the traffic-managed pair,
the dev agent's `/v1/discovery-chain/api-tm` starts at the splitter (90/10) with both
subsets' resolver nodes, the agent merged `rate_limits` into api-tm's sidecar registration
and the limits and passive health check into web-tm's upstream, requests through web-tm
(50 at a time, up to 200) reach both targets in web-tm's `mesh_proxy_target_requests_total`
with nginx's body and without failover, and the "/never" route's 1 req/s answers 429 from
api-tm's sidecar (the only requests its limits refuse; after the rows the script says
whether any row met a rate limit, a circuit breaker, a failover or an ejection). The run
stops otherwise.

Placement as in the perf lab (../shared/reference/perf-baselines.md, Method): the proxies
of a pair on CPU 0 (`--proxy-cpu`; the pair gets one core), nginx and the load generator on
CPU 1 (`--gen-cpu`). Rows, each the median of `--runs` runs of `--seconds`, the variants
(direct, the haproxy pair, the mesh pair of the row's protocol and, in the http rows, the
traffic-managed pair `mesh-tm`) interleaved run by run:
small keep-alive requests/s (wrk -t1 -c50 /small); a new connection per request (the same
with `Connection: close`: in tcp mode haproxy pays a TLS handshake, resumed, per
connection, ours opens a stream on a pooled multiplexed connection; in http mode both
pairs send the request over a pooled connection between the sidecars); 1 MiB bodies
(tcp only: wrk -c8 /1m, MB/s in 10^6 bytes as in the perf lab); p50/p99 at a fixed 1,000
requests/s keep-alive (hey, 10 workers x 100 req/s; hey reports to 0.1 ms), as added to
direct; VmRSS of each idle sidecar after warm-up (the row's figure) and again after all
the rows. The haproxy pairs check only the certificate chain; ours also check SPIFFE IDs
and the intention. `--protocol` picks the rows (both by default), `--rows` a subset of
ka,close,bulk,rate of each.
Targets, tcp (issue 12): keep-alive >= 85% of the haproxy pair, bulk >= 100%, new
connections >= 2x, added p99 <= 2 ms at 1,000 req/s, idle sidecar <= 40 MiB. http (issue
13): keep-alive >= 50% of the haproxy http pair, new client connection per request >= 50%
of it, added p99 <= 3 ms at 1,000 req/s. The traffic-managed pair (issue 14), a line of its
own under each http row: keep-alive >= 90% of the mesh http pair's (`tm-ka`, medians of the
same run), and p99 at 1,000 req/s at most 3 ms above the mesh http pair's (`tm p99`: what
traffic management adds, as the issue's "stays" reads; its figure over direct is in the
row too); its new-connection line is for the record. Before each run the
script waits (at most 10 minutes) until the 1-minute load average is below 0.7 and the
machine is idle for a second; during the run it counts the CPU of every other process from
/proc and discards and repeats a run where they used more than 0.2 core (at most 3
attempts). `--no-wait` skips both (a smoke check of the script on a busy machine; its
figures mean nothing).

Where a target is missed the load of that row runs once more against the mesh pair of
that row (the traffic-managed pair for a missed tm target) with py-spy (`.venv/bin/pip
install py-spy`) sampling both proxies with native frames (OpenSSL, uvloop, httptools,
system calls); that sampling stops the process at each sample, so the profiled load runs
slower: read its percentages, not its speed.
Baseline measured on this kind of machine with prototypes (perf-baselines.md): haproxy pair
30,227 keep-alive req/s, 682 new conn/s, 483 MB/s (621 with 64 KiB buffers), 0.6/1.3 ms at
1,000 req/s against direct's 0.4/1.0; haproxy http pair with `http-reuse always` 21,431
keep-alive req/s, 11,808 with a new client connection each, 0.7/2.5 ms at 1,000 req/s
(without access logs there). `--quick`: 1 run of 3 s each, a smoke check.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.harness.cluster import free_port, retry  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
LOAD_LIMIT = 0.7  # 1-minute load average before a run
QUIET_CORES = 0.25  # machine busy over 1 s before a run
NOISE_CORES = 0.2  # other processes' CPU during a run: above, the run is discarded
MAX_ATTEMPTS = 3
MAX_WAIT = 600.0
GATE = True  # --no-wait: no waiting for a quiet machine and no discarded runs (smoke runs only)
TARGETS = {"ka": 0.85, "close": 2.0, "bulk": 1.0, "p99_added_ms": 2.0, "rss_mib": 40.0,
           "http-ka": 0.5, "http-close": 0.5, "http_p99_added_ms": 3.0,
           "tm-ka": 0.9, "tm_p99_added_ms": 3.0}  # tm-ka: of the mesh http pair's req/s


# ---- /proc ----------------------------------------------------------------------------------
def tree(pid: int) -> list[int]:
    """pid and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                try:
                    with open(f"/proc/{p}/task/{t}/children") as f:
                        todo += [int(c) for c in f.read().split()]
                except OSError:
                    pass
        except OSError:
            pass
    return sorted(set(out))


def proc_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return 0
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, every thread


def machine_ticks() -> int:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]) - v[3] - v[4]  # all but idle and iowait


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_quiet() -> dict[str, Any]:
    """Until the 1-minute load average is below LOAD_LIMIT and the machine was idle for a
    second (bounded by MAX_WAIT); what it measured. Without the gate (--no-wait), at once."""
    if not GATE:
        return {"load1": load1(), "busy": None, "waited_s": 0, "quiet": False, "why": "no load gate (--no-wait)"}
    started = time.monotonic()
    while True:
        load = load1()
        a, t = machine_ticks(), time.monotonic()
        time.sleep(1.0)
        busy = (machine_ticks() - a) / HZ / (time.monotonic() - t)
        waited = time.monotonic() - started
        if (load < LOAD_LIMIT and busy < QUIET_CORES) or waited > MAX_WAIT:
            return {"load1": load, "busy": round(busy, 2), "waited_s": round(waited),
                    "quiet": load < LOAD_LIMIT and busy < QUIET_CORES}
        time.sleep(4.0)


class CpuWindow:
    """CPU used over a run by our groups of processes, the load generator (children of this
    process) and everything else on the machine."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups

    def __enter__(self) -> CpuWindow:
        self.t0, self.m0, self.os0 = time.monotonic(), machine_ticks(), os.times()
        self.g0 = {k: sum(proc_ticks(p) for p in pids) for k, pids in self.groups.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        dt = time.monotonic() - self.t0
        os1 = os.times()
        used = {k: (sum(proc_ticks(p) for p in pids) - self.g0[k]) / HZ / dt for k, pids in self.groups.items()}
        used["loadgen"] = (os1.children_user + os1.children_system - self.os0.children_user
                           - self.os0.children_system) / dt
        used["bench"] = (os1.user + os1.system - self.os0.user - self.os0.system) / dt
        machine = (machine_ticks() - self.m0) / HZ / dt
        self.cores = {k: round(v, 2) for k, v in used.items()}
        self.cores["machine"] = round(machine, 2)
        self.cores["other"] = round(max(0.0, machine - sum(used.values())), 2)


# ---- load generators ------------------------------------------------------------------------
def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(cpu: str, port: int, path: str, conns: int, seconds: float, close: bool = False) -> dict[str, Any]:
    cmd = ["taskset", "-c", cpu, "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
           "--timeout", "10s"]
    if close:
        cmd += ["-H", "Connection: close"]
    proc = subprocess.run([*cmd, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True,
                          timeout=seconds + 60)
    out = proc.stdout
    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk said: {out[-300:]} {proc.stderr[-300:]}")
    r["rps"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1e-6, "KB": 1024 / 1e6, "MB": 1024**2 / 1e6, "GB": 1024**3 / 1e6}
    r["MBps"] = float(m.group(1)) * scale.get(m.group(2), 0) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        r[f"p{pct}_ms"] = _ms(*m.groups()) if m else None
    m = re.search(r"(\d+) requests in", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    r["errors"] = m.group(1).strip() if m else ""
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += f" non-2xx {m.group(1)}"
    return r


def hey(cpu: str, port: int, path: str, seconds: float, workers: int = 10, per_worker: int = 100) -> dict[str, Any]:
    """Fixed rate, keep-alive: `workers` connections each paced at `per_worker` req/s."""
    cmd = ["taskset", "-c", cpu, "hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(per_worker),
           f"http://127.0.0.1:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    r: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    r["rps"] = float(m.group(1)) if m else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"{pct}%+ in ([\d.]+) secs", out)
        r[f"p{pct}_ms"] = float(m.group(1)) * 1000 if m else None
    m = re.search(r"\[200\]\s+(\d+) responses", out)
    r["requests"] = int(m.group(1)) if m else 0
    m = re.search(r"Error distribution:(.*)", out, re.S)
    r["errors"] = m.group(1).strip()[:200] if m else ""
    return r


# ---- processes ------------------------------------------------------------------------------
class Procs:
    """Everything this script started, stopped by PID (and the PIDs of their children)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], log: str | None = None, cpu: str | None = None,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
        if cpu is not None:
            cmd = ["taskset", "-c", cpu, *cmd]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd="/", env=env)
        if log:
            out.close()  # type: ignore[union-attr]
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        """Every process is still running (another tenant's broad pkill would end ours)."""
        for proc in self.procs:
            code = proc.poll()
            if code is not None:
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                raise RuntimeError(f"{' '.join(map(str, proc.args))[:160]} ended ({how}); the run is void")

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            family = tree(proc.pid)
            proc.terminate()
            try:
                proc.wait(8)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            for pid in family[1:]:  # nginx workers and the like, if the parent left any
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def http_get(url: str, timeout: float = 5.0) -> bytes:
    return urllib.request.urlopen(url, timeout=timeout).read()


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def http_put(url: str, body: Any) -> bytes:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT")
    return urllib.request.urlopen(req, timeout=10).read()


NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; multi_accept on; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-tmp;
    proxy_temp_path {tmp}/nginx-tmp;
    fastcgi_temp_path {tmp}/nginx-tmp;
    uwsgi_temp_path {tmp}/nginx-tmp;
    scgi_temp_path {tmp}/nginx-tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
    }}
}}
"""


def start_nginx(procs: Procs, tmp: str, cpu: str) -> tuple[subprocess.Popen[bytes], int]:
    os.makedirs(f"{tmp}/www")
    os.makedirs(f"{tmp}/nginx-tmp")
    with open(f"{tmp}/www/small", "wb") as f:
        f.write(b"s" * 127 + b"\n")
    with open(f"{tmp}/www/1m", "wb") as f:
        f.write(os.urandom(1 << 20))
    for path in (tmp, f"{tmp}/www", f"{tmp}/www/small", f"{tmp}/www/1m"):
        os.chmod(path, 0o755)  # the worker runs as nobody
    port = free_port()
    conf = f"{tmp}/nginx.conf"
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(tmp=tmp, port=port))
    proc = procs.start(["nginx", "-p", tmp, "-c", conf], log=f"{tmp}/nginx.out", cpu=cpu)
    retry(lambda: len(http_get(f"http://127.0.0.1:{port}/small")) == 128, 10, 0.1, "nginx")
    return proc, port


def haproxy_pair(procs: Procs, tmp: str, name: str, certs: str, upstream: int, cpu: str,
                 bufsize: int = 16384) -> tuple[list[subprocess.Popen[bytes]], int]:
    """Client haproxy on a local port -> TLS with web's certificate -> server haproxy that
    requires and verifies it -> nginx. tcp mode, TLS session reuse on (haproxy's default)."""
    front, back = free_port(), free_port()
    head = f"""global
    nbthread 1
    maxconn 8000
    ssl-server-verify required
    tune.bufsize {bufsize}
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
"""
    return _start_pair(procs, tmp, f"haproxy-{name}", head, certs, upstream, cpu, front, back), front


def _start_pair(procs: Procs, tmp: str, label: str, head: str, certs: str, upstream: int, cpu: str,
                front: int, back: int) -> list[subprocess.Popen[bytes]]:
    """The two haproxy processes of a pair, sharing `head` (global and defaults): the
    client side listens on `front` and dials the server side on `back` with web's
    certificate; the server side verifies it and forwards to `upstream`."""
    client = head + f"""frontend web_out
    bind 127.0.0.1:{front}
    default_backend api_mtls
backend api_mtls
    server api 127.0.0.1:{back} ssl crt {certs}/web.full.pem ca-file {certs}/ca.pem verify required
"""
    server = head + f"""frontend api_in
    bind 127.0.0.1:{back} ssl crt {certs}/api.full.pem ca-file {certs}/ca.pem verify required
    default_backend app
backend app
    server app 127.0.0.1:{upstream}
"""
    out = []
    for side, text in (("server", server), ("client", client)):
        path = f"{tmp}/{label}-{side}.cfg"
        with open(path, "w") as f:
            f.write(text)
        out.append(procs.start(["haproxy", "-db", "-f", path], log=f"{tmp}/{label}-{side}.log", cpu=cpu))
    return out


def haproxy_http_pair(procs: Procs, tmp: str, certs: str, upstream: int,
                      cpu: str) -> tuple[list[subprocess.Popen[bytes]], int]:
    """The same hop in `mode http`: client haproxy (`http-reuse always`: requests of every
    client connection share kept-alive mutual-TLS connections to the server haproxy) ->
    server haproxy that requires and verifies web's certificate -> nginx, kept alive too.
    Both log every request (`option httplog`, to stdout, which goes to haproxy-http-<side>.log),
    as both mesh sidecars write an access log line."""
    front, back = free_port(), free_port()
    head = """global
    nbthread 1
    maxconn 8000
    ssl-server-verify required
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
"""
    return _start_pair(procs, tmp, "haproxy-http", head, certs, upstream, cpu, front, back), front


TM_META = {"tier": "bench"}  # api-tm's; both subsets' filters select it
TM_RATE_LIMITS = {"InstanceLevel": {"RequestsPerSecond": 1_000_000, "RequestsMaxBurst": 1_000_000,
                                    "Routes": [{"PathPrefix": "/never", "RequestsPerSecond": 1}]}}


def traffic_entries(web: str, api: str) -> list[dict[str, Any]]:
    """The traffic-managed pair's config entries, in an order the servers accept (the
    splitter needs api's protocol http first): every feature configured, none triggering
    at the bench's load (limits far above it, the rate-limited route never requested)."""
    subset = {"Filter": f"Service.Meta.tier == {TM_META['tier']}"}
    return [
        {"Kind": "service-defaults", "Name": api, "Protocol": "http", "RateLimits": TM_RATE_LIMITS},
        {"Kind": "service-defaults", "Name": web, "Protocol": "http", "UpstreamConfig": {"Defaults": {
            "Limits": {"MaxConnections": 100_000, "MaxPendingRequests": 100_000, "MaxConcurrentRequests": 100_000},
            "PassiveHealthCheck": {"Interval": "10s", "MaxFailures": 5}}}},
        {"Kind": "service-resolver", "Name": api, "DefaultSubset": "v1", "Subsets": {"v1": subset, "v2": subset},
         "Failover": {"*": {"ServiceSubset": "v2"}}},
        {"Kind": "service-splitter", "Name": api, "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                                                             {"Weight": 10, "ServiceSubset": "v2"}]},
    ]


class Mesh:
    """The dev agent; the sidecar pairs are registered with it (`pair`), config entries
    written through it (`configure`)."""

    def __init__(self, procs: Procs, tmp: str, agent_cpu: str, python: str = sys.executable) -> None:
        self.procs, self.tmp, self.python = procs, tmp, python
        self.http = free_port()
        self.agent = procs.start([python, "-m", "mesh.agent.cli.main", "agent", "-dev", "-node", "bench",
                                  "-http-port", str(self.http), "-server-port", str(free_port()),
                                  "-raft-port", str(free_port()), "-dns-port", "-1",
                                  "-supervise-proxies=false", "-log-level", "info"],
                                 log=f"{tmp}/agent.log", cpu=agent_cpu)
        base = self.base = f"http://127.0.0.1:{self.http}"
        retry(lambda: http_get(base + "/v1/status/leader", 2) != b'""', 30, 0.1, "dev agent leader")
        retry(lambda: b"BEGIN CERTIFICATE" in http_get(base + "/v1/agent/connect/ca/roots?pem=true", 5), 30, 0.2,
              "the CA")

    def pair(self, web: str, api: str, nginx_port: int, cpu: str, protocol: str = "tcp",
             api_meta: dict[str, str] | None = None) -> Pair:
        return Pair(self, web, api, nginx_port, cpu, protocol, api_meta)

    def configure(self, entries: list[dict[str, Any]]) -> None:
        for entry in entries:
            if http_put(self.base + "/v1/config", entry).strip() != b"true":
                raise RuntimeError(f"PUT /v1/config {entry['Kind']} {entry['Name']} was not applied")

    def certs(self, out: str, pair: Pair) -> str:
        """The dev agent's leaves for the pair's web and api and its roots, as haproxy wants
        them (web.full.pem, api.full.pem: the haproxy pairs check only the chain)."""
        os.makedirs(out, exist_ok=True)
        with open(f"{out}/ca.pem", "wb") as f:
            f.write(http_get(self.base + "/v1/agent/connect/ca/roots?pem=true"))
        for role, svc in pair.names.items():
            leaf = json.loads(http_get(f"{self.base}/v1/agent/connect/ca/leaf/{svc}"))
            cert, key = leaf["CertPEM"], leaf["PrivateKeyPEM"]
            with open(f"{out}/{role}.full.pem", "w") as f:
                f.write(cert.rstrip("\n") + "\n" + key.rstrip("\n") + "\n")
            with open(f"{out}/{role}.pem", "w") as f:
                f.write(cert)
        return out


class Pair:
    """Two services registered with sidecars (web's has an upstream to api on a local port,
    both have `prometheus_bind_addr`), an allow web -> api intention, and the two real
    `mesh connect proxy -sidecar-for ...` processes (info logs to a file). protocol "http":
    `Proxy.Config.protocol` and the upstream's `Config.protocol` are http and each sidecar
    writes access logs (`Proxy.AccessLogs`, type file) to access-<service>.log. `api_meta`:
    api's service meta (its sidecar copies it)."""

    def __init__(self, mesh: Mesh, web: str, api: str, nginx_port: int, cpu: str, protocol: str,
                 api_meta: dict[str, str] | None = None) -> None:
        self.names = {"web": web, "api": api}
        self.protocol = protocol
        self.mesh = mesh
        self.tmp = tmp = mesh.tmp
        base = mesh.base
        self.upstream_port = free_port()
        self.metrics = {"web": free_port(), "api": free_port()}
        self.access_logs = {role: f"{tmp}/access-{svc}.log" for role, svc in self.names.items()}

        def proxy(role: str, **extra: Any) -> dict[str, Any]:
            config: dict[str, Any] = {"prometheus_bind_addr": f"127.0.0.1:{self.metrics[role]}"}
            out: dict[str, Any] = {"Config": config, **extra}
            if protocol == "http":
                config["protocol"] = "http"
                out["AccessLogs"] = {"Enabled": True, "Type": "file", "Path": self.access_logs[role]}
            return out

        upstream: dict[str, Any] = {"DestinationName": api, "LocalBindPort": self.upstream_port}
        if protocol == "http":
            upstream["Config"] = {"protocol": "http"}
        http_put(base + "/v1/agent/service/register", {
            "Name": api, "ID": api, "Address": "127.0.0.1", "Port": nginx_port, "Meta": api_meta or {},
            "Connect": {"SidecarService": {"Port": free_port(), "Proxy": proxy("api")}}})
        http_put(base + "/v1/agent/service/register", {
            "Name": web, "ID": web, "Address": "127.0.0.1", "Port": free_port(),
            "Connect": {"SidecarService": {"Port": free_port(), "Proxy": proxy("web", Upstreams=[upstream])}}})
        http_put(base + f"/v1/connect/intentions/exact?source={web}&destination={api}", {"Action": "allow"})
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "MESH_", "CONNECT_"))}
        self.proxies = {
            role: mesh.procs.start([mesh.python, "-m", "mesh.agent.cli.main", "connect", "proxy", "-sidecar-for", svc,
                                    "-http-addr", f"127.0.0.1:{mesh.http}", "-log-level", "info",
                                    "-drain-timeout", "1"],
                                   log=f"{tmp}/proxy-{svc}.log", cpu=cpu, env=env)
            for role, svc in (("api", api), ("web", web))}
        retry(lambda: len(http_get(f"http://127.0.0.1:{self.upstream_port}/small", 5)) == 128, 60, 0.2,
              f"a request through the mesh ({protocol})")

    def pids(self) -> list[int]:
        return [p.pid for p in self.proxies.values()]

    def scrape(self, role: str) -> dict[str, float]:
        text = http_get(f"http://127.0.0.1:{self.metrics[role]}/metrics").decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    def check_http(self, nginx_port: int) -> str:
        """Once, before measuring: a request through the pair gets nginx's own body, and each
        sidecar's access log file gets a JSON line for it (path with a unique query, 200)."""
        target = f"/small?bench-check={os.getpid()}-{time.monotonic_ns()}"
        which = " -> ".join(self.names.values())
        want = http_get(f"http://127.0.0.1:{nginx_port}/small")
        got = http_get(f"http://127.0.0.1:{self.upstream_port}{target}")
        if got != want:
            raise RuntimeError(f"GET {target} through {which}: {got[:80]!r}, nginx says {want[:80]!r}")

        def logged(path: str) -> dict[str, Any] | None:
            with open(path, errors="replace") as f:
                for line in f:
                    if target in line:
                        record = json.loads(line)
                        if record.get("path") == target and record.get("response_code") == 200:
                            return record
            return None

        seen = []
        for role, path in self.access_logs.items():
            try:
                record = retry(lambda path=path: logged(path), 5, 0.05, f"{role} access log line")
            except AssertionError as exc:
                raise RuntimeError(f"{self.names[role]} sidecar: no JSON access log line for GET {target} in "
                                   f"{path}: {exc}") from None
            seen.append(f"{self.names[role]} {record.get('source')} -> {record.get('destination')} "
                        f"{record.get('response_code')}")
        return f"GET {target} through {which}: nginx's {len(got)} bytes; access log lines: " + ", ".join(seen)

    def check_traffic(self, nginx_port: int) -> str:
        """Once, before measuring, for the traffic-managed pair (traffic_entries): the
        plan is in force. The agent's compiled chain of api starts at the splitter (90/10)
        and has both subsets' resolvers; the agent merged api's rate limits into its
        sidecar and web's limits and passive health check into web's upstream; requests
        through web reach both targets (web's metrics) with nginx's body and no failover;
        a second quick request to the 1 req/s route is refused (429) by api's sidecar."""
        web, api, base = self.names["web"], self.names["api"], self.mesh.base
        chain = json.loads(http_get(f"{base}/v1/discovery-chain/{api}"))["Chain"]
        targets = {s: f"{s}.{api}.default.default.{chain['Datacenter']}" for s in ("v1", "v2")}
        start = chain["Nodes"].get(chain["StartNode"], {})
        resolved = {n["Resolver"]["Target"] for n in chain["Nodes"].values() if n["Type"] == "resolver"}
        if ([s["Weight"] for s in start.get("Splits", ())] != [90, 10] or start.get("Type") != "splitter"
                or not set(targets.values()) <= resolved):
            raise RuntimeError(f"/v1/discovery-chain/{api}: no 90/10 splitter at the start with resolvers for "
                               f"{', '.join(targets.values())}: {json.dumps(chain)[:600]}")

        def merged() -> str:
            api_config = json.loads(http_get(f"{base}/v1/agent/service/{api}-sidecar-proxy"))["Proxy"]["Config"]
            upstream = json.loads(http_get(f"{base}/v1/agent/service/{web}-sidecar-proxy"))["Proxy"]["Upstreams"][0]
            missing = ([] if api_config.get("rate_limits") == TM_RATE_LIMITS else
                       [f"{api} sidecar Config.rate_limits {api_config.get('rate_limits')}"])
            missing += [f"{web} upstream Config.{k}" for k in ("limits", "passive_health_check")
                        if not upstream.get("Config", {}).get(k)]
            if missing:
                raise RuntimeError("the agent did not merge " + "; ".join(missing))
            return "merged"

        try:
            retry(merged, 10, 0.2, "the service-defaults merged into the tm sidecars' registrations")
        except AssertionError as exc:
            raise RuntimeError(str(exc)) from None
        want = http_get(f"http://127.0.0.1:{nginx_port}/small")
        sent, counts, metrics = 0, dict.fromkeys(targets, 0.0), {}
        while sent < 200 and not all(counts.values()):
            for _ in range(50):
                got = http_get(f"http://127.0.0.1:{self.upstream_port}/small?bench-check=tm-{sent}")
                sent += 1
                if got != want:
                    raise RuntimeError(f"GET /small through the tm pair: {got[:80]!r}, nginx says {want[:80]!r}")
            metrics = self.scrape("web")
            counts = {s: _sum(metrics, "mesh_proxy_target_requests_total{", f'target="{t}"', f'upstream="{api}"')
                      for s, t in targets.items()}
        failovers = _sum(metrics, "mesh_proxy_failover_requests_total")
        if not all(counts.values()) or failovers:
            raise RuntimeError(f"{sent} requests through {web}: by target {counts}, failover {failovers:.0f} "
                               f"(want both targets and no failover); {web}'s target counters: "
                               + ", ".join(f"{k} {v:.0f}" for k, v in metrics.items() if "_target_requests" in k))
        codes = [http_status(f"http://127.0.0.1:{self.upstream_port}/never-bench-check") for _ in range(3)]
        limited = _sum(self.scrape("api"), "mesh_proxy_rate_limited_total")
        if 429 not in codes or not limited:
            raise RuntimeError(f"3 quick GET /never-bench-check through {web} (route limit 1 req/s): {codes}, "
                               f"{api}'s mesh_proxy_rate_limited_total {limited:.0f} (want a 429 counted)")
        return (f"{api}'s chain: splitter 90/10 -> resolvers {', '.join(targets.values())}; rate_limits, limits and "
                f"passive_health_check merged; {sent} GET /small through {web}: nginx's body; {web}'s requests by "
                "target so far: " + ", ".join(f"{s} {n:.0f}" for s, n in counts.items())
                + f", no failover; GET /never x3: {codes} ({limited:.0f} rate limited by {api}'s sidecar)")


# ---- measuring -------------------------------------------------------------------------------
ROWS = {
    "ka": ("small keep-alive, req/s", "rps"),
    "close": ("new connection per request, conn/s", "rps"),
    "bulk": ("1 MiB bodies, MB/s", "MBps"),
    "rate": ("at 1,000 req/s keep-alive, p50/p99 ms", "p99_ms"),
    "http-ka": ("http small keep-alive, req/s", "rps"),
    "http-close": ("http, new client connection per request, req/s", "rps"),
    "http-rate": ("http at 1,000 req/s keep-alive, p50/p99 ms", "p99_ms"),
}
HTTP_ROWS = ("ka", "close", "rate")  # the rows an http pair gets (http-<row>)
VARIANTS = {"tcp": ("direct", "haproxy", "mesh"), "http": ("direct", "haproxy-http", "mesh-http", "mesh-tm")}


def family(row: str) -> str:
    return "http" if row.startswith("http-") else "tcp"


def base_row(row: str) -> str:
    return row.removeprefix("http-")


def load_for(row: str, gen_cpu: str, port: int, seconds: float) -> dict[str, Any]:
    row = base_row(row)
    if row == "ka":
        return wrk(gen_cpu, port, "/small", 50, seconds)
    if row == "close":
        return wrk(gen_cpu, port, "/small", 50, seconds, close=True)
    if row == "bulk":
        return wrk(gen_cpu, port, "/1m", 8, seconds)
    return hey(gen_cpu, port, "/small", seconds)


def measured(run: Callable[[], dict[str, Any]], groups: dict[str, list[int]], label: str,
             procs: Procs) -> dict[str, Any]:
    """One run after the machine is quiet; repeated when other processes were busy."""
    noisy: list[dict[str, Any]] = []
    for _ in range(MAX_ATTEMPTS if GATE else 1):
        quiet = wait_quiet()
        procs.check_alive()
        with CpuWindow(groups) as window:
            try:
                result = run()
            finally:
                procs.check_alive()  # a load generator that failed because a proxy was killed says so
        result["cpu"] = window.cores
        result["load1"] = quiet["load1"]
        result["waited_s"] = quiet["waited_s"]
        if not quiet["quiet"]:
            result["note"] = quiet.get("why") or f"load {quiet['load1']} after waiting {MAX_WAIT:.0f} s"
        if window.cores["other"] <= NOISE_CORES or not GATE:
            break
        noisy.append(result)
        print(f"  {label}: other processes used {window.cores['other']} core, run discarded", flush=True)
    else:
        result = min(noisy, key=lambda r: r["cpu"]["other"])
        result["note"] = (result.get("note", "") + " noisy in every attempt").strip()
    if noisy:
        result["discarded"] = len(noisy) if result not in noisy else len(noisy) - 1
    print(f"  {label}: {summary(result)} (load {result['load1']}, other {result['cpu']['other']} core, "
          f"pair {result['cpu'].get('pair', 0)} core)", flush=True)
    return result


def summary(r: dict[str, Any]) -> str:
    text = f"{r['rps']:.0f} req/s"
    if r.get("MBps") and r["MBps"] > 50:
        text += f", {r['MBps']:.0f} MB/s"
    if r.get("p50_ms") is not None:
        text += f", p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms"
    if r.get("errors"):
        text += f", errors: {r['errors']}"
    return text


def median(runs: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


# ---- profiling -------------------------------------------------------------------------------
def profile(pids: dict[str, int], run: Callable[[], dict[str, Any]], tmp: str, tag: str, gen_cpu: str,
            seconds: float) -> dict[str, Any]:
    """py-spy on each proxy while `run` loads them; the top frames by own time."""
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        return {"error": f"no {spy}: .venv/bin/pip install py-spy"}
    spies = {}
    for svc, pid in pids.items():
        out = f"{tmp}/spy-{tag}-{svc}.txt"
        spies[svc] = (out, subprocess.Popen(
            ["taskset", "-c", gen_cpu, spy, "record", "--pid", str(pid), "--duration", str(int(seconds)),
             "--rate", "100", "--native", "--format", "raw", "--output", out],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(0.5)
    result = run()
    report: dict[str, Any] = {"load": summary(result)}
    for svc, (out, proc) in spies.items():
        _, err = proc.communicate(timeout=seconds + 60)
        if not os.path.exists(out):
            report[svc] = {"error": err.decode()[-300:]}
            continue
        report[svc] = fold(out)
    return report


SYSCALLS = ("write", "read", "writev", "readv", "sendmsg", "recvmsg", "send", "recv", "epoll_pwait", "epoll_wait",
            "epoll_ctl", "connect", "accept4", "close", "shutdown", "setsockopt", "getsockopt", "brk", "syscall")
CATEGORIES = (  # tried on each frame of a stack, innermost first (after the syscall rule)
    ("OpenSSL (records, AES-GCM, its BIO copies)", ("libssl", "libcrypto")),
    ("TLS glue (Python ssl, uvloop's SSLProtocol)", ("_ssl", "SSLObject", "ssl.py", "SSLProtocol", "ca/tls.py")),
    ("mux framing (mux.py, mux_frame.py, mux_events.py)", ("mux.py", "mux_frame.py", "mux_events.py")),
    ("mux glue (mux_transport.py, mux_stream.py)", ("mux_transport.py", "mux_stream.py")),
    ("access log (proxy/http/access.py)", ("http/access.py",)),
    ("HTTP parsing (httptools)", ("httptools",)),
    ("HTTP path (proxy/http/)", ("proxy/http/",)),
    ("splice (splice.py)", ("splice.py",)),
    ("connection setup (inbound.py, outbound.py, balancer.py)", ("inbound.py", "outbound.py", "balancer.py")),
    ("event loop (uvloop, asyncio)", ("loop.c", "uv_", "uv__", "uvloop", "asyncio/", "UVStream")),
)
_MESH_FRAME = re.compile(r"\b(proxy/(http/)?\w+\.py|ca/tls\.py)")


def fold(path: str) -> dict[str, Any]:
    """py-spy raw (collapsed) stacks -> where the time goes by category (a system call at
    the top of the stack is its own category, else the innermost frame that names one), the
    top frames by own samples (an unsymbolized address, in libc mostly memcpy, is named by
    its nearest named caller), and our frames by inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    cats: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_short(fr) for fr in stack.split(";")]
            top = frames[-1]
            if top.startswith("0x"):
                caller = next((fr for fr in reversed(frames) if not fr.startswith("0x")), "?")
                lib = top.partition(" ")[2]
                top = f"{lib} internal{' (memcpy, mostly)' if 'libc.' in lib else ''} under {caller}"
            own[top] += n
            for fr in set(frames):
                incl[fr] += n
            cats[_category(frames)] += n
    pct = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total,
            "own": [(fr, pct(n)) for fr, n in own.most_common(12)],
            "inclusive": [(fr, pct(n)) for fr, n in incl.most_common() if _MESH_FRAME.search(fr)][:12],
            "categories": [(c, pct(n)) for c, n in cats.most_common()]}


def _category(frames: list[str]) -> str:
    name, _, where = frames[-1].partition(" ")
    if name in SYSCALLS and "libc" in where:
        return f"{name}() system call" if not name.startswith("epoll") else "epoll (the loop polling)"
    for frame in reversed(frames):
        for category, marks in CATEGORIES:
            if any(m in frame for m in marks):
                return category
    return "other"


def _short(frame: str) -> str:
    """'data_received (/work/.../mesh/proxy/splice.py:105)' -> 'data_received (mesh/proxy/splice.py:105)'."""
    frame = re.sub(r"\(/[^)]*?/(site-packages|lib/python3\.\d+)/", "(", frame)
    frame = re.sub(r"\(/[^)]*?/(agent|api|ca|catalog|dns|proxy)/", r"(mesh/\1/", frame)
    return frame


# ---- main ------------------------------------------------------------------------------------
def main() -> int:
    global LOAD_LIMIT, GATE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s each")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per run (10; --quick: 3)")
    parser.add_argument("--runs", type=int, default=None, help="runs per variant (3; --quick: 1)")
    parser.add_argument("--protocol", choices=("tcp", "http", "both"), default="both",
                        help="the L4 pairs (tcp), the http pairs (http: the haproxy http pair, the mesh http "
                             "pair and the traffic-managed one; rows ka, close, rate) or both")
    parser.add_argument("--rows", default="ka,close,bulk,rate",
                        help="a subset of ka,close,bulk,rate (an http pair has no bulk row)")
    parser.add_argument("--proxy-cpu", default="0", help="the proxies of a pair (taskset list)")
    parser.add_argument("--gen-cpu", default="1", help="nginx and the load generator")
    parser.add_argument("--no-profile", action="store_true", help="no py-spy where a target is missed")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--load-limit", type=float, default=LOAD_LIMIT,
                        help="1-minute load average to wait for before each run (0.7)")
    parser.add_argument("--mesh-python", default=sys.executable,
                        help="the Python (of a venv with mesh installed) that runs the agent and the proxies")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    parser.add_argument("--no-wait", action="store_true",
                        help="no load gate and no discarded runs: a smoke check of the script, not figures")
    args = parser.parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    runs = args.runs or (1 if args.quick else 3)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = [r for r in wanted if r not in ROWS or r.startswith("http-")]
    if unknown:
        parser.error(f"--rows: unknown {', '.join(unknown)} (ka, close, bulk, rate)")
    rows = ([r for r in wanted if args.protocol in ("tcp", "both")]
            + [f"http-{r}" for r in wanted if args.protocol in ("http", "both") and r in HTTP_ROWS])
    if not rows:
        parser.error("--rows: nothing to measure for --protocol http (its rows: ka, close, rate)")
    LOAD_LIMIT = args.load_limit
    GATE = not args.no_wait
    missing = [t for t in ("wrk", "hey", "haproxy", "nginx", "taskset") if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: apt-get install wrk hey haproxy nginx", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="mesh-proxy-bench-")
    procs = Procs()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on a plain kill too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    ok = False
    try:
        ok = bench(args, procs, tmp, seconds, runs, rows)
    finally:
        procs.stop_all()
        if args.keep or not ok:
            print(f"\nlogs and configs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def bench(args: argparse.Namespace, procs: Procs, tmp: str, seconds: float, runs: int, rows: list[str]) -> bool:
    pcpu, gcpu = args.proxy_cpu, args.gen_cpu
    families = sorted({family(r) for r in rows}, key=["tcp", "http"].index)
    nginx, nginx_port = start_nginx(procs, tmp, gcpu)
    mesh = Mesh(procs, tmp, agent_cpu=gcpu, python=args.mesh_python)
    pairs: dict[str, Pair] = {}
    if "tcp" in families:
        pairs["tcp"] = mesh.pair("web", "api", nginx_port, pcpu)
    if "http" in families:
        pairs["http"] = mesh.pair("web-http", "api-http", nginx_port, pcpu, protocol="http")
        mesh.configure(traffic_entries("web-tm", "api-tm"))
        pairs["tm"] = mesh.pair("web-tm", "api-tm", nginx_port, pcpu, protocol="http", api_meta=TM_META)
    certs = mesh.certs(f"{tmp}/certs", next(iter(pairs.values())))  # the tcp pair's when there is one
    key_type = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", f"{certs}/api.pem"],
                              capture_output=True, text=True).stdout
    curve = "P-256" if "prime256v1" in key_type or "P-256" in key_type else "not P-256!"
    variants: dict[str, tuple[list[int], int]] = {"direct": ([], nginx_port)}
    haproxies: dict[str, list[subprocess.Popen[bytes]]] = {}
    where = [f"nginx :{nginx_port}"]
    if "tcp" in pairs:
        hap, hap_port = haproxy_pair(procs, tmp, "default", certs, nginx_port, pcpu)
        hap64, hap64_port = haproxy_pair(procs, tmp, "buf64k", certs, nginx_port, pcpu, bufsize=65536)
        haproxies.update({"haproxy": hap, "haproxy-64k": hap64})
        variants.update({"haproxy": ([p.pid for p in hap], hap_port),
                         "haproxy-64k": ([p.pid for p in hap64], hap64_port),
                         "mesh": (pairs["tcp"].pids(), pairs["tcp"].upstream_port)})
        where.append(f"haproxy pair :{hap_port} (64 KiB buffers :{hap64_port}), mesh upstream "
                     f":{pairs['tcp'].upstream_port}")
    logs = LogLines(tmp)
    if "http" in pairs:
        haph, haph_port = haproxy_http_pair(procs, tmp, certs, nginx_port, pcpu)
        haproxies["haproxy-http"] = haph
        variants.update({"haproxy-http": ([p.pid for p in haph], haph_port),
                         "mesh-http": (pairs["http"].pids(), pairs["http"].upstream_port),
                         "mesh-tm": (pairs["tm"].pids(), pairs["tm"].upstream_port)})
        where.append(f"haproxy http pair :{haph_port}, mesh http upstream :{pairs['http'].upstream_port}, "
                     f"traffic-managed upstream :{pairs['tm'].upstream_port} (access logs to files and metrics on, "
                     "all three pairs)")
        retry(lambda: len(http_get(f"http://127.0.0.1:{haph_port}/small", 5)) == 128, 20, 0.2, "haproxy http pair")
        print("check: " + pairs["http"].check_http(nginx_port), flush=True)
        print("check: " + pairs["tm"].check_http(nginx_port), flush=True)
        print("check: " + pairs["tm"].check_traffic(nginx_port), flush=True)
        tm_checked = {role: pairs["tm"].scrape(role) for role in ("web", "api")}
        logs.watch({**{f"{pair.names[r]} access log": p for pair in (pairs["http"], pairs["tm"])
                       for r, p in pair.access_logs.items()},
                    "haproxy http client log": f"{tmp}/haproxy-http-client.log",
                    "haproxy http server log": f"{tmp}/haproxy-http-server.log"})
    for name, (_, port) in variants.items():
        retry(lambda port=port: len(http_get(f"http://127.0.0.1:{port}/1m", 10)) == 1 << 20, 20, 0.2,
              f"{name} serves /1m")
        wrk(gcpu, port, "/small", 20, 2)  # warm-up
    logs.collect()
    time.sleep(5)
    sidecars = {pair.names[role]: proc for pair in pairs.values() for role, proc in pair.proxies.items()}
    rss_warm = {svc: rss_mib(p.pid) for svc, p in sidecars.items()}
    print(f"setup: {', '.join(where)}; leaves from the dev agent ({curve}); proxies on CPU {pcpu}, nginx and load "
          f"on CPU {gcpu}; {runs} run(s) of {seconds:g} s"
          f"{'' if GATE else ', NO load gate (--no-wait: a smoke check, not figures)'}; idle sidecar RSS after warm-up "
          + ", ".join(f"{svc} {v:.1f} MiB" for svc, v in rss_warm.items()), flush=True)

    everyone = {"nginx": tree(nginx.pid), "agent": [mesh.agent.pid],
                "idle": [p.pid for hs in haproxies.values() for p in hs]
                + [pid for pair in pairs.values() for pid in pair.pids()]}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rss_rows: dict[str, float] = {}
    for row in rows:
        names = list(VARIANTS[family(row)]) + (["haproxy-64k"] if row == "bulk" else [])
        results[row] = {n: [] for n in names}
        print(f"{ROWS[row][0]}:", flush=True)
        for i in range(runs):
            for name in names:
                pids, port = variants[name]
                groups = dict(everyone, pair=pids, idle=[p for p in everyone["idle"] if p not in pids])
                results[row][name].append(measured(
                    lambda row=row, port=port: load_for(row, gcpu, port, seconds), groups, f"{name} run {i + 1}",
                    procs))
                logs.collect()  # counted and emptied between runs: the disk does not fill up
        rss_rows[row] = max(rss_mib(p.pid) for p in pairs[family(row)].proxies.values())
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump(results, f, indent=1)  # kept with --keep, or when a later row fails
    time.sleep(10)
    rss_idle = {svc: rss_mib(p.pid) for svc, p in sidecars.items()}
    logs.collect()
    table, missed = render(results, rss_warm, rss_idle, haproxies, pairs)
    print()
    print("\n".join(table))
    print()
    print("\n".join(details(results)))
    print()
    for fam, pair in pairs.items():
        metrics = {role: pair.scrape(role) for role in ("web", "api")}
        print(mesh_notes(pair, metrics) if fam == "tcp" else
              http_notes(pair, metrics, logs if fam == "http" else None))  # the log lines of all, once
        if fam == "tm":
            print(traffic_notes(pair, metrics, tm_checked))
    print("largest sidecar RSS right after each row, MiB: " + ", ".join(f"{r} {v:.1f}" for r, v in rss_rows.items()))

    if missed and not args.no_profile:
        print("\nprofiles (py-spy, both proxies under the load of a missed row; % of samples where the "
              "process was not idle):")
        for miss in missed:
            row, _, which = miss.partition("@")  # "<row>@tm": the traffic-managed pair's target
            if row not in ROWS:
                print(f"- {row}: not a load row; see the RSS figures above")
                continue
            pair = pairs[which or family(row)]
            prof = profile({pair.names[role]: p.pid for role, p in pair.proxies.items()},
                           lambda row=row, pair=pair: load_for(row, gcpu, pair.upstream_port, args.profile_seconds),
                           tmp, miss.replace("@", "-"), gcpu, args.profile_seconds)
            logs.collect()
            print(f"\n### {ROWS[row][0]}{', the traffic-managed pair' if which else ''} ({prof.pop('load', '')})")
            for svc, rep in prof.items():
                print(f"\n{svc} sidecar: {json.dumps(rep) if 'error' in rep else ''}")
                if "error" in rep:
                    continue
                print(f"  samples {rep['samples']}; by category: "
                      + "; ".join(f"{c} {p}%" for c, p in rep["categories"]))
                print("  own time: " + "; ".join(f"{fr} {p}%" for fr, p in rep["own"]))
                print("  inclusive (mesh frames): " + "; ".join(f"{fr} {p}%" for fr, p in rep["inclusive"]))
    with open(os.path.join(tmp, "results.json"), "w") as f:
        json.dump({"results": results, "rss_warm": rss_warm, "rss_idle": rss_idle, "log_lines": logs.lines}, f,
                  indent=1)
    return True


class LogLines:
    """Request log files (the mesh http sidecars' access logs, the haproxy http pair's
    httplog): their request lines are counted and the files emptied between runs (all are
    opened O_APPEND, so the writers go on at the new end), which keeps the disk from filling
    up and page-cache writeback from piling up over a full run."""

    MARKS = (b'"method":', b' HTTP/1.1"')  # a JSON access log line; an httplog line

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.paths: dict[str, str] = {}
        self.lines: dict[str, int] = {}

    def watch(self, paths: dict[str, str]) -> None:
        self.paths.update(paths)
        self.lines.update({name: 0 for name in paths})

    def collect(self) -> None:
        if not self.paths:
            return
        time.sleep(0.3)  # the lines of the requests that ended with the load (a line written now would be lost)
        for name, path in self.paths.items():
            try:
                with open(path, "rb") as f:
                    self.lines[name] += sum(1 for line in f if any(m in line for m in self.MARKS))
                os.truncate(path, 0)
            except OSError:
                pass


def render(results: dict[str, dict[str, list[dict[str, Any]]]], rss_warm: dict[str, float],
           rss_idle: dict[str, float], haproxies: dict[str, list[subprocess.Popen[bytes]]],
           pairs: dict[str, Pair]) -> tuple[list[str], list[str]]:
    out = ["| row | mesh | haproxy pair | direct | ratio | target | met? |", "|---|---:|---:|---:|---:|---|---|"]
    missed: list[str] = []

    def verdict(row: str, ok: bool) -> str:
        if not ok:
            missed.append(row)
        return "yes" if ok else "**no**"

    for row, by in results.items():
        label, key = ROWS[row]
        direct, hname, mname = VARIANTS[family(row)][:3]
        m, h, d = (median(by[n], key) for n in (mname, hname, direct))
        whose = "haproxy http" if family(row) == "http" else "haproxy"
        if base_row(row) in ("ka", "close"):
            ratio = m / h
            out.append(f"| {label} | {m:,.0f} | {h:,.0f} | {d:,.0f} | {ratio:.2f}x | >= {TARGETS[row]:g}x {whose} "
                       f"| {verdict(row, ratio >= TARGETS[row])} |")
        elif row == "bulk":
            h64 = median(by["haproxy-64k"], key)
            ratio = m / h
            out.append(f"| {label} | {m:,.0f} | {h:,.0f} (64 KiB bufs: {h64:,.0f}) | {d:,.0f} | {ratio:.2f}x "
                       f"({m / h64:.2f}x of 64 KiB) | >= 1x haproxy | {verdict(row, ratio >= TARGETS[row])} |")
        else:
            target = TARGETS["http_p99_added_ms" if family(row) == "http" else "p99_added_ms"]
            mp50, hp50, dp50 = (median(by[n], "p50_ms") for n in (mname, hname, direct))
            added99, hadded99 = m - d, h - d
            out.append(f"| {label} | {mp50:.2f} / {m:.2f} (+{mp50 - dp50:.2f} / +{added99:.2f}) | {hp50:.2f} / {h:.2f} "
                       f"(+{hp50 - dp50:.2f} / +{hadded99:.2f}) | {dp50:.2f} / {d:.2f} | - | added p99 <= {target:g} ms "
                       f"| {verdict(row, added99 <= target)} |")
        if "mesh-tm" in by:  # issue 14: the traffic-managed pair against the plain mesh http pair, same run
            t = median(by["mesh-tm"], key)
            tlabel = f"{label}, traffic-managed pair (mesh-tm)"
            if base_row(row) == "rate":
                tp50 = median(by["mesh-tm"], "p50_ms")  # dp50: direct's, above
                target = TARGETS["tm_p99_added_ms"]
                out.append(f"| {tlabel} | {tp50:.2f} / {t:.2f} (+{tp50 - dp50:.2f} / +{t - d:.2f}) | - "
                           f"| {dp50:.2f} / {d:.2f} | p99 {t - m:+.2f} ms vs mesh-http | tm p99: <= mesh-http's "
                           f"+ {target:g} ms | {verdict(row + '@tm', t - m <= target)} |")
            elif base_row(row) == "ka":
                ratio = t / m
                out.append(f"| {tlabel} | {t:,.0f} | - | {d:,.0f} | {ratio:.2f}x mesh-http | tm-ka: >= "
                           f"{TARGETS['tm-ka']:g}x mesh-http | {verdict(row + '@tm', ratio >= TARGETS['tm-ka'])} |")
            else:  # for the record
                out.append(f"| {tlabel} | {t:,.0f} | - | {d:,.0f} | {t / m:.2f}x mesh-http | - | - |")
    if "tcp" in pairs:  # issue 12's row: the L4 pair
        names = pairs["tcp"].names.values()
        warm = {s: v for s, v in rss_warm.items() if s in names}
        after = max(v for s, v in rss_idle.items() if s in names)
        rss_hap = max(rss_mib(p.pid) for p in haproxies["haproxy"])
        out.append(f"| idle sidecar RSS, MiB | {max(warm.values()):.1f} ("
                   + ", ".join(f"{s} {v:.1f}" for s, v in warm.items())
                   + f"; idle again after the rows: {after:.1f}) | {rss_hap:.1f} (one haproxy) | - | - | <= 40 MiB "
                   f"| {verdict('rss', max(warm.values()) <= TARGETS['rss_mib'])} |")
    if "http" in pairs:  # no target: for the record
        names = [*pairs["http"].names.values(), *pairs["tm"].names.values()]
        rss_hap = max(rss_mib(p.pid) for p in haproxies["haproxy-http"])
        out.append("| idle http sidecar RSS, MiB | " + ", ".join(f"{s} {v:.1f}" for s, v in rss_warm.items() if s in names)
                   + " (idle again after the rows: " + ", ".join(f"{s} {v:.1f}" for s, v in rss_idle.items()
                                                              if s in names)
                   + f") | {rss_hap:.1f} (one haproxy) | - | - | - | - |")
    return out, missed


def details(results: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    out = ["| row | variant | runs | 1-min load at start | other procs, cores | pair, cores | pair CPU per request "
           "| discarded |", "|---|---|---|---|---|---|---:|---:|"]
    for row, by in results.items():
        label, key = ROWS[row]
        for name, rs in by.items():
            spec = ".2f" if base_row(row) == "rate" else ",.0f"
            values = ", ".join(format(r[key], spec) for r in rs)
            loads = ", ".join(f"{r['load1']:.2f}" for r in rs)
            other = ", ".join(f"{r['cpu']['other']:.2f}" for r in rs)
            pair = ", ".join(f"{r['cpu']['pair']:.2f}" for r in rs)
            per_req = [r["cpu"]["pair"] / r["rps"] * 1e6 for r in rs if r["rps"] and r["cpu"]["pair"]]
            cost = f"{statistics.median(per_req):.0f} us" if per_req else "-"
            notes = "; ".join(sorted({r["note"] for r in rs if r.get("note")}))
            out.append(f"| {label} | {name} | {values} | {loads} | {other} | {pair} | {cost} "
                       f"| {sum(r.get('discarded', 0) for r in rs)}{' ' + notes if notes else ''} |")
    return out


def _sum(m: dict[str, float], prefix: str, *labels: str) -> float:
    return sum(v for k, v in m.items() if k.startswith(prefix) and all(label in k for label in labels))


def mesh_notes(pair: Pair, metrics: dict[str, dict[str, float]]) -> str:
    web, api = metrics["web"], metrics["api"]
    opened = _sum(web, 'mesh_proxy_connections_opened_total{direction="outbound"')
    dialled = _sum(web, 'mesh_proxy_handshake_seconds_count{side="outbound"')
    pooled = _sum(web, 'mesh_proxy_mux_connections{side="outbound"')
    accepted = _sum(api, 'mesh_proxy_handshake_seconds_count{side="inbound"')
    allowed = _sum(api, 'mesh_proxy_authz_total{result="allow"')
    denied = _sum(api, 'mesh_proxy_authz_total{result="deny"')
    failures = _sum(web, "mesh_proxy_dial_failures_total")
    refused = _sum(web, "mesh_proxy_refused_connections_total") + _sum(api, "mesh_proxy_refused_connections_total")
    lines = [f"mesh sidecars after the rows: web opened {opened:,.0f} app connections over {dialled:,.0f} TLS "
             f"handshake(s) (mux connections open now: {pooled:.0f}); api accepted {accepted:,.0f} TLS "
             f"connection(s) and authorized {allowed:,.0f} streams (denied {denied:,.0f}); dial failures "
             f"{failures:,.0f}, refused connections {refused:,.0f}"]
    return "\n".join(lines + sidecar_logs(pair))


def http_notes(pair: Pair, metrics: dict[str, dict[str, float]], logs: LogLines | None) -> str:
    web, api = metrics["web"], metrics["api"]

    def classes(m: dict[str, float], direction: str) -> str:
        counts = {c: _sum(m, "mesh_proxy_http_requests_total{", f'direction="{direction}"', f'class="{c}"')
                  for c in ("2xx", "3xx", "4xx", "5xx")}
        return f"{sum(counts.values()):,.0f} (" + ", ".join(f"{c} {n:,.0f}" for c, n in counts.items() if n) + ")"

    dialled = _sum(web, 'mesh_proxy_handshake_seconds_count{side="outbound"')
    accepted = _sum(api, 'mesh_proxy_handshake_seconds_count{side="inbound"')
    failures = _sum(web, "mesh_proxy_dial_failures_total")
    retries = _sum(web, "mesh_proxy_http_retries_total")
    lines = [f"mesh http sidecars after the rows: {pair.names['web']} answered {classes(web, 'outbound')} requests "
             f"to its upstream over {dialled:,.0f} TLS handshake(s) (retries {retries:,.0f}, dial failures "
             f"{failures:,.0f}); {pair.names['api']} answered {classes(api, 'inbound')} inbound requests over "
             f"{accepted:,.0f} TLS connection(s)"]
    if logs is not None:
        lines.append("request log lines written (all runs, the check and warm-up included): "
                     + ", ".join(f"{name} {n:,}" for name, n in logs.lines.items()))
    return "\n".join(lines + sidecar_logs(pair))


def traffic_notes(pair: Pair, metrics: dict[str, dict[str, float]], checked: dict[str, dict[str, float]]) -> str:
    """The traffic-managed pair over the rows (counters now minus after its check): where
    the splitter sent requests, and whether a limit, failover, ejection or rate limit
    triggered (none should: the figures would then not be of the configured-only cost)."""
    web, api = pair.names["web"], pair.names["api"]

    def since(role: str, prefix: str, *labels: str) -> float:
        return _sum(metrics[role], prefix, *labels) - _sum(checked[role], prefix, *labels)

    targets = {k.partition('target="')[2].partition('"')[0]: v - checked["web"].get(k, 0)
               for k, v in metrics["web"].items() if k.startswith("mesh_proxy_target_requests_total{")}
    total = sum(targets.values())
    triggered = {"failover requests": since("web", "mesh_proxy_failover_requests_total"),
                 "refused by a circuit breaker": since("web", "mesh_proxy_overloaded_total"),
                 "instances ejected now": _sum(metrics["web"], "mesh_proxy_ejected_instances"),
                 f"rate limited by {api}": since("api", "mesh_proxy_rate_limited_total")}
    fired = {k: v for k, v in triggered.items() if v}
    return (f"traffic-managed pair over the rows: {web} sent {total:,.0f} requests by target: "
            + ", ".join(f"{t} {n:,.0f} ({100 * n / total if total else 0:.1f}%)" for t, n in sorted(targets.items()))
            + "; " + ", ".join(f"{k} {v:,.0f}" for k, v in triggered.items())
            + ("" if not fired else " -- **traffic management triggered during the rows: its figures are not of "
               "the configured-only cost**"))


def sidecar_logs(pair: Pair) -> list[str]:
    lines = []
    for svc in pair.names.values():
        path = f"{pair.tmp}/proxy-{svc}.log"
        with open(path, errors="replace") as f:
            text = f.read()
        bad = [ln for ln in text.splitlines() if re.search(r"\[(warning|error|critical)", ln) or "Traceback" in ln]
        lines.append(f"{svc} sidecar log: {len(text.splitlines())} lines at info level, {len(bad)} warnings or errors"
                     + (f" (first: {bad[0][:160]})" if bad else ""))
    return lines


if __name__ == "__main__":
    sys.exit(main())
