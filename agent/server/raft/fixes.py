"""Pure fixes for pysyncobj 0.3.17's message handling and compaction (raft.md §2.4, §4).

They take plain values (a term lookup, indexes, the message dict) so they are tested
without the library; pysyncobj_node.py applies them on the message path.

- conflict-aware truncation: a follower that receives a stale or duplicate
  append_entries must not drop entries it already holds unless a term conflicts
  (Raft §5.3); the library truncates whenever it holds entries past prevLogIdx, which
  under bursts ends with an empty journal and a node stuck forever (bug A);
- `clamp_delete_to`: log compaction may ask to delete past the end of the log, which
  empties it (bug A, second half);
- `pickled_meta`: recognise a data-dir an older, pickling mesh wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["Entry", "trim_append_entries", "clamp_delete_to", "pickled_meta"]

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's journal tuple


def trim_append_entries(
    term_at: Callable[[int], int | None], last_index: int, message: dict[str, Any]
) -> bool:
    """Make an append_entries message safe to hand to pysyncobj. Returns True when the
    library must not truncate the follower's log for this message.

    `term_at(i)` is the follower's term of entry i (None when it does not hold it).
    Leading entries the follower already holds with the same term are dropped and
    prevLogIdx/prevLogTerm moved past them: they are a verified common prefix. If no
    entry is left and the follower holds more, nothing conflicts and nothing may be
    truncated; the commit index offered is then clamped to the verified prefix, since
    the entries past it are not known to be the leader's.
    """
    if "prevLogIdx" not in message or message.get("transmission") is not None:
        return False
    entries: Sequence[Entry] = message.get("entries") or []
    prev_idx = message["prevLogIdx"]
    if term_at(prev_idx) != message["prevLogTerm"]:
        return False  # the library answers with a reset: nothing to trim
    skipped = 0
    for entry in entries:
        if term_at(entry[1]) != entry[2]:
            break
        skipped += 1
    if skipped:
        last_skipped = entries[skipped - 1]
        message["prevLogIdx"] = last_skipped[1]
        message["prevLogTerm"] = last_skipped[2]
        message["entries"] = list(entries[skipped:])
    if not message.get("entries") and last_index > message["prevLogIdx"]:
        message["commit_index"] = min(message["commit_index"], message["prevLogIdx"])
        return True
    return False


def clamp_delete_to(to_index: int, last_index: int) -> int:
    """Compaction deletes entries before `to_index`; never past the last one."""
    return min(to_index, last_index)


def pickled_meta(path: str) -> bool:
    """True when a Raft meta file was written by a mesh that still pickled (protocol 2+
    pickles start with 0x80): such a data-dir's log entries are pickles too."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"
    except OSError:
        return False
