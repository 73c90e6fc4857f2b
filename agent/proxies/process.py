"""One proxy process as the supervisor holds it: launched (our child) or adopted.

Launched processes are started with `subprocess.Popen`, not asyncio's subprocess API:
asyncio's transport kills its child when it is closed or collected, and a proxy must
outlive its agent, crashed or not. The child gets its own session (so Ctrl-C on the
agent's terminal and the agent's death leave it alone), stdin from /dev/null and its
log file as stdout and stderr (never a pipe to the agent). It is reaped by `poll()`.

An adopted process was started by a previous agent: it is not our child and cannot be
waited for, so `poll()` looks at /proc (pid + start time) instead, and its exit status
is unknown. Signals go through a pidfd when the kernel has them (a pidfd cannot be
redirected to a recycled pid); otherwise the identity is checked just before `kill`.
A pidfd is also what wakes the supervisor the moment a process ends (`watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

from .plan import Exit
from .procfs import read_proc, same_process

__all__ = ["ProxyHandle", "spawn", "adopt"]


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd on this kernel or platform, or already gone
        return None


class ProxyHandle:
    """A live proxy process: signal it, ask whether it has ended, be woken when it does."""

    def __init__(self, pid: int, start_time: int, child: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self.start_time = start_time
        self.child = child
        self.pidfd: int | None = None
        self._watched: asyncio.AbstractEventLoop | None = None

    @property
    def adopted(self) -> bool:
        return self.child is None

    def poll(self, now: float) -> Exit | None:
        """None while the process runs; how it ended once it has (a child is reaped)."""
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return None
            if code < 0:
                return Exit(at=now, signal=-code)
            return Exit(at=now, code=code)
        if same_process(read_proc(self.pid), self.start_time):
            return None
        return Exit(at=now, reason="gone (not a child of this agent: exit status unknown)")

    def send(self, sig: int) -> bool:
        """Deliver `sig`; False when the process has already ended."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, sig)
                return True
            except ProcessLookupError:
                return False
            except OSError:
                pass  # fall through to the pid-based paths
        if self.child is not None:
            if self.child.poll() is not None:
                return False
            self.child.send_signal(sig)
            return True
        if not same_process(read_proc(self.pid), self.start_time):
            return False
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> bool:
        """SIGKILL the process and, for our own child, its process group (it leads a
        session of its own, so the group is whatever it started)."""
        sent = self.send(signal.SIGKILL)
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(OSError):  # the group's ID is our unreaped child's pid
                os.killpg(self.pid, signal.SIGKILL)
        return sent

    def watch(self, loop: asyncio.AbstractEventLoop, on_exit: Callable[[], None]) -> None:
        """Call `on_exit` on the loop when the process ends (pidfds only; without them
        the supervisor's tick notices within a second)."""
        if self.pidfd is None:
            self.pidfd = _pidfd(self.pid)
            if self.pidfd is not None and self.adopted and not same_process(read_proc(self.pid), self.start_time):
                self.close()  # the pid changed hands between the check and the open
                return
        if self.pidfd is not None and self._watched is None:
            loop.add_reader(self.pidfd, on_exit)
            self._watched = loop

    def close(self) -> None:
        """Release the pidfd (the process itself is left alone)."""
        if self.pidfd is None:
            return
        if self._watched is not None:
            with contextlib.suppress(Exception):  # a closed loop has nothing to remove
                self._watched.remove_reader(self.pidfd)
            self._watched = None
        os.close(self.pidfd)
        self.pidfd = None


def spawn(argv: Sequence[str], env: Mapping[str, str], log_fd: int, cwd: str = "/") -> ProxyHandle:
    """Start a proxy in its own session with `log_fd` as stdout and stderr. Raises
    OSError when it cannot be started (the caller counts that as a crash)."""
    child = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                             env=dict(env), cwd=cwd, close_fds=True, start_new_session=True)
    info = read_proc(child.pid)
    # our unreaped child cannot lose its pid; /proc is only missing off Linux
    start_time = info.start_time if info is not None else int(time.monotonic() * 100)
    return ProxyHandle(child.pid, start_time, child)


def adopt(pid: int, start_time: int) -> ProxyHandle:
    """Take over a verified process of a previous agent (see procfs.adoption_problem)."""
    return ProxyHandle(pid, start_time, None)
