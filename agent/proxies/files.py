"""The supervisor's files in `<data-dir>/proxies/`: one pidfile and one log per proxy.

`<id>.pid` (JSON, 0600) names the process the agent runs for a sidecar, so an agent
that crashed and restarts can find and adopt it instead of starting a duplicate. It
holds the proxy service ID, the pid, the process's start time and the boot it was
started in (see procfs.py), the parent service ID its command line names, and the
wall-clock start. It is written after the launch and removed when the process is gone.

`<id>.log` takes the proxy's stdout and stderr (the agent's own stderr would be a pipe
or a terminal that dies with the agent, taking the proxy with it). It is rotated at
launch time only: when it is past the limit it becomes `<id>.log.1` (one generation).

Service IDs may hold `/` and `:`, so file names are percent-encoded; a very long ID is
shortened to a hash (the pidfile's content keeps the real one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..data_dir import make_private_dir, write_private

__all__ = ["PidFile", "ProxyFiles", "LOG_MAX_BYTES"]

LOG_MAX_BYTES = 10 << 20
_MAX_STEM = 180  # well under NAME_MAX (255) with room for ".log.1" and ".tmp"


@dataclass(frozen=True)
class PidFile:
    proxy_id: str
    parent_id: str
    pid: int
    start_time: int
    boot_id: str
    started_wall: float

    def encode(self) -> bytes:
        return json.dumps({"ProxyServiceID": self.proxy_id, "DestinationServiceID": self.parent_id,
                           "Pid": self.pid, "StartTime": self.start_time, "BootID": self.boot_id,
                           "StartedAt": self.started_wall}).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PidFile:
        """Raises ValueError for anything but what `encode` writes."""
        data: Any = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        proxy_id, parent_id = data.get("ProxyServiceID"), data.get("DestinationServiceID")
        pid, start_time = data.get("Pid"), data.get("StartTime")
        boot, started = data.get("BootID", ""), data.get("StartedAt", 0.0)
        if not (isinstance(proxy_id, str) and proxy_id and isinstance(parent_id, str) and parent_id):
            raise ValueError("no service IDs")
        if not (isinstance(pid, int) and pid > 0 and isinstance(start_time, int) and start_time >= 0):
            raise ValueError("no pid or start time")
        if not isinstance(boot, str) or not isinstance(started, int | float):
            raise ValueError("bad boot ID or start")
        return cls(proxy_id, parent_id, pid, start_time, boot, float(started))


def _stem(proxy_id: str) -> str:
    stem = quote(proxy_id, safe="")
    if stem.startswith("."):  # never "." or "..", nor a hidden file
        stem = "%2E" + stem[1:]
    if len(stem) > _MAX_STEM:
        stem = stem[:100] + "-" + hashlib.sha256(proxy_id.encode()).hexdigest()[:32]
    return stem


class ProxyFiles:
    """Paths and file operations under one proxies directory (created 0700 on first use)."""

    def __init__(self, directory: str, log_max_bytes: int = LOG_MAX_BYTES) -> None:
        self.directory = directory
        self.log_max_bytes = log_max_bytes

    def ensure_dir(self) -> None:
        make_private_dir(self.directory)

    def pid_path(self, proxy_id: str) -> str:
        return os.path.join(self.directory, _stem(proxy_id) + ".pid")

    def log_path(self, proxy_id: str) -> str:
        return os.path.join(self.directory, _stem(proxy_id) + ".log")

    def write_pidfile(self, record: PidFile) -> None:
        # no fsync: the file matters after an agent crash, which keeps the page cache;
        # after a machine crash the process it names is gone anyway
        write_private(self.pid_path(record.proxy_id), record.encode(), sync=False)

    def remove_pidfile(self, proxy_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_path(proxy_id))

    def remove_path(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def pidfiles(self) -> list[tuple[str, PidFile | None]]:
        """Every pidfile as (path, content); content None when it cannot be read."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        out: list[tuple[str, PidFile | None]] = []
        for name in names:
            if not name.endswith(".pid"):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "rb") as f:
                    out.append((path, PidFile.decode(f.read(1 << 16))))
            except (OSError, ValueError):
                out.append((path, None))
        return out

    def open_log(self, proxy_id: str) -> int:
        """A file descriptor appending to the proxy's log, rotated first when past the
        limit. The caller closes it once the child holds its own copy."""
        path = self.log_path(proxy_id)
        try:
            if os.stat(path).st_size > self.log_max_bytes:
                os.replace(path, path + ".1")
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fchmod(fd, 0o600)
        return fd
