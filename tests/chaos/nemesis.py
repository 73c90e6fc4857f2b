"""The nemesis: faults in a seeded random order within a time budget, each healed.

One fault at a time, held for a few seconds (longer than the election timeout of
0.4-1.4 s, so leadership does change), then healed, then a quiet gap so the cluster
can recover before the next blow. Everything random comes from one `random.Random`
seeded by the run, so `SEED=...` replays the same schedule (timings of the cluster
itself still vary).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .agents import AgentProc
from .cluster import ChaosCluster

__all__ = ["Fault", "Nemesis", "KINDS"]

KINDS = ["isolate_leader", "split", "one_way", "kill_server", "kill_client", "pause_server"]


@dataclass
class Fault:
    kind: str
    detail: str
    start: float
    end: float = 0.0


@dataclass
class Nemesis:
    cluster: ChaosCluster
    rng: random.Random
    hold: tuple[float, float] = (3.0, 7.0)
    quiet: tuple[float, float] = (1.5, 3.5)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    log: Callable[[str], None] = lambda _msg: None

    def run(self, deadline: float) -> None:
        """Faults until less than one hold and gap is left before deadline; healed at return."""
        try:
            while True:
                kinds = KINDS[:]
                self.rng.shuffle(kinds)
                for kind in kinds:
                    if time.monotonic() + self.hold[1] + self.quiet[0] > deadline:
                        return
                    self._one(kind)
        finally:
            self.heal()

    def _one(self, kind: str) -> None:
        detail = getattr(self, kind)()
        start = time.monotonic()  # in force from here (finding the leader took a moment)
        fault = Fault(kind, detail, start)
        self.faults.append(fault)
        self.log(f"[{start:.1f}] fault {kind}: {detail}")
        time.sleep(self.rng.uniform(*self.hold))
        self.heal()
        fault.end = time.monotonic()
        self.log(f"[{fault.end:.1f}] healed {kind}")
        self._note_deaths()
        time.sleep(self.rng.uniform(*self.quiet))

    # the faults ------------------------------------------------------------------------
    def _leader_or_random(self) -> AgentProc:
        try:
            leader = self.cluster.leader()
        except Exception:  # noqa: BLE001 - no answer: pick at random
            leader = None
        return leader or self.rng.choice(self.cluster.servers)

    def _route_kind(self) -> str:
        return self.rng.choice(["blackhole", "blackhole", "prohibit"])

    def isolate_leader(self) -> str:
        victim = self._leader_or_random()
        others = [a.host for a in self.cluster.servers + self.cluster.clients if a is not victim]
        kind = self._route_kind()
        self.cluster.net.cut([victim.host], others, kind)
        return f"{victim.name} cut from every other host ({kind})"

    def split(self) -> str:
        servers = self.cluster.servers[:]
        self.rng.shuffle(servers)
        minority = servers[: len(servers) // 2]
        majority = servers[len(servers) // 2:]
        side_a = [s.host for s in minority]
        side_b = [s.host for s in majority]
        placed = []
        for c in self.cluster.clients:
            side = self.rng.choice(["min", "maj"])
            (side_a if side == "min" else side_b).append(c.host)
            placed.append(f"{c.name}->{side}")
        kind = self._route_kind()
        self.cluster.net.cut(side_a, side_b, kind)
        return (f"minority {[s.name for s in minority]} | majority {[s.name for s in majority]}; "
                f"{', '.join(placed)} ({kind})")

    def one_way(self) -> str:
        leader = self._leader_or_random()
        other = self.rng.choice([s for s in self.cluster.servers if s is not leader])
        src, dst = (leader, other) if self.rng.random() < 0.5 else (other, leader)
        kind = self._route_kind()
        self.cluster.net.block(src.host, dst.host, kind)
        return f"{src.name} -> {dst.name} dropped, the other way open ({kind})"

    def kill_server(self) -> str:
        victim = self._leader_or_random() if self.rng.random() < 0.5 else self.rng.choice(self.cluster.servers)
        victim.kill()
        return f"SIGKILL {victim.name} (restarted on the same data-dir at heal)"

    def kill_client(self) -> str:
        victim = self.rng.choice(self.cluster.clients)
        victim.kill()
        return f"SIGKILL client {victim.name} (restarted at heal)"

    def pause_server(self) -> str:
        victim = self._leader_or_random() if self.rng.random() < 0.5 else self.rng.choice(self.cluster.servers)
        victim.pause()
        return f"SIGSTOP {victim.name} (SIGCONT at heal)"

    # healing ------------------------------------------------------------------------
    def heal(self) -> None:
        self.cluster.net.heal()
        for a in self.cluster.servers + self.cluster.clients:
            if a.paused:
                a.resume()
            elif a.killed and not a.alive():
                a.start()

    def _note_deaths(self) -> None:
        for a in self.cluster.servers + self.cluster.clients:
            if a.died_unexpectedly():
                self.notes.append(f"{a.name} (pid {a.proc.pid if a.proc else '?'}) exited by itself "
                                  f"with code {a.exit_code()}")
                a.killed = True  # noted once; restarted at the next heal
                a.start()

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for f in self.faults:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return counts
