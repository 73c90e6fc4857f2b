"""Fixes for pysyncobj 0.3.17 that live on our side of the library.

The library's source is never copied here; these are small, pure helpers and patch
functions, pinned to the exact version (PINNED_VERSION) and applied by agent/raft.py.
Each has a test in tests/unit/agent/test_pysyncobj_fixes.py reproducing what it fixes
(../shared/reference/raft.md §2.4 and §4):

- conflict-aware truncation: a follower that receives a stale or duplicate
  append_entries must not drop entries it already holds unless a term conflicts
  (Raft §5.3); the library truncates whenever it holds entries past prevLogIdx, which
  under bursts ends with an empty journal and a node stuck forever (bug A);
- `clamp_delete_to`: log compaction may ask to delete past the end of the log, which
  empties it (bug A, second half);
- durable term/vote metadata: written with fsync before rename, file handles closed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pysyncobj.journal
import pysyncobj.version

__all__ = [
    "PINNED_VERSION",
    "trim_append_entries",
    "clamp_delete_to",
    "patch_meta_storer",
    "check_version",
]

PINNED_VERSION = "0.3.17"

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's journal tuple


def check_version() -> None:
    if pysyncobj.version.VERSION != PINNED_VERSION:
        raise RuntimeError(
            f"mesh's Raft adapter is pinned to pysyncobj {PINNED_VERSION}, found {pysyncobj.version.VERSION}"
        )


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


_FSYNC = {"enabled": True}


def patch_meta_storer(fsync: bool) -> None:
    """Term and vote must be on disk before a vote is sent (Raft §5.1): write the meta
    file, fsync it, then rename. Also closes the handle the library leaks on read."""
    _FSYNC["enabled"] = fsync
    storer = pysyncobj.journal.MetaStorer
    if getattr(storer, "_mesh_patched", False):
        return

    def get_meta(self: Any) -> dict[str, Any]:
        try:
            with open(self.getPath(), "rb") as f:
                return pysyncobj.journal.loads(f.read())  # type: ignore[no-any-return]
        except Exception:  # the library treats any unreadable meta as empty
            return {}

    def store_meta(self: Any, meta: dict[str, Any]) -> None:
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(pysyncobj.journal.dumps(meta))
            f.flush()
            if _FSYNC["enabled"]:
                os.fsync(f.fileno())
        os.replace(tmp, path)

    storer.getMeta = get_meta
    storer.storeMeta = store_meta
    storer._mesh_patched = True
