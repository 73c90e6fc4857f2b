"""The read side of the backend contract: how a read asks and what it gets back.

Both backends take a ReadOptions and return a ReadResult, whether the read runs in
this process (a server's LocalBackend) or on a server over RPC (a client's
RemoteBackend), so the HTTP handlers, DNS view and caches never import the server.
The wire form (`to_wire`/`from_wire`) is the `o` argument of the `Read` RPC.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["ReadOptions", "ReadResult"]


@dataclass(frozen=True)
class ReadOptions:
    """Consul's query options: `min_index`/`wait` block, `stale` reads any server,
    `consistent` goes through a barrier on the leader."""

    min_index: int = 0
    wait: float = 300.0
    stale: bool = False
    consistent: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"i": self.min_index, "w": self.wait, "s": self.stale, "c": self.consistent}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> ReadOptions:
        return cls(int(d.get("i", 0)), float(d.get("w", 300.0)), bool(d.get("s")), bool(d.get("c")))


@dataclass(frozen=True)
class ReadResult:
    """A query's answer at `index`, with what the X-Consul-KnownLeader and
    X-Consul-LastContact headers report."""

    index: int
    value: Any
    known_leader: bool
    last_contact_ms: int
    # rows the token may not read were left out (X-Consul-Results-Filtered-By-ACLs)
    filtered: bool = False

    def to_wire(self) -> dict[str, Any]:
        return {"i": self.index, "r": self.value, "kl": self.known_leader, "lc": self.last_contact_ms,
                "f": self.filtered}

    @classmethod
    def from_wire(cls, reply: dict[str, Any]) -> ReadResult:
        return cls(int(reply["i"]), reply["r"], bool(reply["kl"]), int(reply["lc"]), bool(reply.get("f")))
