"""Writing access log lines: where Consul's AccessLogs settings say (stdout, stderr, a file).

The line itself is built by the pure `access_log` formatter; this module owns the file
handle, reopens it when the configured path changes, and never lets a full disk or a
closed pipe stop a request (a failed write is counted and dropped).
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["AccessLog"]


class AccessLog:
    def __init__(self, log: Any) -> None:
        self._log = log
        self._settings: Any = None
        self._enabled = False
        self._out: TextIO | None = None
        self._owned = False
        self.failures = 0

    def configure(self, settings: Any) -> bool:
        """Apply the registration's AccessLogs block (cheap when unchanged); True when on."""
        if settings is self._settings:
            return self._enabled
        self._settings = settings
        self._close_file()
        self._enabled = bool(settings and settings.get("Enabled"))
        if not self._enabled:
            return False
        kind = (settings.get("Type") or "stdout").lower()
        if kind == "file":
            path = settings.get("Path") or ""
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
                self._out = os.fdopen(fd, "a", buffering=1)
                self._owned = True
            except OSError as exc:
                self._log.error("access_log_open_failed", path=path, error=exc.strerror or str(exc))
                self._enabled = False
                return False
        else:
            self._out = sys.stderr if kind == "stderr" else sys.stdout
        return True

    def record(self, direction: str, config: Any, request: Any, ex: Any, started: float, *, source: str,
               destination: str, peer: str) -> None:
        out = self._out
        if out is None:
            return
        wall = time.time() - (time.monotonic() - started)
        record = {
            "start_time": datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "direction": direction,
            "source": source,
            "destination": destination,
            "method": request.method,
            "path": request.target.decode("latin-1"),
            "protocol": f"HTTP/{request.version}",
            "response_code": ex.status,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "bytes_received": ex.bytes_in,
            "bytes_sent": ex.bytes_out,
            "upstream_host": ex.upstream_host,
            "retries": ex.retries,
            "trace_id": ex.trace_id,
            "authz": ex.authz,
            "route": ex.route,
        }
        try:
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
        except (OSError, ValueError):
            self.failures += 1

    def _close_file(self) -> None:
        if self._out is not None and self._owned:
            try:
                self._out.close()
            except OSError:
                pass
        self._out, self._owned = None, False

    def close(self) -> None:
        self._close_file()
