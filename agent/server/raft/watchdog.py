"""The watchdog's decision, pure: when to give up on this node's Raft data and resync
it from the leader's snapshot (raft.md §4). The adapter gathers the inputs once per
watchdog interval and performs the recovery; this module only decides.

A node is recovered when, and only when, it keeps its Raft data on disk, is not the
leader (a leader has no one to resync from), and one of:

- tick errors: pysyncobj logged at least TICK_ERROR_LIMIT failed ticks within the last
  TICK_ERROR_WINDOW seconds (its state is broken in a way it does not recover from);
- applied index stuck: the leader says entries past ours are committed and our applied
  index has not moved for `stuck_after` seconds;
- tick thread died: pysyncobj's thread is gone while we are not stopping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["TICK_ERROR_WINDOW", "TICK_ERROR_LIMIT", "Progress", "track_progress", "recovery_reason"]

TICK_ERROR_WINDOW = 10.0
TICK_ERROR_LIMIT = 20


@dataclass(frozen=True)
class Progress:
    """The applied index last seen moving, and since when it has stood there."""

    applied: int
    since: float


def track_progress(prev: Progress, applied: int, leader_commit: int, now: float) -> Progress:
    """Restart the stuck timer whenever the applied index moves or nothing is owed."""
    if applied != prev.applied or applied >= leader_commit:
        return Progress(applied, now)
    return prev


def recovery_reason(
    *,
    tick_errors: Iterable[float],
    applied: int,
    leader_commit: int,
    applied_since: float,
    thread_alive: bool,
    stopping: bool,
    is_leader: bool,
    persistent: bool,
    now: float,
    stuck_after: float,
) -> str | None:
    """None, or why this node must be resynced from the leader."""
    if not persistent or is_leader:
        return None
    recent_errors = sum(1 for t in tick_errors if now - t < TICK_ERROR_WINDOW)
    if recent_errors >= TICK_ERROR_LIMIT:
        return "tick errors"
    if now - applied_since > stuck_after and leader_commit > applied:
        return "applied index stuck"
    if not thread_alive and not stopping:
        return "tick thread died"
    return None
