"""From the workload's JSON lines to anomalies: each kind of read against its promise.

- writes and `?consistent` reads (catalog nodes, intentions, KV keys) and conditional
  writes (KV compare-and-set, lock acquire and release): linearizable per key, so a
  lock with two holders at once is a history with no legal order;
- default reads and blocking queries: stale by at most the leader lease (2 s);
- `?stale` reads: no invented values;
- leaf certificates: an acknowledged leaf is a certificate for the service asked.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .linearizability import Op, check_key
from .staleness import check_monotonic, check_reads

__all__ = ["Anomaly", "load", "to_op", "analyse", "LEASE"]

LEASE = 2.0


@dataclass
class Anomaly:
    check: str
    message: str


@dataclass
class HistoryReport:
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    anomalies: list[Anomaly] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    undecided: list[str] = field(default_factory=list)
    explored: int = 0
    outages: dict[str, float] = field(default_factory=dict)  # per target: longest span of only failures


def load(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def to_op(rec: dict[str, Any]) -> Op:
    value = rec["value"]
    if rec["kind"] == "cas":
        value = (tuple(value["expect"]), value["new"])
    elif rec["kind"] == "cas_fail":
        value = tuple(value["expect"])
    return Op(rec["key"], rec["kind"], value, rec["invoked"], rec["completed"], rec["outcome"],
              rec.get("process"))


def _label(rec: dict[str, Any]) -> str:
    return rec["kind"] if rec["kind"] in ("leaf", "error") else f"{rec['kind']}:{rec['mode']}"


def analyse(records: Iterable[dict[str, Any]], final_reads: Iterable[Op] = (), budget: int = 300_000,
            restarts: dict[str, list[float]] | None = None) -> HistoryReport:
    """Check a whole history; `final_reads` are the `?consistent` reads taken after healing
    (they make a lost acknowledged write visible to the linearizability check);
    `restarts` (server -> times it was started again) excuse a server's reads going back."""
    rep = HistoryReport()
    writes: list[Op] = []
    conditional: list[Op] = []
    strong: list[Op] = []
    default: list[Op] = []
    stale: list[Op] = []
    where: dict[int, dict[str, Any]] = {}
    per_server: list[tuple[str, Op]] = []  # ?stale reads straight from a server that knows a leader
    for rec in records:
        rep.counts[(_label(rec), rec.get("outcome", "-"))] += 1
        if rec["kind"] == "error":
            rep.anomalies.append(Anomaly("workload", f"workload raised in {rec['op']}: {rec['error']}"))
            continue
        if rec["kind"] == "leaf":
            if rec["outcome"] == "ok" and not rec.get("valid"):
                rep.anomalies.append(Anomaly("leaf", f"leaf for {rec['key']} from {rec['target']} is not a "
                                                     f"certificate for that service"))
            continue
        op = to_op(rec)
        where[id(op)] = rec
        if op.kind == "write":
            writes.append(op)
        elif op.kind in ("cas", "cas_fail"):
            conditional.append(op)
        elif rec["mode"] == "consistent":
            strong.append(op)
        elif rec["mode"] in ("default", "block"):
            default.append(op)
        elif rec["mode"] == "stale":
            stale.append(op)
            if rec.get("known_leader") and rec["target"] in (restarts or {}):
                per_server.append((rec["target"], op))
    rep.outages = outages(records)
    strong.extend(final_reads)
    by_key: dict[Any, list[Op]] = {}
    for op in writes + conditional + strong:
        by_key.setdefault(op.key, []).append(op)
    rep.keys = sorted(by_key)
    for key, ops in sorted(by_key.items()):
        v = check_key(ops, None, budget)
        rep.explored += v.explored
        if not v.ok and "budget" in v.reason:
            rep.undecided.append(f"{key}: {len(ops)} ops, {v.reason}")
        elif not v.ok:
            rep.anomalies.append(Anomaly("linearizability", f"key {key}: {v.reason}\n" + _dump(ops)))
    for bad in check_reads(writes, default, LEASE):
        rep.anomalies.append(Anomaly("default-read", f"key {bad.read.key} {_who(where.get(id(bad.read)))}: {bad.reason}"))
    for bad in check_reads(writes, stale, math.inf):
        rep.anomalies.append(Anomaly("stale-read", f"key {bad.read.key} {_who(where.get(id(bad.read)))}: {bad.reason}"))
    for bad in check_monotonic(writes, per_server, restarts):
        rep.anomalies.append(Anomaly("stale-read", f"key {bad.read.key} {_who(where.get(id(bad.read)))}: "
                                                   f"went back in time: {bad.reason}"))
    return rep


def outages(records: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Per agent, the longest time from the first failed operation after a success to
    the next success: how long it was unusable through its HTTP API."""
    by_target: dict[str, list[tuple[float, float, bool]]] = {}
    for r in records:
        if "target" in r:
            by_target.setdefault(r["target"], []).append((r["invoked"], r["completed"], r["outcome"] == "ok"))
    out: dict[str, float] = {}
    for target, ops in by_target.items():
        ops.sort()
        longest, down_since = 0.0, None
        for invoked, completed, ok in ops:
            if ok:
                if down_since is not None:
                    longest = max(longest, completed - down_since)
                down_since = None
            elif down_since is None:
                down_since = invoked
        if down_since is not None:
            longest = max(longest, ops[-1][1] - down_since)
        out[target] = longest
    return out


def _who(rec: dict[str, Any] | None) -> str:
    if rec is None:
        return ""
    return (f"({rec['mode']} read from {rec['target']}, X-Consul-Index {rec.get('index')}, "
            f"KnownLeader {rec.get('known_leader')})")


def _dump(ops: list[Op], limit: int = 40) -> str:
    lines = [f"    {o.kind:5} {o.value!r:>12} [{o.invoked:.3f}, {o.completed:.3f}] {o.outcome}"
             for o in sorted(ops, key=lambda o: o.invoked)[:limit]]
    return "\n".join(lines)
