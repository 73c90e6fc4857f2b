"""Writing access log lines where Consul's AccessLogs settings say (stdout, stderr, a file).

The line is made by the pure `access_log` module; this one owns the output: it applies a
new AccessLogs block when the registration changes (parsed once, not per request),
reopens the file when the path changes, and never lets a full disk or a closed pipe
stop a request (a failed write is counted and dropped). Lines are buffered and flushed
within `FLUSH_SECONDS` (or when 64 KiB wait): a write system call per line was a tenth
of an http sidecar's time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .access_log import (
    AccessLogConfig,
    AccessLogConfigError,
    AccessRecord,
    format_line,
    parse_access_logs,
)

__all__ = ["AccessLog", "FLUSH_SECONDS"]

FLUSH_SECONDS = 0.5
_BUFFER = 64 * 1024


_DEFAULT_NAMES = {b"host": "host", b"user-agent": "user-agent", b"x-request-id": "x-request-id",
                  b"x-forwarded-for": "x-forwarded-for"}


class _DefaultHeaders:
    """The four request headers the default line shows, found by one scan of the raw
    pairs: a full lower-cased map per request cost more than the rest of the line."""

    __slots__ = ("_headers",)

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self._headers = headers

    def __call__(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, value in self._headers:
            if 4 <= len(name) <= 15:
                key = _DEFAULT_NAMES.get(name.lower())
                if key is not None and key not in found:
                    found[key] = value.decode("latin-1")
        return found


class AccessLog:
    def __init__(self, log: Any) -> None:
        self._log = log
        self._raw: Any = None
        self.config = AccessLogConfig()
        self._out: TextIO | None = None
        self._owned = False
        self.failures = 0
        self.lines = 0
        self._pending: list[str] = []
        self._pending_size = 0
        self._flush_handle: Any = None

    def configure(self, raw: Mapping[str, Any] | None) -> bool:
        """Apply the registration's AccessLogs block (free when unchanged); True when on."""
        if raw is self._raw or raw == self._raw:
            self._raw = raw
            return self._out is not None
        self._raw = raw
        self._close_file()
        try:
            self.config = parse_access_logs(raw or None)
        except AccessLogConfigError as exc:
            self._log.error("access_log_config_refused", error=str(exc))
            self.config = AccessLogConfig()
            return False
        if not self.config.enabled:
            return False
        if self.config.type == "file":
            try:
                fd = os.open(self.config.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._out = os.fdopen(fd, "a", buffering=_BUFFER)
                self._owned = True
            except OSError as exc:
                self._log.error("access_log_open_failed", path=self.config.path, error=exc.strerror or str(exc))
                return False
        else:
            self._out = sys.stderr if self.config.type == "stderr" else sys.stdout
        return True

    def record(self, direction: str, request: Any, ex: Any, started: float, *, source: str, destination: str,
               peer: str) -> None:
        out = self._out
        if out is None:
            return
        now = time.monotonic()
        record = AccessRecord(
            start_time=time.time() - (now - started), source=source, destination=destination,
            method=request.method, path=request.target.decode("latin-1"), protocol=f"HTTP/{request.version}",
            response_code=ex.status, duration=now - started, bytes_received=ex.bytes_in, bytes_sent=ex.bytes_out,
            upstream_host=ex.upstream_host, retries=ex.retries, trace_id=ex.trace_id, authz=ex.authz,
            authz_reason=ex.authz_reason, route=ex.route, response_flags=ex.flags, downstream_remote_address=peer,
            request_headers=request.header_map if self.config.render is not None else _DefaultHeaders(request.headers),
        )
        line = format_line(record, self.config)
        self._pending.append(line)
        self._pending_size += len(line)
        self.lines += 1
        if self._pending_size >= _BUFFER:
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_handle = None
        out, lines = self._out, self._pending
        if not lines:
            return
        self._pending, self._pending_size = [], 0
        if out is None:
            return
        try:
            out.write("\n".join(lines) + "\n")
            out.flush()
        except (OSError, ValueError):
            self.failures += len(lines)

    def _close_file(self) -> None:
        self.flush()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._out is not None and self._owned:
            try:
                self._out.close()
            except OSError:
                pass
        self._out, self._owned = None, False

    def close(self) -> None:
        self._close_file()
