"""One chaos run: cluster up, workload and nemesis for a time budget, heal, check, report.

`python -m tests.chaos.run --seconds 300 --seed 42` (what `make chaos` runs) prints
the seed first, so a failing run can be replayed with the same fault schedule, then
the report; the exit status is 1 when any anomaly was found (2 when namespaces cannot
be created). The pytest module calls `run_chaos` with a short budget.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from .analysis import Anomaly, HistoryReport, analyse, load
from .cluster import REPO_ROOT, ChaosCluster
from .nemesis import Nemesis
from .netns import unavailable_reason
from .postheal import PostHeal, check_recovery, check_state

__all__ = ["Report", "run_chaos", "main"]


@dataclass
class Report:
    seed: int
    seconds: float
    servers: int
    workdir: str
    history: HistoryReport | None = None
    post: PostHeal | None = None
    faults: dict[str, int] = field(default_factory=dict)
    fault_log: list[str] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth a look, not a broken promise
    wall: float = 0.0

    def by_check(self, *checks: str) -> list[Anomaly]:
        return [a for a in self.anomalies if a.check in checks]

    def format(self) -> str:
        lines = [f"chaos run: seed {self.seed}, {self.seconds:g}s of faults, {self.servers} servers + 2 clients, "
                 f"{self.wall:.0f}s wall, files in {self.workdir}"]
        if self.history:
            total = sum(self.history.counts.values())
            lines.append(f"operations: {total}")
            kinds = sorted({k for k, _ in self.history.counts})
            for kind in kinds:
                parts = ", ".join(f"{o} {n}" for (k, o), n in sorted(self.history.counts.items()) if k == kind)
                lines.append(f"  {kind:24} {parts}")
            lines.append(f"keys checked for linearizability: {len(self.history.keys)} "
                         f"({self.history.explored} search states)")
            lines.append("longest run of failed operations per agent (s): " + json.dumps(
                {k: round(v, 1) for k, v in sorted(self.history.outages.items())}))
            for u in self.history.undecided:
                lines.append(f"  undecided: {u}")
        lines.append(f"faults: {sum(self.faults.values())} " + json.dumps(self.faults, sort_keys=True))
        lines.extend(f"  {f}" for f in self.fault_log)
        if self.post:
            p = self.post
            lines.append(f"after heal: leader in {_s(p.leader_after)}, clients see all servers in "
                         f"{_s(p.clients_after)}, servers converged in {_s(p.converged_after)}, "
                         f"server RSS MiB {({k: round(v) if v else v for k, v in p.rss_mib.items()})}")
        if self.notes:
            lines.append(f"notes: {len(self.notes)}")
            lines.extend(f"  {n}" for n in self.notes)
        lines.append(f"anomalies: {len([a for a in self.anomalies if a.check != 'logs'])}")
        for a in self.anomalies:
            lines.append(f"  [{a.check}] {a.message}")
        return "\n".join(lines)


def _outcomes(records: list[dict[str, Any]], start: float, end: float) -> str:
    counts: dict[str, int] = {}
    for r in records:
        if "invoked" in r and start <= r["invoked"] <= end:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


NOTABLE = ("raft_watchdog_recovering", "Traceback", "[critical")


def _log_notes(cluster: ChaosCluster) -> list[str]:
    """Log lines that mean a server needed rescuing or crashed inside (the watchdog moving a
    stuck Raft aside, an unhandled exception), whatever the checks said."""
    found = []
    for a in cluster.servers + cluster.clients:
        try:
            with open(a.log_path, errors="replace") as f:
                found += [f"{a.name}: {line.strip()[:220]}" for line in f if any(k in line for k in NOTABLE)]
        except OSError:
            pass
    return found


def _s(v: float | None) -> str:
    return "never" if v is None else f"{v:.1f}s"


def run_chaos(seconds: float, seed: int | None = None, servers: int = 3, workers_per_agent: int = 2,
              rss_bound_mib: float = 400.0, keep: bool = False, client_seeds: str = "mixed",
              log: Any = lambda _msg: None) -> Report:
    """The whole run; the cluster, its namespaces and processes are gone on return."""
    seed = seed if seed is not None else random.SystemRandom().randrange(1, 10**9)
    workdir = tempfile.mkdtemp(prefix=f"mesh-chaos-{seed}-")
    report = Report(seed, seconds, servers, workdir)
    started = time.monotonic()
    cluster = ChaosCluster(workdir, servers=servers, client_seeds=client_seeds)
    workload: subprocess.Popen[bytes] | None = None
    try:
        log(f"seed {seed}; starting {servers} servers and 2 clients (-retry-join: {client_seeds}) "
            f"in namespaces {cluster.net.prefix}-*")
        cluster.start()
        history_path = os.path.join(workdir, "history.jsonl")
        t0 = time.monotonic()
        cfg = {"servers": cluster.server_map(), "clients": cluster.client_map(), "seed": seed, "t0": t0,
               "seconds": seconds, "workers_per_agent": workers_per_agent, "timeout": 5.0, "block_wait": 2,
               "gen_seconds": 6.0, "out": history_path}
        cfg_path = os.path.join(workdir, "workload.json")
        with open(cfg_path, "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(workdir, "workload.log"), "wb") as wlog:
            workload = subprocess.Popen(cluster.observer_cmd("tests.chaos.workload", cfg_path), cwd=REPO_ROOT,
                                        stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True)
        nemesis = Nemesis(cluster, random.Random(seed), log=log)
        time.sleep(2)  # some history before the first blow
        nemesis.run(t0 + seconds)
        report.faults = nemesis.summary()
        report.anomalies.extend(Anomaly("process", n) for n in nemesis.notes)
        log("nemesis done, everything healed; checking")
        post = PostHeal()
        check_recovery(cluster, post)
        workload.wait(timeout=seconds + 120)
        records = load(history_path)
        keys = sorted({r["key"] for r in records if r.get("kind") in ("write", "read", "cas", "cas_fail")})
        check_state(cluster, keys, rss_bound_mib, post)
        report.post = post
        report.anomalies.extend(post.anomalies)
        report.history = analyse(records, post.final_reads,
                                 restarts={a.name: a.starts[1:] for a in cluster.servers})
        report.fault_log = [f"{f.start - t0:6.1f}s (monotonic {f.start:.1f}) {f.kind}: {f.detail} "
                            f"(healed after {f.end - f.start:.1f}s; "
                            f"operations begun meanwhile: {_outcomes(records, f.start, f.end)})"
                            for f in nemesis.faults]
        report.anomalies.extend(report.history.anomalies)
        report.notes.extend(_log_notes(cluster))
        if report.anomalies:
            report.anomalies.append(Anomaly("logs", cluster.logs(12)))
    finally:
        report.wall = time.monotonic() - started
        with open(os.path.join(workdir, "report.txt"), "w") as f:
            f.write(report.format() + "\n")
        if workload is not None and workload.poll() is None:
            workload.kill()
            workload.wait(10)
        cluster.stop()
        if not keep and not report.anomalies:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("CHAOS_SECONDS") or 300))
    ap.add_argument("--seed", type=int, default=int(os.environ["SEED"]) if os.environ.get("SEED") else None)
    ap.add_argument("--servers", type=int, default=int(os.environ.get("CHAOS_SERVERS") or 3), choices=[3, 5])
    ap.add_argument("--client-seeds", default=os.environ.get("CHAOS_CLIENT_SEEDS") or "mixed",
                    choices=["all", "one", "mixed"], help="servers each client is given as -retry-join")
    ap.add_argument("--keep", action="store_true", help="keep the run's directory (logs, history) even when clean")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so run_chaos's cleanup (processes, namespaces) runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    reason = unavailable_reason()
    if reason:
        print(f"chaos: skipped: {reason}")
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    print(f"chaos: seed {seed} (replay: make chaos SEED={seed} CHAOS_SECONDS={args.seconds:g})", flush=True)
    report = run_chaos(args.seconds, seed, args.servers, keep=args.keep, client_seeds=args.client_seeds,
                       log=lambda m: print(f"chaos: {m}", flush=True))
    print(report.format())
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
