"""The workload, run inside the observer namespace: `python -m tests.chaos.workload CFG`.

Why a separate process: only a process inside a namespace on the bridge can reach the
hosts, and the root namespace must get no address. It writes one JSON line per finished
operation (invocation and completion on CLOCK_MONOTONIC, which every process of the
machine shares, so the nemesis's timeline lines up with it) and stops at its deadline.

Keys are rotated by generation so that each register's history stays short enough for
the linearizability search. Catalog writes carry unique values (writer and counter);
intention writes only allow/deny, which the checker handles as a plain register.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from .httpc import Reply, call

__all__ = ["main", "KEYS_PER_GEN", "catalog_key", "intention_key"]

KEYS_PER_GEN = 10
INTENTIONS_PER_GEN = 2
WEIGHTS = {
    "write": 26, "delete": 4, "read_consistent": 20, "read_default": 16, "read_stale": 10,
    "block": 6, "intention_write": 6, "intention_read": 6, "leaf": 6,
}


def catalog_key(gen: int, j: int) -> str:
    return f"chaos-k{gen}-{j}"


def intention_key(gen: int, j: int) -> str:
    return f"chaos-dst{gen}-{j}"


def classify(reply: Reply, read: bool = False) -> str:
    """ok, failed (a definite refusal that changed nothing) or unknown (may have applied)."""
    if 200 <= reply.status < 300:
        return "ok"
    if 400 <= reply.status < 500:
        return "failed"
    if read:
        return "failed"  # an unanswered read tells nothing either way
    if reply.status == 0 and reply.error == "refused":
        return "failed"  # nothing was sent: the connection was never accepted
    return "unknown"


class Worker:
    def __init__(self, wid: int, cfg: dict[str, Any], out: Any, lock: threading.Lock) -> None:
        self.wid = wid
        self.cfg = cfg
        self.rng = random.Random(cfg["seed"] * 1000 + wid)
        self.out = out
        self.lock = lock
        self.counter = 0
        self.last_index: dict[str, int] = {}
        agents = {**cfg["servers"], **cfg["clients"]}
        name = sorted(agents)[wid % len(agents)]
        self.home = (name, agents[name])
        self.is_client = name in cfg["clients"]

    def gen(self) -> int:
        return int((time.monotonic() - self.cfg["t0"]) // self.cfg["gen_seconds"])

    def emit(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec)
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()
        if rec.get("status") == 0 and rec.get("outcome") != "ok":
            time.sleep(0.25)  # a dead agent refuses at once: do not spin on it

    def run(self, deadline: float) -> None:
        kinds = list(WEIGHTS)
        weights = [WEIGHTS[k] for k in kinds]
        while time.monotonic() < deadline:
            kind = self.rng.choices(kinds, weights)[0]
            if kind == "leaf" and not self.is_client:
                kind = "read_stale"
            try:
                getattr(self, "op_" + kind)()
            except Exception as exc:  # noqa: BLE001 - a workload bug must not end the run silently
                self.emit({"kind": "error", "op": kind, "error": repr(exc), "t": time.monotonic()})

    def target(self) -> tuple[str, str]:
        """This worker's own agent: each worker sticks to one, so an agent that hangs
        (paused, cut off) stalls only its own workers and the others keep the history
        going on both sides of a cut."""
        return self.home

    def timed(self, method: str, addr: str, path: str, body: Any = None, timeout: float | None = None) -> tuple[Reply, float, float]:
        t0 = time.monotonic()
        reply = call(method, addr, path, body, timeout or self.cfg["timeout"])
        return reply, t0, time.monotonic()

    def record(self, kind: str, mode: str, key: str, value: Any, target: str, reply: Reply,
               t0: float, t1: float, outcome: str, **extra: Any) -> None:
        self.emit({"kind": kind, "mode": mode, "key": key, "value": value, "target": target,
                   "invoked": t0, "completed": t1, "outcome": outcome, "status": reply.status,
                   "error": reply.error or (str(reply.body)[:120] if reply.status >= 400 else ""),
                   "index": reply.index, "known_leader": reply.known_leader, "process": self.wid, **extra})

    # catalog register as a register per node name ------------------------------------
    def op_write(self) -> None:
        name, addr = self.target()
        key = catalog_key(self.gen(), self.rng.randrange(KEYS_PER_GEN))
        self.counter += 1
        value = f"w{self.wid}-{self.counter}"
        body = {"Node": key, "Address": "192.0.2.1", "NodeMeta": {"chaos": value}}
        reply, t0, t1 = self.timed("PUT", addr, "/v1/catalog/register", body)
        self.record("write", "register", key, value, name, reply, t0, t1, classify(reply))

    def op_delete(self) -> None:
        name, addr = self.target()
        key = catalog_key(self.gen(), self.rng.randrange(KEYS_PER_GEN))
        reply, t0, t1 = self.timed("PUT", addr, "/v1/catalog/deregister", {"Node": key})
        self.record("write", "deregister", key, None, name, reply, t0, t1, classify(reply))

    def _read(self, mode: str, query: str, timeout: float | None = None) -> None:
        name, addr = self.target()
        key = catalog_key(self.gen(), self.rng.randrange(KEYS_PER_GEN))
        reply, t0, t1 = self.timed("GET", addr, f"/v1/catalog/node/{key}{query}", timeout=timeout)
        value = node_value(reply.body) if reply.status == 200 else None
        if reply.status == 200:
            self.last_index[name] = max(self.last_index.get(name, 0), reply.index)
        self.record("read", mode, key, value, name, reply, t0, t1, classify(reply, read=True))

    def op_read_consistent(self) -> None:
        self._read("consistent", "?consistent")

    def op_read_default(self) -> None:
        self._read("default", "")

    def op_read_stale(self) -> None:
        self._read("stale", "?stale")

    def op_block(self) -> None:
        name, addr = self.target()
        key = catalog_key(self.gen(), self.rng.randrange(KEYS_PER_GEN))
        index = self.last_index.get(name, 1)
        wait = self.cfg["block_wait"]
        reply, t0, t1 = self.timed("GET", addr, f"/v1/catalog/node/{key}?index={index}&wait={wait}s",
                                   timeout=wait + self.cfg["timeout"] + 2)
        value = node_value(reply.body) if reply.status == 200 else None
        if reply.status == 200:
            self.last_index[name] = max(self.last_index.get(name, 0), reply.index)
        self.record("read", "block", key, value, name, reply, t0, t1, classify(reply, read=True),
                    min_index=index, wait=wait)

    # intentions as a register per destination ----------------------------------------
    def op_intention_write(self) -> None:
        name, addr = self.target()
        dst = intention_key(self.gen(), self.rng.randrange(INTENTIONS_PER_GEN))
        action = self.rng.choice(["allow", "deny"])
        reply, t0, t1 = self.timed("PUT", addr, f"/v1/connect/intentions/exact?source=chaos-src&destination={quote(dst)}",
                                   {"Action": action})
        self.record("write", "intention", "ixn:" + dst, action, name, reply, t0, t1, classify(reply))

    def op_intention_read(self) -> None:
        name, addr = self.target()
        dst = intention_key(self.gen(), self.rng.randrange(INTENTIONS_PER_GEN))
        reply, t0, t1 = self.timed("GET", addr, f"/v1/connect/intentions/exact?source=chaos-src&destination={quote(dst)}&consistent")
        if reply.status == 404 and "not found" in str(reply.body).lower():
            outcome, value = "ok", None
        else:
            outcome = classify(reply, read=True)
            value = reply.body.get("Action") if outcome == "ok" and isinstance(reply.body, dict) else None
        self.record("read", "consistent", "ixn:" + dst, value, name, reply, t0, t1, outcome)

    # leaf certificates from a client agent for a service registered there ------------
    def op_leaf(self) -> None:
        name, addr = self.target()
        service = f"chaos-web-{name}"
        reply, t0, t1 = self.timed("GET", addr, f"/v1/agent/connect/ca/leaf/{service}")
        outcome = classify(reply, read=True)
        valid = None
        if outcome == "ok":
            body = reply.body if isinstance(reply.body, dict) else {}
            valid = bool(body.get("CertPEM")) and service in str(body.get("ServiceURI", body.get("Service", "")))
        self.record("leaf", "leaf", service, None, name, reply, t0, t1, outcome, valid=valid)


def node_value(body: Any) -> Any:
    """The register value in a /v1/catalog/node answer: Meta["chaos"], None when absent."""
    if not isinstance(body, dict) or not isinstance(body.get("Node"), dict):
        return None
    meta = body["Node"].get("Meta") or {}
    return meta.get("chaos")


def main(argv: list[str]) -> int:
    with open(argv[0]) as f:
        cfg = json.load(f)
    deadline = cfg["t0"] + cfg["seconds"]
    lock = threading.Lock()
    with open(cfg["out"], "a") as out:
        n = cfg["workers_per_agent"] * (len(cfg["servers"]) + len(cfg["clients"]))
        workers = [Worker(i, cfg, out, lock) for i in range(n)]
        threads = [threading.Thread(target=w.run, args=(deadline,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
