"""Raft in one process: MemoryRaft implements protocol.Raft over a MemoryNetwork, so the
server role's logic (reads, leader duties, membership calls, HTTP handlers through the
backend) runs against the real FSM in one process, fast and deterministically.

What it models, honestly:

- Log replication as Raft does it: a leader appends entries in its term and sends
  append-entries (previous index and term, entries, commit index) to each follower; a
  follower rejects a mismatching previous entry, truncates only on a term conflict,
  and acks what it holds; the leader commits an entry of its own term once a majority
  holds it, and followers learn the commit index from the next append-entries (sent at
  once after a commit, and on every `tick`). Committed entries are applied, in order,
  to each node's real catalog FSM with the same encoded commands as the adapter sends
  (one command per entry: the adapter's group commit is not modelled).
- A new leader appends a no-op entry (as pysyncobj does; the FSM never sees it).
- Elections are decided by the test (`MemoryCluster.elect`), not by timers: the
  candidate takes a new term and asks every node it can reach for a vote; votes follow
  Raft's rule (one per term, only for a log at least as up to date), so a candidate
  behind a partition or with a stale log loses.
- The lease as the adapter has it: a leader's lease is valid while a majority (itself
  included) acked within `lease` seconds of the injected clock; `tick` makes a leader
  without a valid lease step down (pysyncobj's leaderFallbackTimeout). `has_leader`,
  `caught_up` and `last_contact` follow the adapter's definitions on the same clock.
- Writes on a follower are forwarded to the leader it knows; the result comes from the
  follower's own FSM once it applies the entry (as pysyncobj's callbacks do). A write
  that does not commit before its deadline (event-loop time, as in the adapter) fails
  with NoLeader when no leader is known, else ApplyTimeout; it is not retried.
- Membership changes (add_peer, remove_peer) change every node's configuration at
  once, not through the log. There is no snapshot, compaction or disk.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from mesh.catalog.commands import MessageType, encode, encode_batch
from mesh.catalog.errors import FatalStateError
from mesh.catalog.fsm import FSM

from ...errors import ApplyTimeout, MembershipError, NoLeader, RaftError
from ..clock import Clock, ManualClock
from .memory_net import MemoryNetwork
from .protocol import OnChange, RaftConfig

__all__ = ["MemoryRaft", "MemoryCluster"]

Entry = tuple[int, bytes | None]  # (term, payload); None is a leader's no-op
FOLLOWER, LEADER = "follower", "leader"


class MemoryRaft:
    """One node of a MemoryCluster (see the module docstring for what it models)."""

    def __init__(self, cluster: MemoryCluster, config: RaftConfig, fsm: FSM, on_change: OnChange | None) -> None:
        self.cluster = cluster
        self.config = config
        self.address = config.self_address
        self.fsm = fsm
        self.lock = threading.RLock()
        self._on_change = on_change
        self._started = False
        self._fatal: str | None = None
        self.term = 0
        self.voted_for: str | None = None
        self.role = FOLLOWER
        self.leader_address: str | None = None
        self.log: list[Entry] = []
        self._commit = 0
        self._applied = 0
        self._leader_commit = 0
        self._last_leader_contact: float | None = None
        self.peers: list[str] = []
        self._next: dict[str, int] = {}
        self._match: dict[str, int] = {}
        self._last_ack: dict[str, float] = {}
        self._votes: set[str] = set()
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}  # index -> (term, waiter)
        self._forwarded: dict[int, asyncio.Future[Any]] = {}  # request number -> waiter
        self._remote: dict[int, tuple[str, int]] = {}  # leader: index -> (follower, request number)
        self._request_seq = 0

    @property
    def now(self) -> float:
        return self.cluster.clock.monotonic()

    # ---- lifecycle -----------------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._started

    def start(self, partners: list[str]) -> None:
        self.peers = sorted(set(partners) - {self.address})
        self._started = True
        self.cluster.network.register(self.address, self._receive)
        if not self.peers:  # a lone server elects itself at once, as with -bootstrap-expect 1
            self.cluster.elect(self.address)

    async def stop(self) -> None:
        self._started = False
        self.role, self.leader_address = FOLLOWER, None
        self.cluster.network.unregister(self.address)
        for fut in [f for _, f in self._pending.values()] + list(self._forwarded.values()):
            if not fut.done():
                fut.set_exception(NoLeader("server shutting down"))
        self._pending.clear()
        self._forwarded.clear()

    def saved_peers(self) -> list[str] | None:
        return None  # nothing on disk

    def check_data_format(self) -> None:
        return None

    # ---- status (the adapter's definitions, on the injected clock) -----------------------
    @property
    def is_leader(self) -> bool:
        return self._started and self.role == LEADER

    @property
    def leader(self) -> str | None:
        return self.leader_address if self._started else None

    def lease_valid(self) -> bool:
        if not self.is_leader:
            return False
        if not self.peers:
            return True
        now = self.now
        fresh = 1 + sum(1 for p in self.peers if now - self._last_ack.get(p, float("-inf")) < self.config.lease)
        return fresh > (len(self.peers) + 1) / 2

    def last_contact(self) -> float:
        if not self._started or (self.role != LEADER and self._last_leader_contact is None):
            return float("inf")
        if self.role == LEADER:
            return 0.0
        assert self._last_leader_contact is not None
        return max(0.0, self.now - self._last_leader_contact)

    def caught_up(self) -> bool:
        if not self._started:
            return False
        if self.role == LEADER:
            return self.lease_valid()
        return self.last_contact() < self.config.lease / 2 and self._applied >= self._leader_commit

    def has_leader(self) -> bool:
        if not self._started:
            return False
        if self.role == LEADER:
            return self.lease_valid()
        return self.leader_address is not None and self.last_contact() < self.config.lease * 2

    def voters(self) -> list[str]:
        return sorted([self.address, *self.peers]) if self._started else []

    def status(self) -> dict[str, Any]:
        if not self._started:
            return {"state": "not started"}
        return {"state": self.role, "term": self.term, "leader": self.leader_address or "", "log_len": len(self.log),
                "commit_idx": self._commit, "last_applied": self._applied, "partner_nodes_count": len(self.peers)}

    @property
    def applied_index(self) -> int:
        return self._applied

    @property
    def commit_index(self) -> int:
        return self._commit

    # ---- writes ----------------------------------------------------------------------------
    async def apply(self, msg_type: MessageType, body: Any = None, timeout: float | None = None) -> Any:
        self._request_seq += 1
        request_id = self.address.encode()[:8].ljust(8, b"\0") + self._request_seq.to_bytes(8, "big")
        return await self.apply_raw(encode(msg_type, body, request_id), timeout)

    async def apply_raw(self, raw: bytes, timeout: float | None = None) -> Any:
        if not self._started:
            raise NoLeader("Raft is not running on this server yet")
        if self._fatal:
            raise RaftError(self._fatal)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        payload = encode_batch([raw])
        if self.role == LEADER:
            index = self._append(payload)
            self._pending[index] = (self.term, fut)
            self._replicate_all()
            self._advance_commit()
        elif self.leader_address is not None:
            self._request_seq += 1
            self._forwarded[self._request_seq] = fut
            self._send(self.leader_address, {"type": "forward", "req": self._request_seq, "payload": payload})
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout if timeout is not None else self.config.write_timeout)
        except TimeoutError:
            raise (NoLeader() if not self.has_leader() else ApplyTimeout()) from None

    async def barrier(self, timeout: float | None = None) -> None:
        await self.apply(MessageType.BARRIER, None, timeout)

    # ---- membership ------------------------------------------------------------------------
    async def add_peer(self, address: str) -> None:
        if address in self.voters():
            return
        self._require_leader()
        self.cluster.set_voters([*self.voters(), address])

    async def remove_peer(self, address: str) -> None:
        if address not in self.voters():
            raise MembershipError(f"address {address!r} is not a Raft peer")
        self._require_leader()
        self.cluster.set_voters([v for v in self.voters() if v != address])

    async def transfer_leadership(self, timeout: float = 5.0) -> bool:
        if not self.is_leader or not self.peers:
            return False
        for peer in sorted(self.peers, key=lambda p: -self._match.get(p, 0)):
            if self.cluster.network.reachable(self.address, peer) and self.cluster.elect(peer):
                return True
        return False

    def _require_leader(self) -> None:
        if not self._started:
            raise NoLeader()
        if self.role != LEADER:
            raise MembershipError("not the leader")

    # ---- the protocol ----------------------------------------------------------------------
    def _send(self, dst: str, message: dict[str, Any]) -> None:
        self.cluster.network.send(self.address, dst, message)

    def _last(self) -> tuple[int, int]:
        """(term, index) of the last entry."""
        return (self.log[-1][0] if self.log else 0), len(self.log)

    def _append(self, payload: bytes | None) -> int:
        self.log.append((self.term, payload))
        return len(self.log)

    def campaign(self) -> None:
        """Start an election in a new term (MemoryCluster.elect decides when)."""
        self.term += 1
        self.voted_for = self.address
        self.role, self.leader_address = FOLLOWER, None
        self._votes = {self.address}
        last_term, last_index = self._last()
        self._maybe_win()
        for peer in self.peers:
            self._send(peer, {"type": "vote", "term": self.term, "last_term": last_term, "last_index": last_index})

    def _maybe_win(self) -> None:
        if self.role == LEADER or len(self._votes) <= (len(self.peers) + 1) / 2:
            return
        self.role, self.leader_address = LEADER, self.address
        self._next = {p: len(self.log) + 1 for p in self.peers}
        self._match = {p: 0 for p in self.peers}
        self._last_ack = {}
        self._append(None)  # the new term's no-op: commits what earlier terms left
        self._replicate_all()
        self._advance_commit()

    def heartbeat(self) -> None:
        """A leader's periodic append-entries; a leader without its lease steps down."""
        if self.is_leader:
            self._replicate_all()
            if not self.lease_valid():
                self._step_down(self.term)

    def _step_down(self, term: int) -> None:
        if term > self.term:
            self.term, self.voted_for, self.leader_address = term, None, None
        self.role = FOLLOWER
        if self.leader_address == self.address:
            self.leader_address = None

    def _replicate_all(self) -> None:
        for peer in self.peers:
            self._replicate(peer)

    def _replicate(self, peer: str) -> None:
        nxt = self._next.get(peer, len(self.log) + 1)
        prev = nxt - 1
        self._send(peer, {"type": "append", "term": self.term, "prev_index": prev,
                          "prev_term": self.log[prev - 1][0] if prev > 0 else 0,
                          "entries": self.log[prev:], "commit": self._commit})

    def _receive(self, src: str, m: dict[str, Any]) -> None:
        if not self._started:
            return
        kind = m["type"]
        if kind == "append":
            self._on_append(src, m)
        elif kind == "ack":
            self._on_ack(src, m)
        elif kind == "vote":
            self._on_vote(src, m)
        elif kind == "voted":
            if m["term"] > self.term:
                self._step_down(m["term"])
            elif m["granted"] and m["term"] == self.term and self.role != LEADER:
                self._votes.add(src)
                self._maybe_win()
        elif kind == "forward":
            if self.role == LEADER:
                index = self._append(m["payload"])
                self._send(src, {"type": "accepted", "req": m["req"], "index": index, "term": self.term})
                self._replicate_all()
                self._advance_commit()
        elif kind == "accepted":
            fut = self._forwarded.pop(m["req"], None)
            if fut is not None and m["index"] > self._applied:
                self._pending[m["index"]] = (m["term"], fut)

    def _on_vote(self, src: str, m: dict[str, Any]) -> None:
        if m["term"] > self.term:
            self._step_down(m["term"])
        up_to_date = (m["last_term"], m["last_index"]) >= self._last()
        granted = m["term"] == self.term and self.voted_for in (None, src) and up_to_date
        if granted:
            self.voted_for = src
        self._send(src, {"type": "voted", "term": self.term, "granted": granted})

    def _on_append(self, src: str, m: dict[str, Any]) -> None:
        if m["term"] < self.term:
            self._send(src, {"type": "ack", "term": self.term, "ok": False, "match": len(self.log)})
            return
        if m["term"] > self.term or self.role == LEADER:
            self._step_down(m["term"])
        self.role, self.leader_address = FOLLOWER, src
        self._last_leader_contact = self.now
        prev = m["prev_index"]
        if prev > len(self.log) or (prev > 0 and self.log[prev - 1][0] != m["prev_term"]):
            self._send(src, {"type": "ack", "term": self.term, "ok": False, "match": min(len(self.log), prev - 1)})
            return
        for offset, entry in enumerate(m["entries"]):
            index = prev + 1 + offset
            if index <= len(self.log):
                if self.log[index - 1][0] == entry[0]:
                    continue
                del self.log[index - 1:]  # a term conflict: what follows is not the leader's
            self.log.append(entry)
        match = prev + len(m["entries"])
        self._leader_commit = m["commit"]
        self._commit_to(min(m["commit"], match))
        self._send(src, {"type": "ack", "term": self.term, "ok": True, "match": match})

    def _on_ack(self, src: str, m: dict[str, Any]) -> None:
        if m["term"] > self.term:
            self._step_down(m["term"])
            return
        if self.role != LEADER or m["term"] != self.term:
            return
        self._last_ack[src] = self.now
        if m["ok"]:
            self._match[src] = max(self._match.get(src, 0), m["match"])
            self._next[src] = self._match[src] + 1
            self._advance_commit()
        else:
            self._next[src] = max(1, m["match"] + 1)
            self._replicate(src)

    def _advance_commit(self) -> None:
        for n in range(len(self.log), self._commit, -1):
            if self.log[n - 1][0] != self.term:
                break
            holders = 1 + sum(1 for p in self.peers if self._match.get(p, 0) >= n)
            if holders > (len(self.peers) + 1) / 2:
                self._leader_commit = n
                self._commit_to(n)
                self._replicate_all()  # followers learn the commit index at once
                return

    def _commit_to(self, index: int) -> None:
        if index <= self._commit:
            return
        self._commit = index
        while self._applied < self._commit:
            self._apply_entry(self._applied + 1)

    def _apply_entry(self, index: int) -> None:
        term, payload = self.log[index - 1]
        self._applied = index
        waiter = self._pending.pop(index, None)
        if payload is None:
            return
        if self._fatal:
            result: Any = FatalStateError(self._fatal)
        else:
            try:
                with self.lock:
                    result = self.fsm.apply_batch(index, payload)[0]
                    changed = self.fsm.store.drain_touched()
            except FatalStateError as exc:
                self._fatal = f"cannot apply the Raft log at index {index}: {exc}"
                result = exc
            else:
                if changed and self._on_change is not None:
                    self._on_change(changed, index)
        if waiter is not None and waiter[0] == term and not waiter[1].done():
            if isinstance(result, FatalStateError):
                waiter[1].set_exception(RaftError(str(result)))
            else:
                waiter[1].set_result(result)


class MemoryCluster:
    """A few MemoryRaft nodes on one MemoryNetwork and one injected clock.

    `add` (or `factory`, for Membership/ServerRole) makes a node; `start` starts them all
    with each other as peers; `elect` makes a node campaign; `tick` delivers due messages,
    sends the leaders' heartbeats and steps down leaders without a lease."""

    def __init__(self, clock: Clock | None = None, network: MemoryNetwork | None = None,
                 lease: float = 2.0, write_timeout: float = 0.5) -> None:
        self.clock: Clock = clock or ManualClock()
        self.network = network or MemoryNetwork(self.clock)
        self.lease = lease
        self.write_timeout = write_timeout
        self.nodes: dict[str, MemoryRaft] = {}

    @classmethod
    def of(cls, size: int, **kwargs: Any) -> MemoryCluster:
        cluster = cls(**kwargs)
        for i in range(size):
            cluster.add(f"10.0.0.{i + 1}:8300")
        return cluster

    def add(self, address: str, fsm: FSM | None = None, on_change: OnChange | None = None) -> MemoryRaft:
        config = RaftConfig(self_address=address, bind_host="", data_dir=None, lease=self.lease,
                            write_timeout=self.write_timeout)
        return self.factory(config, fsm or FSM(), on_change)

    def factory(self, config: RaftConfig, fsm: FSM, on_change: OnChange | None) -> MemoryRaft:
        """A protocol.RaftFactory: Membership(..., raft_factory=cluster.factory). The
        cluster's lease and write timeout replace the server's."""
        config = replace(config, lease=self.lease, write_timeout=self.write_timeout)
        node = MemoryRaft(self, config, fsm, on_change)
        self.nodes[config.self_address] = node
        return node

    def start(self, leader: str | None = None) -> MemoryRaft | None:
        """Start every node with all the others as peers and elect `leader` (or the first)."""
        addresses = sorted(self.nodes)
        for node in self.nodes.values():
            if not node.started:
                node.start(addresses)
        target = leader or addresses[0]
        return self.nodes[target] if self.elect(target) else None

    def elect(self, address: str) -> bool:
        """`address` campaigns; True if it is leader once every due message is delivered."""
        node = self.nodes[address]
        node.campaign()
        self.network.deliver()
        return node.is_leader

    def leader(self) -> MemoryRaft | None:
        leaders = [n for n in self.nodes.values() if n.is_leader]
        return max(leaders, key=lambda n: n.term) if leaders else None

    def tick(self) -> None:
        self.network.deliver()
        for node in list(self.nodes.values()):
            node.heartbeat()
        self.network.deliver()

    def advance(self, seconds: float) -> None:
        """Move a ManualClock and tick."""
        clock = self.clock
        assert isinstance(clock, ManualClock), "advance needs a ManualClock"
        clock.advance(seconds)
        self.tick()

    def set_voters(self, voters: Iterable[str]) -> None:
        wanted = sorted(set(voters))
        for address, node in self.nodes.items():
            if address in wanted:
                node.peers = [v for v in wanted if v != address]
                for peer in node.peers:
                    node._next.setdefault(peer, len(node.log) + 1)
