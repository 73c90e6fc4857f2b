"""A linearizability checker for per-key register histories (Wing & Gong, memoized).

A history is what clients saw: each operation with its invocation and completion time
and its outcome. Writes that timed out are `unknown`: they may have taken effect at any
moment after their invocation, or never. The checker searches for one total order of
the operations that (a) respects real time (an operation that completed before another
was invoked comes first), (b) contains every `ok` operation and any subset of the
`unknown` ones, and (c) is legal for a register: each read returns the last value
written before it (None before any write; a delete writes None), each `cas` finds one
of the values it expected and leaves its new one, and each `cas_fail` (a conditional
write that answered false) finds none of the values it expected.

Keys are independent (linearizability is compositional), so each key is checked on its
own. The search memoizes (set of operations placed, register value): the same frontier
reached by two orders is explored once, which keeps histories of a few hundred
operations per key cheap unless they are wildly concurrent.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Op", "Verdict", "check", "check_key"]

OK, UNKNOWN, FAILED = "ok", "unknown", "failed"


@dataclass(frozen=True)
class Op:
    """One client operation. `kind` is "write" (value = what was written; None deletes),
    "read" (value = what was returned), "cas" (value = (expected values, new value)) or
    "cas_fail" (value = the expected values it did not find); `outcome` ok, unknown
    (timed out: completion is treated as infinitely late) or failed (definitely not
    applied: ignored)."""

    key: Hashable
    kind: str
    value: Any
    invoked: float
    completed: float
    outcome: str = OK
    process: Hashable = None

    @property
    def end(self) -> float:
        return math.inf if self.outcome == UNKNOWN else self.completed


@dataclass
class Verdict:
    ok: bool
    key: Hashable = None
    reason: str = ""
    explored: int = 0
    per_key: dict[Hashable, int] = field(default_factory=dict)


def check(history: Iterable[Op], initial: Any = None, budget: int = 2_000_000) -> Verdict:
    by_key: dict[Hashable, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    verdict = Verdict(ok=True)
    for key, ops in by_key.items():
        v = check_key(ops, initial, budget)
        verdict.explored += v.explored
        verdict.per_key[key] = v.explored
        if not v.ok:
            v.key = key
            v.per_key = verdict.per_key
            return v
    return verdict


def check_key(ops: list[Op], initial: Any = None, budget: int = 2_000_000) -> Verdict:
    """Is this one register's history linearizable?"""
    live = [op for op in ops if op.outcome != FAILED]
    # unknown reads tell nothing: they may have returned anything
    live = [op for op in live if not (op.kind in ("read", "cas_fail") and op.outcome == UNKNOWN)]
    live.sort(key=lambda op: (op.invoked, op.end))
    n = len(live)
    if n == 0:
        return Verdict(ok=True)
    required = 0
    for i, op in enumerate(live):
        if op.outcome == OK:
            required |= 1 << i
    seen: set[tuple[int, Any]] = set()
    explored = 0
    stack: list[tuple[int, Any]] = [(0, initial)]
    while stack:
        placed, value = stack.pop()
        if placed & required == required:
            return Verdict(ok=True, explored=explored)
        if (placed, value) in seen:
            continue
        seen.add((placed, value))
        explored += 1
        if explored > budget:
            return Verdict(ok=False, reason=f"search budget of {budget} states exhausted (undecided)",
                           explored=explored)
        # the earliest completion among operations not yet placed bounds what may go next
        horizon = math.inf
        for i in range(n):
            if not placed >> i & 1 and live[i].outcome == OK:
                horizon = min(horizon, live[i].end)
        for i in range(n):
            if placed >> i & 1:
                continue
            op = live[i]
            if op.invoked > horizon:
                break  # sorted by invocation: nothing later may be placed before the horizon op
            if op.kind == "write":
                stack.append((placed | 1 << i, _freeze(op.value)))
            elif op.kind == "cas":
                expected, new = op.value
                if value in {_freeze(v) for v in expected}:
                    stack.append((placed | 1 << i, _freeze(new)))
            elif op.kind == "cas_fail":
                if value not in {_freeze(v) for v in op.value}:
                    stack.append((placed | 1 << i, value))
            elif _freeze(op.value) == value:
                stack.append((placed | 1 << i, value))
    first_ok = [op for op in live if op.outcome == OK]
    return Verdict(ok=False, explored=explored,
                   reason=f"no legal order for {len(first_ok)} acknowledged operations; "
                          f"first: {first_ok[0]}")


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
