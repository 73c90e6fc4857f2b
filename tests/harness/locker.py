"""A lock contender as an HA tool runs one, for the cluster tests: one process, one
session (renewed every TTL/2), Consul's acquire loop on one key, and a JSON line per
event in --out (`acquired`, `lost`, `session`), with wall times.

    python -m tests.harness.locker --http 127.0.0.1:8500 --key svc/leader --ttl 3s \
        --lock-delay 2s --out events.jsonl

It never exits on its own; the test kills it by PID. Every request has a timeout, and
errors (a dead agent, no leader) are retried, as a real contender would.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any


class Locker:
    def __init__(self, http: str, key: str, ttl: float, lock_delay: str, out: str) -> None:
        self.base = f"http://{http}"
        self.key, self.ttl, self.lock_delay, self.out = key, ttl, lock_delay, out
        self.session = ""
        self.renewed = 0.0
        self.held = False

    def record(self, event: str, **extra: Any) -> None:
        with open(self.out, "a") as f:
            f.write(json.dumps({"t": time.time(), "event": event, "session": self.session, **extra}) + "\n")

    def call(self, method: str, path: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, Any, dict]:
        req = urllib.request.Request(self.base + path, data=body, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, json.loads(raw) if raw else None, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode("utf-8", "replace"), dict(exc.headers)

    def ensure_session(self) -> None:
        now = time.monotonic()
        if self.session and now - self.renewed < self.ttl / 2:
            return
        if self.session:
            status, _, _ = self.call("PUT", f"/v1/session/renew/{self.session}")
            if status == 200:
                self.renewed = now
                return
            if status != 404:
                return  # no leader for now: try again soon, the session may well live
            if self.held:
                self.record("lost", why="session gone")
            self.held = False
            self.session = ""
        body = json.dumps({"TTL": f"{self.ttl}s", "LockDelay": self.lock_delay, "Name": "locker"}).encode()
        status, reply, _ = self.call("PUT", "/v1/session/create", body)
        if status == 200:
            self.session, self.renewed = reply["ID"], now
            self.record("session")

    def step(self, index: int) -> int:
        """One blocking look at the key (at most TTL/2), then act: acquire if free,
        notice a loss if held."""
        wait = max(0.1, self.ttl / 2 - (time.monotonic() - self.renewed))
        status, reply, headers = self.call("GET", f"/v1/kv/{self.key}?index={index}&wait={wait:.3f}s",
                                           timeout=wait + 5)
        if status not in (200, 404):
            time.sleep(0.1)
            return index
        new_index = int(headers.get("X-Consul-Index", "1"))
        holder = reply[0].get("Session", "") if status == 200 else ""
        if self.held and holder != self.session:
            self.held = False
            self.record("lost", why=f"held by {holder!r}")
        if not holder and self.session:
            ok_status, ok, _ = self.call("PUT", f"/v1/kv/{self.key}?acquire={self.session}", self.session.encode())
            if ok_status == 200 and ok is True:
                self.held = True
                self.record("acquired")
                return 0
            time.sleep(0.1)  # refused (lock delay, or taken meanwhile): look again shortly
            return 0
        return new_index if new_index >= index else 0

    def run(self) -> None:
        index = 0
        while True:
            try:
                self.ensure_session()
                index = self.step(index)
            except (OSError, ValueError) as exc:  # agent down, reset, timeout: keep trying
                self.record("error", error=type(exc).__name__)
                time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ttl", default="3s")
    parser.add_argument("--lock-delay", default="2s")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Locker(args.http, args.key, float(args.ttl.rstrip("s")), args.lock_delay, args.out).run()


if __name__ == "__main__":
    main()
