"""The Raft snapshot file: a msgpack header, then the FSM's streamed snapshot.

    {"v": 2, "last": [...], "prev": [...], "cluster": [address, ...]}   header
    FSM.write_snapshot(...) objects                                      the state

`last` and `prev` are pysyncobj's (command, index, term) entries the snapshot was taken
at; `cluster` is the voter set then. Written to `<file>.writing`, fsync'ed, renamed over
the file, and the directory fsync'ed, so a crash leaves the old snapshot or the new one.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO

import msgpack

from mesh.catalog.errors import FatalStateError
from mesh.catalog.fsm import FSM

__all__ = ["VERSION", "write_snapshot_file", "read_snapshot_file"]

VERSION = 2
MAX_BUFFER = 64 << 20


def write_snapshot_file(dump_file: str, state: Any, last: tuple[Any, ...], prev: tuple[Any, ...],
                        members: list[str], fsync: bool) -> None:
    """Write `state` (FSM.snapshot_state()) atomically to `dump_file`; raises on failure."""
    tmp = dump_file + ".writing"
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        _write(f, state, last, prev, members)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, dump_file)
    if fsync:
        dir_fd = os.open(os.path.dirname(dump_file), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _write(f: BinaryIO, state: Any, last: tuple[Any, ...], prev: tuple[Any, ...], members: list[str]) -> None:
    header = {"v": VERSION, "last": list(last), "prev": list(prev), "cluster": members}
    f.write(msgpack.packb(header, use_bin_type=True))
    FSM.write_snapshot(f, *state)  # streamed: no second copy of the state in memory


def read_snapshot_file(file_name: str) -> tuple[tuple[Any, ...], tuple[Any, ...], list[str], FSM]:
    """(last, prev, cluster, restored FSM) from a snapshot file; FatalStateError if it
    is not one of ours. Entries come back as tuples: pysyncobj compares them with its
    journal's tuples."""
    with open(file_name, "rb") as f:
        objects = iter(msgpack.Unpacker(f, raw=False, strict_map_key=False, max_buffer_size=MAX_BUFFER))
        header = next(objects)
        if not isinstance(header, dict) or header.get("v") != VERSION:
            raise FatalStateError(f"{file_name}: not a mesh Raft snapshot")
        restored = FSM.read_snapshot(objects)
    return tuple(header["last"]), tuple(header["prev"]), list(header["cluster"]), restored
