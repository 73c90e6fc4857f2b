"""The workload, run inside the observer namespace: `python -m tests.chaos.workload CFG`.

Why a separate process: only a process inside a namespace on the bridge can reach the
hosts, and the root namespace must get no address. It writes one JSON line per finished
operation (invocation and completion on CLOCK_MONOTONIC, which every process of the
machine shares, so the nemesis's timeline lines up with it) and stops at its deadline.

Keys are rotated by generation so that each register's history stays short enough for
the linearizability search. Catalog writes carry unique values (writer and counter);
intention writes only allow/deny, which the checker handles as a plain register.

KV keys are registers too: plain puts, `?consistent` reads, and compare-and-set by
ModifyIndex (the checker's `cas`: it applies only if the register still holds the value
read; a `false` is a `cas_fail`: it held something else). Lock keys are registers whose
value is the holder: each worker has one session (no checks, no TTL, no lock delay, so
nothing but the workload changes a holder), an acquire is a `cas` from {nobody, me} to
me, a release one from me to nobody, and a refusal says another session held it; so
two holders at once would show as a history with no legal order.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

from .httpc import Reply, call

__all__ = ["main", "KEYS_PER_GEN", "catalog_key", "intention_key", "kv_key", "lock_key"]

KEYS_PER_GEN = 10
INTENTIONS_PER_GEN = 2
WEIGHTS = {
    "write": 26, "delete": 4, "read_consistent": 20, "read_default": 16, "read_stale": 10,
    "block": 6, "intention_write": 6, "intention_read": 6, "leaf": 6,
    "kv_write": 8, "kv_read": 8, "kv_cas": 8, "lock_acquire": 6, "lock_release": 5, "lock_read": 5,
}
KV_KEYS_PER_GEN = 4
LOCKS_PER_GEN = 2


def catalog_key(gen: int, j: int) -> str:
    return f"chaos-k{gen}-{j}"


def intention_key(gen: int, j: int) -> str:
    return f"chaos-dst{gen}-{j}"


def kv_key(gen: int, j: int) -> str:
    return f"kv:chaos/k{gen}-{j}"


def lock_key(gen: int, j: int) -> str:
    return f"kv:chaos/lock{gen}-{j}"


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
        self.session = ""

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


    # KV registers, compare-and-set, and locks ----------------------------------------
    def op_kv_write(self) -> None:
        name, addr = self.target()
        key = kv_key(self.gen(), self.rng.randrange(KV_KEYS_PER_GEN))
        self.counter += 1
        value = f"w{self.wid}-{self.counter}"
        reply, t0, t1 = self.timed("PUT", addr, "/v1/kv/" + key[3:], value)
        self.record("write", "kv", key, value, name, reply, t0, t1, classify(reply))

    def _kv_read(self, key: str) -> None:
        name, addr = self.target()
        reply, t0, t1 = self.timed("GET", addr, "/v1/kv/" + key[3:] + "?consistent")
        outcome = "ok" if reply.status == 404 else classify(reply, read=True)
        value = kv_value(key, reply) if outcome == "ok" else None
        self.record("read", "consistent", key, value, name, reply, t0, t1, outcome)

    def op_kv_read(self) -> None:
        self._kv_read(kv_key(self.gen(), self.rng.randrange(KV_KEYS_PER_GEN)))

    def op_lock_read(self) -> None:
        self._kv_read(lock_key(self.gen(), self.rng.randrange(LOCKS_PER_GEN)))

    def op_kv_cas(self) -> None:
        """Read the key, then write it only if it is still at the index read."""
        name, addr = self.target()
        key = kv_key(self.gen(), self.rng.randrange(KV_KEYS_PER_GEN))
        seen = call("GET", addr, "/v1/kv/" + key[3:] + "?consistent", timeout=self.cfg["timeout"])
        if seen.status not in (200, 404):
            return
        expect = kv_value(key, seen)
        index = seen.body[0]["ModifyIndex"] if seen.status == 200 else 0
        self.counter += 1
        value = f"c{self.wid}-{self.counter}"
        reply, t0, t1 = self.timed("PUT", addr, f"/v1/kv/{key[3:]}?cas={index}", value)
        self._conditional(key, [expect], value, name, reply, t0, t1)

    def _conditional(self, key: str, expect: list[Any], new: Any, name: str, reply: Reply, t0: float,
                     t1: float) -> None:
        outcome = classify(reply)
        if outcome == "ok" and reply.body is False:
            self.record("cas_fail", "kv", key, {"expect": expect}, name, reply, t0, t1, "ok")
        else:
            self.record("cas", "kv", key, {"expect": expect, "new": new}, name, reply, t0, t1, outcome)

    def _ensure_session(self) -> bool:
        if self.session:
            return True
        name, addr = self.target()
        reply = call("PUT", addr, "/v1/session/create", {"Name": f"chaos-{self.wid}", "Checks": [],
                                                          "LockDelay": "0s"}, timeout=self.cfg["timeout"])
        if reply.status == 200 and isinstance(reply.body, dict):
            self.session = reply.body["ID"]
        return bool(self.session)

    def op_lock_acquire(self) -> None:
        if not self._ensure_session():
            return
        name, addr = self.target()
        key = lock_key(self.gen(), self.rng.randrange(LOCKS_PER_GEN))
        reply, t0, t1 = self.timed("PUT", addr, f"/v1/kv/{key[3:]}?acquire={self.session}", "held")
        self._conditional(key, [None, self.session], self.session, name, reply, t0, t1)

    def op_lock_release(self) -> None:
        if not self._ensure_session():
            return
        name, addr = self.target()
        key = lock_key(self.gen(), self.rng.randrange(LOCKS_PER_GEN))
        reply, t0, t1 = self.timed("PUT", addr, f"/v1/kv/{key[3:]}?release={self.session}", "free")
        self._conditional(key, [self.session], None, name, reply, t0, t1)


def kv_value(key: str, reply: Reply) -> Any:
    """A KV register's value in a /v1/kv answer: a lock key's holder, another key's
    value (the workload writes JSON strings); None when absent."""
    if reply.status != 200 or not isinstance(reply.body, list) or not reply.body:
        return None
    entry = reply.body[0]
    if "/lock" in key:
        return entry.get("Session") or None
    raw = entry.get("Value")
    return json.loads(base64.b64decode(raw)) if raw else None


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
