"""One-shot questions to the hosts, asked from the observer namespace.

`python -m tests.chaos.probe '<json request>'` prints one JSON answer. The root
namespace cannot reach the hosts, so the nemesis (who is the leader?) and the final
checks (what does each server hold?) ask through this. Every request has a short
deadline; the caller polls.
"""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .httpc import call
from .workload import kv_value, node_value

__all__ = ["answer"]


def leaders(req: dict[str, Any]) -> dict[str, Any]:
    """Each server's idea of the leader's RPC address ("" when none, None when it did not answer)."""
    def one(addr: str) -> Any:
        r = call("GET", addr, "/v1/status/leader", timeout=req.get("timeout", 2))
        return r.body if r.status == 200 else None
    with ThreadPoolExecutor(8) as pool:
        names = sorted(req["servers"])
        return dict(zip(names, pool.map(lambda n: one(req["servers"][n]), names), strict=True))


def state(req: dict[str, Any]) -> dict[str, Any]:
    """Per server: `?stale` values of the given keys and a hash of nodes + services."""
    def one(addr: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in req["keys"]:
            values[key] = _read_key(addr, key, "stale", 3)
        nodes = call("GET", addr, "/v1/catalog/nodes?stale", timeout=3)
        services = call("GET", addr, "/v1/catalog/services?stale", timeout=3)
        digest = None
        if nodes.status == 200 and services.status == 200:
            digest = hashlib.sha256(json.dumps([nodes.body, services.body], sort_keys=True).encode()).hexdigest()[:16]
        return {"values": values, "hash": digest, "index": nodes.index}
    with ThreadPoolExecutor(8) as pool:
        names = sorted(req["servers"])
        return dict(zip(names, pool.map(lambda n: one(req["servers"][n]), names), strict=True))


def consistent(req: dict[str, Any]) -> dict[str, Any]:
    """`?consistent` values of the keys, read through one agent; errors as {"error": ...}."""
    out: dict[str, Any] = {}
    addr = req["addr"]
    for key in req["keys"]:
        out[key] = _read_key(addr, key, "consistent", 5)
    return out


def _read_key(addr: str, key: str, mode: str, timeout: float) -> Any:
    """One workload key read with `?<mode>`: an intention's action or a node's value;
    None when absent, {"error": ...} when the read failed."""
    if key.startswith("ixn:"):
        r = call("GET", addr, f"/v1/connect/intentions/exact?source=chaos-src&destination={key[4:]}&{mode}",
                 timeout=timeout)
        if r.status == 200 and isinstance(r.body, dict):
            return r.body.get("Action")
        return None if r.status == 404 else {"error": r.status or r.error}
    if key.startswith("kv:"):
        r = call("GET", addr, f"/v1/kv/{key[3:]}?{mode}", timeout=timeout)
        return kv_value(key, r) if r.status in (200, 404) else {"error": r.status or r.error}
    r = call("GET", addr, f"/v1/catalog/node/{key}?{mode}", timeout=timeout)
    return node_value(r.body) if r.status == 200 else {"error": r.status or r.error}


def clients(req: dict[str, Any]) -> dict[str, Any]:
    """Per client: the server names it lists alive in /v1/agent/members, and whether a
    read that needs a server (/v1/catalog/nodes) answers."""
    def one(addr: str) -> dict[str, Any]:
        m = call("GET", addr, "/v1/agent/members", timeout=3)
        alive = sorted(x["Name"] for x in m.body if x.get("Status") == 1 and (x.get("Tags") or {}).get("role") == "consul") \
            if m.status == 200 and isinstance(m.body, list) else None
        n = call("GET", addr, "/v1/catalog/nodes", timeout=6)
        return {"servers_alive": alive, "read_status": n.status or n.error}
    with ThreadPoolExecutor(4) as pool:
        names = sorted(req["clients"])
        return dict(zip(names, pool.map(lambda n: one(req["clients"][n]), names), strict=True))


def request(req: dict[str, Any]) -> dict[str, Any]:
    """A raw request: {"method", "addr", "path", "body"} -> {"status", "body", "error"}."""
    r = call(req["method"], req["addr"], req["path"], req.get("body"), timeout=req.get("timeout", 5))
    return {"status": r.status, "body": r.body, "error": r.error}


HANDLERS = {"leaders": leaders, "state": state, "consistent": consistent, "clients": clients, "request": request}


def answer(req: dict[str, Any]) -> dict[str, Any]:
    return HANDLERS[req["op"]](req)


if __name__ == "__main__":
    print(json.dumps(answer(json.loads(sys.argv[1]))))
