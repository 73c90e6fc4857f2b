"""What the server role needs of Raft, as a typed Protocol, and the adapter's settings.

Everything in agent/server/ (membership, reads, leader duties, operator, the endpoints)
is written against `Raft`, never against pysyncobj: the production adapter
(adapter.PysyncobjRaft) and the in-memory one (memory.MemoryRaft, for one-process
tests) both implement it, and both apply the same encoded commands to the real FSM.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mesh.catalog.commands import MessageType
from mesh.catalog.fsm import FSM

__all__ = ["Raft", "RaftConfig", "OnChange", "RaftFactory"]

# called on the event loop with the changed watch keys and the index they changed at
OnChange = Callable[[set[str], int], None]


@dataclass(frozen=True)
class RaftConfig:
    self_address: str  # host:port of this server's Raft listener
    bind_host: str
    data_dir: str | None  # None: in-memory (-dev)
    password: str | None = None
    fsync: bool = True
    lease: float = 2.0  # a leader without quorum contact for this long steps down
    write_timeout: float = 7.0
    attempt_timeout: float = 2.0
    max_batch_commands: int = 4096
    max_batch_bytes: int = 1 << 20
    compaction_min_entries: int = 8192
    compaction_max_bytes: int = 8 << 20  # also snapshot once the log since the last one holds this much
    compaction_min_time: float = 300.0
    fast_elections: bool = False  # -dev: one server, elect at once
    watchdog_interval: float = 1.0
    stuck_after: float = 15.0


class Raft(Protocol):
    """A Raft node as the server role uses it.

    Reads of the FSM's state happen under `lock` (the apply side holds it while it
    applies). `apply` raises NoLeader when no leader commits the command before its
    deadline, ApplyTimeout when a leader is known but the deadline passed, RaftError
    when this node cannot apply its log."""

    lock: threading.RLock

    # ---- lifecycle
    @property
    def started(self) -> bool: ...

    def start(self, partners: list[str]) -> None: ...

    async def stop(self) -> None: ...

    def saved_peers(self) -> list[str] | None: ...

    def check_data_format(self) -> None: ...

    # ---- status
    @property
    def is_leader(self) -> bool: ...

    @property
    def leader(self) -> str | None: ...

    def lease_valid(self) -> bool: ...

    def has_leader(self) -> bool: ...

    def caught_up(self) -> bool: ...

    def last_contact(self) -> float: ...

    def voters(self) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...

    @property
    def applied_index(self) -> int: ...

    @property
    def commit_index(self) -> int: ...

    # ---- writes
    async def apply(self, msg_type: MessageType, body: Any = None, timeout: float | None = None) -> Any: ...

    async def apply_raw(self, raw: bytes, timeout: float | None = None) -> Any: ...

    async def barrier(self, timeout: float | None = None) -> None: ...

    # ---- membership
    async def add_peer(self, address: str) -> None: ...

    async def remove_peer(self, address: str) -> None: ...

    async def transfer_leadership(self, timeout: float = 5.0) -> bool: ...


RaftFactory = Callable[[RaftConfig, FSM, OnChange], Raft]
