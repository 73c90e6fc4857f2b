"""The data-dir is private: files 0600, directories 0700, created that way.

It holds what must not leak to other local users: service tokens and check headers
(`local/state.json`), leaf private keys (`connect/`), and on servers the Raft journal
and snapshots with the CA's private key. Three layers keep it so:

- the `mesh agent` command sets a process umask of 0o077 before anything is created,
  which also covers files that libraries create (pysyncobj's journal);
- our own writers pass explicit modes (`write_private`, `make_private_dir`), so they
  stay private even when called from a process without that umask (tests, tools);
- `tighten` fixes a data-dir left by an older version once, at start.
"""

from __future__ import annotations

import os
import stat

from .logging import get_logger

__all__ = ["PRIVATE_UMASK", "KNOWN_ENTRIES", "make_private_dir", "write_private", "tighten"]

log = get_logger("agent")

PRIVATE_UMASK = 0o077
# what mesh itself keeps in a data-dir; only these are tightened in a data-dir that is
# shared (world-writable or sticky, such as /tmp), where other files are not ours
KNOWN_ENTRIES = ("node-id", "local", "connect", "raft", "servers.json")


def make_private_dir(path: str) -> None:
    """Create `path` and its missing parents, each 0700 (`os.makedirs` gives the mode to
    the last one only). An existing directory is left as it is: `tighten` deals with
    old ones."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise


def write_private(path: str, data: bytes, *, sync: bool = True) -> None:
    """Replace `path` atomically with `data`, in a file created 0600 (never readable by
    others, not even between create and chmod)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a stale .tmp from an older version keeps its mode on O_TRUNC
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _private(path: str, st: os.stat_result) -> int:
    """chmod one entry to owner-only; 1 when it changed. Symlinks are never followed."""
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o077:
        return 0
    os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
    return 1


def _shared(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_ISVTX | stat.S_IWOTH))


def tighten(data_dir: str) -> int:
    """Remove group and other permissions from the data-dir and what mesh keeps in it.
    Returns how many entries changed; logs once when any did. A shared directory (such
    as /tmp) keeps its own mode and only mesh's entries in it are tightened."""
    changed = 0
    try:
        root = os.lstat(data_dir)
        shared = _shared(root)
        if shared:
            log.warning("data_dir_shared", data_dir=data_dir,
                        hint="other users can write here; use a directory of its own")
        else:
            changed += _private(data_dir, root)
        names = KNOWN_ENTRIES if shared else tuple(os.listdir(data_dir))
        for name in names:
            top = os.path.join(data_dir, name)
            try:
                st = os.lstat(top)
            except FileNotFoundError:
                continue
            changed += _private(top, st)
            if not stat.S_ISDIR(st.st_mode):
                continue
            for parent, dirs, files in os.walk(top):
                for entry in dirs + files:
                    path = os.path.join(parent, entry)
                    changed += _private(path, os.lstat(path))
    except OSError as exc:
        log.warning("data_dir_tighten_failed", data_dir=data_dir, error=exc.strerror, path=exc.filename)
    if changed:
        log.info("data_dir_permissions_tightened", data_dir=data_dir, entries=changed,
                 reason="files 0600 and directories 0700 keep tokens and keys from other local users")
    return changed
