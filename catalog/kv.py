"""The KV table: entries, tombstones and lock delays, with Consul's operations.

Pure and deterministic: every operation that needs the time is given it (`now`, wall
seconds stamped into the command by a server), so followers applying the same log
agree. Watch keys (agent/watch.py) are `kvs` for the table and `kv:<key>` per key; a
prefix read registers `kv*:<prefix>`, which the hub matches against the `kv:` keys an
apply touched, so a blocking read wakes only for its own key or prefix.

Indexes never go backwards for a reader (Consul's can, when tombstones are reaped): a
missing key and an empty prefix answer the table's index (as Consul's do), and a prefix
read is floored at `reaped_index`, the highest delete index ever reaped.

Writes go through `KVOverlay`: operations read through it and write into it, and only
`commit` touches the table, so a transaction that fails at its tenth operation leaves
nothing behind. `run_txn` is the one loop over a transaction's operations, for the
state machine (writes) and for read-only transactions served as reads.
"""

from __future__ import annotations

import base64
import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "KVEntry",
    "KVTable",
    "KVOverlay",
    "TxnError",
    "KV_READ_VERBS",
    "KV_WRITE_VERBS",
    "KV_VERBS",
    "kv_watch_key",
    "kv_prefix_watch_key",
    "run_op",
    "run_txn",
]

KV_WRITE_VERBS = ("set", "cas", "lock", "unlock", "delete", "delete-tree", "delete-cas")
KV_READ_VERBS = ("get", "get-or-empty", "get-tree", "check-index", "check-session", "check-not-exists")
KV_VERBS = KV_WRITE_VERBS + KV_READ_VERBS


def kv_watch_key(key: str) -> str:
    return "kv:" + key


def kv_prefix_watch_key(prefix: str) -> str:
    return "kv*:" + prefix


@dataclass(frozen=True, slots=True)
class KVEntry:
    key: str
    value: bytes = b""
    flags: int = 0
    session: str = ""
    lock_index: int = 0
    create_index: int = 0
    modify_index: int = 0

    def to_api(self, with_value: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode() if with_value and self.value else None,
        }
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"] = self.create_index
        out["ModifyIndex"] = self.modify_index
        return out


class TxnError(Exception):
    """One operation's failure, with Consul's text; the whole transaction is void."""


class _SortedKeys:
    """Keys in order, for prefix ranges (bisect over a list: inserts are a memmove)."""

    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys = sorted(keys or [])

    def add(self, key: str) -> None:
        i = bisect.bisect_left(self.keys, key)
        if i == len(self.keys) or self.keys[i] != key:
            self.keys.insert(i, key)

    def remove(self, key: str) -> None:
        i = bisect.bisect_left(self.keys, key)
        if i < len(self.keys) and self.keys[i] == key:
            del self.keys[i]

    def prefixed(self, prefix: str) -> Iterator[str]:
        keys = self.keys
        i = bisect.bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            yield keys[i]
            i += 1


class KVTable:
    def __init__(self) -> None:
        self.entries: dict[str, KVEntry] = {}
        self.tombstones: dict[str, int] = {}  # deleted key -> its delete index
        self.lock_delays: dict[str, float] = {}  # key -> wall time before which it may not be locked
        self.reaped_index = 0
        self._keys = _SortedKeys()
        self._tomb_keys = _SortedKeys()

    # ---- reads -----------------------------------------------------------------
    def get(self, key: str) -> KVEntry | None:
        return self.entries.get(key)

    def key_index(self, key: str, table_index: int) -> int:
        """A single-key read's index: the key's ModifyIndex; for a missing key, the
        table's (`kvs`, Consul's answer), which is past its delete and never goes back."""
        entry = self.entries.get(key)
        if entry is not None:
            return entry.modify_index
        return max(table_index, self.tombstones.get(key, 0), self.reaped_index)

    def under(self, prefix: str) -> list[KVEntry]:
        return [self.entries[k] for k in self._keys.prefixed(prefix)]

    def prefix_index(self, prefix: str, table_index: int) -> int:
        """A prefix read's index: the newest change under it, deletes included, floored
        at the newest reaped tombstone (which may have been under it); with nothing
        under it, the table's (Consul's answer)."""
        index = 0
        for key in self._keys.prefixed(prefix):
            index = max(index, self.entries[key].modify_index)
        for key in self._tomb_keys.prefixed(prefix):
            index = max(index, self.tombstones[key])
        if index == 0:
            return max(table_index, self.reaped_index)
        return max(index, self.reaped_index)

    def keys_under(self, prefix: str, separator: str) -> list[str]:
        """?keys: every key under the prefix, or with a separator only the next level
        (`web/sub/` once for everything below it)."""
        out: list[str] = []
        for key in self._keys.prefixed(prefix):
            if separator:
                cut = key.find(separator, len(prefix))
                if cut >= 0:
                    key = key[: cut + len(separator)]
                    if out and out[-1] == key:
                        continue
            out.append(key)
        return out

    def held_by(self, session: str) -> list[str]:
        return [k for k, e in self.entries.items() if e.session == session]

    def locked_until(self, key: str) -> float:
        return self.lock_delays.get(key, 0.0)

    # ---- writes ------------------------------------------------------------------
    def put(self, index: int, entry: KVEntry, touch: Callable[..., None]) -> None:
        self.entries[entry.key] = entry
        self._keys.add(entry.key)
        if self.tombstones.pop(entry.key, None) is not None:
            self._tomb_keys.remove(entry.key)
        touch(index, "kvs", kv_watch_key(entry.key))

    def delete(self, index: int, key: str, touch: Callable[..., None]) -> None:
        if self.entries.pop(key, None) is None:
            return
        self._keys.remove(key)
        self.tombstones[key] = index
        self._tomb_keys.add(key)
        touch(index, "kvs", kv_watch_key(key))

    def reap(self, up_to: int) -> int:
        """Forget tombstones deleted at or before `up_to`; how many were reaped. No
        read index goes backwards: `reaped_index` floors them all."""
        gone = [k for k, i in self.tombstones.items() if i <= up_to]
        for key in gone:
            self.reaped_index = max(self.reaped_index, self.tombstones.pop(key))
            self._tomb_keys.remove(key)
        return len(gone)

    def expire_lock_delays(self, now: float) -> None:
        for key in [k for k, t in self.lock_delays.items() if t <= now]:
            del self.lock_delays[key]

    # ---- whole-table ---------------------------------------------------------------
    def copy(self) -> KVTable:
        other = KVTable()
        other.entries = dict(self.entries)
        other.tombstones = dict(self.tombstones)
        other.lock_delays = dict(self.lock_delays)
        other.reaped_index = self.reaped_index
        other._keys = _SortedKeys(list(self._keys.keys))
        other._tomb_keys = _SortedKeys(list(self._tomb_keys.keys))
        return other

    def rebuild_indexes(self) -> None:
        """After rows were loaded directly (a snapshot)."""
        self._keys = _SortedKeys(list(self.entries))
        self._tomb_keys = _SortedKeys(list(self.tombstones))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVTable):
            return NotImplemented
        return (self.entries == other.entries and self.tombstones == other.tombstones
                and self.lock_delays == other.lock_delays and self.reaped_index == other.reaped_index)

    __hash__ = None  # type: ignore[assignment]


_DELETED = None


class KVOverlay:
    """The table as a transaction sees it: its own writes first, then the table.

    `session_ok(id)` says whether a session may hold locks (it exists, its node and
    checks are healthy); `now` is the command's wall time, for lock delays."""

    def __init__(self, table: KVTable, index: int, now: float, session_ok: Callable[[str], bool]) -> None:
        self.table = table
        self.index = index
        self.now = now
        self.session_ok = session_ok
        self.writes: dict[str, KVEntry | None] = {}

    def get(self, key: str) -> KVEntry | None:
        if key in self.writes:
            return self.writes[key]
        return self.table.get(key)

    def under(self, prefix: str) -> list[KVEntry]:
        keys = set(self.table._keys.prefixed(prefix)) | {k for k in self.writes if k.startswith(prefix)}
        entries = (self.get(k) for k in sorted(keys))
        return [e for e in entries if e is not None]

    def write(self, entry: KVEntry) -> KVEntry:
        existing = self.get(entry.key)
        create = existing.create_index if existing is not None else self.index
        row = KVEntry(entry.key, entry.value, entry.flags, entry.session, entry.lock_index, create, self.index)
        self.writes[entry.key] = row
        return row

    def remove(self, key: str) -> None:
        if self.get(key) is not None:
            self.writes[key] = _DELETED

    def commit(self, touch: Callable[..., None]) -> None:
        for key, row in self.writes.items():
            if row is None:
                self.table.delete(self.index, key, touch)
            else:
                self.table.put(self.index, row, touch)


def run_op(view: KVOverlay, verb: str, key: str, value: bytes = b"", flags: int = 0, index: int = 0,
           session: str = "") -> tuple[bool, list[KVEntry]]:
    """One KV operation against `view`: (succeeded, the entries it returns).

    A condition that does not hold (a stale CAS index, a lock held by another session)
    is (False, []); an operation a transaction must fail on raises TxnError with
    Consul's text. A session that may not hold locks raises InvalidSession."""
    existing = view.get(key)
    if verb == "set":
        lock_index, holder = (existing.lock_index, existing.session) if existing else (0, "")
        return True, [view.write(KVEntry(key, value, flags, holder, lock_index))]
    if verb == "cas":
        if (existing is not None) if index == 0 else (existing is None or existing.modify_index != index):
            return False, []
        lock_index, holder = (existing.lock_index, existing.session) if existing else (0, "")
        return True, [view.write(KVEntry(key, value, flags, holder, lock_index))]
    if verb == "lock":
        if not session or not view.session_ok(session):
            raise InvalidSession(session)
        if existing is not None and existing.session:
            if existing.session != session:
                return False, []
            return True, [view.write(KVEntry(key, value, flags, session, existing.lock_index))]
        if view.table.locked_until(key) > view.now:
            return False, []
        lock_index = existing.lock_index + 1 if existing else 1
        return True, [view.write(KVEntry(key, value, flags, session, lock_index))]
    if verb == "unlock":
        if existing is None or existing.session != session or not session:
            return False, []
        return True, [view.write(KVEntry(key, value, flags, "", existing.lock_index))]
    if verb == "delete":
        view.remove(key)
        return True, []
    if verb == "delete-cas":
        if existing is None:
            return True, []
        if existing.modify_index != index:
            return False, []
        view.remove(key)
        return True, []
    if verb == "delete-tree":
        for entry in view.under(key):
            view.remove(entry.key)
        return True, []
    if verb == "get":
        if existing is None:
            raise TxnError(f'key "{key}" doesn\'t exist')
        return True, [existing]
    if verb == "get-or-empty":  # Consul: the key, or an empty entry naming it
        return True, [existing if existing is not None else KVEntry(key)]
    if verb == "get-tree":
        return True, view.under(key)
    if verb == "check-index":
        if existing is None:
            raise TxnError(f'failed to check index, key "{key}" doesn\'t exist')
        if existing.modify_index != index:
            raise TxnError(f'failed index check for key "{key}", current modify index {existing.modify_index} != {index}')
        return True, [existing]
    if verb == "check-session":
        if existing is None:
            raise TxnError(f'failed to check session, key "{key}" doesn\'t exist')
        if existing.session != session:
            raise TxnError(f'failed session check for key "{key}", current session "{existing.session}" != "{session}"')
        return True, [existing]
    if verb == "check-not-exists":
        if existing is not None:
            raise TxnError(f'key "{key}" exists')
        return True, []
    raise TxnError(f'unknown KV verb "{verb}"')


class _Op(Protocol):
    """What run_txn reads of an operation (catalog.commands.KVOp)."""

    verb: str
    key: str
    value: bytes
    flags: int
    index: int
    session: str


_READS_WITH_VALUES = ("get", "get-or-empty", "get-tree")


def run_txn(view: KVOverlay, ops: Iterable[_Op]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every operation against the same view: (results, errors) in Consul's shape.
    Reads carry values, writes do not, deletes return nothing; each failing operation
    is named by its OpIndex. The caller commits the view only when errors is empty."""
    results: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for position, op in enumerate(ops):
        try:
            ok, entries = run_op(view, op.verb, op.key, op.value, op.flags, op.index, op.session)
        except TxnError as exc:
            errors.append({"OpIndex": position, "What": str(exc)})
            continue
        if not ok:
            errors.append({"OpIndex": position, "What": FAILED_TEXT[op.verb].format(key=op.key)})
            continue
        with_value = op.verb in _READS_WITH_VALUES
        results.extend({"KV": e.to_api(with_value)} for e in entries)
    return results, errors


# what a failed condition means inside a transaction (outside one it is a plain `false`)
FAILED_TEXT = {
    "cas": 'failed to set key "{key}", index is stale',
    "lock": 'failed to lock key "{key}", lock is already held',
    "unlock": 'failed to unlock key "{key}", lock isn\'t held, or is held by another session',
    "delete-cas": 'failed to delete key "{key}", index is stale',
}


class InvalidSession(TxnError):
    def __init__(self, session: str) -> None:
        super().__init__(f'invalid session "{session}"')
        self.session = session
