"""Reads that may be stale, checked against what they promise.

Linearizability (linearizability.py) is the promise of `?consistent` reads only.
Consul's default reads come from a server that believes it leads (or knows a leader)
and may lag by up to the leader lease around a change of leadership; `?stale` reads
may lag without bound but must never invent a value. Both are one rule with a
different allowance:

A read r returning v is acceptable when some *source* of v (a write of v that was
invoked before r completed and did not definitely fail, or the initial state) has not
been definitely overwritten more than `lease` seconds before r was invoked. "Definitely
overwritten" means an acknowledged write of another value that was invoked after the
source completed and completed before `r.invoked - lease`. With lease = 0 this is a
necessary (not sufficient) condition of linearizability; with lease = inf it only says
"no invented values". Unknown-outcome writes count as sources (they may have applied)
but never as overwrites (they may not have).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from .linearizability import FAILED, OK, Op, _freeze

__all__ = ["StaleRead", "check_reads", "check_monotonic"]


@dataclass(frozen=True)
class StaleRead:
    read: Op
    reason: str


def check_reads(writes: Iterable[Op], reads: Iterable[Op], lease: float, initial: Any = None) -> list[StaleRead]:
    """Every ok read in `reads` that breaks the rule above, with the reason."""
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for w in writes:
        if w.kind == "write" and w.outcome != FAILED:
            by_key[w.key].append(w)
    bad: list[StaleRead] = []
    for r in reads:
        if r.kind != "read" or r.outcome != OK:
            continue
        problem = _judge(r, by_key.get(r.key, []), lease, initial)
        if problem:
            bad.append(StaleRead(r, problem))
    return bad


def _judge(r: Op, writes: list[Op], lease: float, initial: Any) -> str:
    v = _freeze(r.value)
    # (invoked, end) of each possible source of v; the initial state ends at -inf
    sources = [(w.invoked, w.end) for w in writes if _freeze(w.value) == v and w.invoked <= r.completed]
    if v == _freeze(initial):
        sources.append((-math.inf, -math.inf))
    if not sources:
        return f"read returned {r.value!r}, which no write had begun to write by the time the read completed"
    cutoff = r.invoked - lease
    overwrites = [w for w in writes if w.outcome == OK and _freeze(w.value) != v and w.completed < cutoff]
    for _, source_end in sources:
        if not any(w.invoked > source_end for w in overwrites):
            return ""
    newest = max(overwrites, key=lambda w: w.completed)
    return (f"read returned {r.value!r}, overwritten by {newest.value!r} (acknowledged at "
            f"{newest.completed:.3f}) more than {lease:g}s before the read began ({r.invoked:.3f})")


def check_monotonic(writes: Iterable[Op], reads: Iterable[tuple[Hashable, Op]],
                    restarts: dict[Hashable, list[float]] | None = None) -> list[StaleRead]:
    """Reads from one server never go back in time: after a server returned v2 for a key,
    a later read from it (invoked after the first completed, no restart of the server in
    between) must not return v1 when v1's write definitely came before v2's (v1's write
    was acknowledged before v2's began; a write that timed out may have landed later). `reads` are (server, op) pairs. Only values with one
    write are judged (unique values; None and repeated values are skipped)."""
    sources: dict[tuple[Hashable, Any], list[Op]] = defaultdict(list)
    for w in writes:
        if w.kind == "write" and w.outcome != FAILED:
            sources[(w.key, _freeze(w.value))].append(w)
    restarts = restarts or {}
    by_server_key: dict[tuple[Hashable, Hashable], list[Op]] = defaultdict(list)
    for server, r in reads:
        if r.kind == "read" and r.outcome == OK and r.value is not None:
            by_server_key[(server, r.key)].append(r)
    bad: list[StaleRead] = []
    for (server, _key), ops in by_server_key.items():
        newest: Op | None = None  # the read whose write is the latest seen so far
        for r in sorted(ops, key=lambda o: o.invoked):
            w_r = _only(sources.get((r.key, _freeze(r.value)), []))
            if w_r is None:
                continue
            if newest is not None and newest.completed < r.invoked and not _restarted(
                    restarts.get(server, []), newest.completed, r.invoked):
                w_n = _only(sources[(newest.key, _freeze(newest.value))])
                assert w_n is not None
                if w_r.end < w_n.invoked:  # an unknown-outcome write may land any time later
                    bad.append(StaleRead(r, f"server {server} returned {r.value!r} after it had returned "
                                            f"the newer {newest.value!r} (read completed {newest.completed:.3f})"))
                    continue
            if newest is None or newest.completed >= r.invoked or _later(w_r, sources, newest):
                newest = r
    return bad


def _only(ops: list[Op]) -> Op | None:
    return ops[0] if len(ops) == 1 else None


def _later(w: Op, sources: dict[tuple[Hashable, Any], list[Op]], read: Op) -> bool:
    other = _only(sources.get((read.key, _freeze(read.value)), []))
    return other is None or w.invoked > other.completed


def _restarted(times: list[float], start: float, end: float) -> bool:
    return any(start <= t <= end for t in times)
