"""`mesh lock [-n N] [-timeout D] [-verbose] [-child-exit-code] PREFIX COMMAND...`:
Consul's `consul lock`, on mesh.api.lock.

Acquires a lock (`-n 1`, the key `<PREFIX>/.lock`) or a semaphore (`-n N`, contender
keys under PREFIX and the `.lock` key), then runs COMMAND (its words joined by spaces)
through $SHELL (or /bin/sh) -c, with CONSUL_LOCK_HELD=true in its environment and stdin
closed unless -pass-stdin. When the lock is lost (the key no longer ours, or the session
gone) the command gets SIGTERM and, 5 seconds later, SIGKILL. SIGINT and SIGTERM to
`mesh lock` are passed on to the command and end the run the same way. Unlike `consul
lock`, the command runs in a process group of its own and the signals go to the whole
group, so the shell's children stop with it.

The lock is released on every exit, and the key removed when nobody else holds it.
Exit codes: 1 when the lock could not be set up or acquired (including `-timeout`
running out: `Shutdown triggered or timeout during lock acquisition`), as Consul's;
otherwise COMMAND's own exit status (128+N when signal N ended it, as when the lock was
lost and it was stopped). Consul's `consul lock` answers 0 there; `-child-exit-code`
gives Consul's meaning (2 when COMMAND exited non-zero, else 0) for scripts written for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from mesh.api.client import APIError
from mesh.api.lock import LOCK_KEY, Lock, LockError, LockInUse, Semaphore, join_key
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest

from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["run_lock", "KILL_GRACE"]

KILL_GRACE = 5.0  # Consul's lockKillGracePeriod, SIGTERM to SIGKILL
MONITOR_RETRY = 3  # Consul's defaultMonitorRetry: agent errors ridden out while holding
FORWARDED = (signal.SIGINT, signal.SIGTERM)


def _info(verbose: bool, text: str) -> None:
    if verbose:
        print(text, flush=True)


def _error(text: str) -> int:
    print(text, file=sys.stderr, flush=True)
    return 1


def _int_flag(flags: dict[str, Any], name: str, default: int) -> int:
    raw = flags.get(name)
    if raw is None:
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        raise UsageError(f'invalid value "{raw}" for flag -{name}: parse error') from None


class _Child:
    """The command, in its own process group."""

    def __init__(self, verbose: bool) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.verbose = verbose

    async def start(self, words: list[str], shell: bool, pass_stdin: bool) -> None:
        _info(self.verbose, "Starting handler")
        env = {**os.environ, "CONSUL_LOCK_HELD": "true"}
        stdin = None if pass_stdin else asyncio.subprocess.DEVNULL
        if shell:
            argv = [os.environ.get("SHELL") or "/bin/sh", "-c", " ".join(words)]
        else:
            argv = words
        self.proc = await asyncio.create_subprocess_exec(*argv, stdin=stdin, env=env, start_new_session=True)

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except OSError as exc:
            print(f"Warning, could not forward signal: {exc}", file=sys.stderr, flush=True)

    async def kill(self) -> None:
        """SIGTERM, then SIGKILL after the grace period."""
        if self.proc is None:
            _info(self.verbose, "No child process to kill")
            return
        if self.proc.returncode is not None:
            return
        _info(self.verbose, f"Terminating child pid {self.proc.pid}")
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), KILL_GRACE)
            _info(self.verbose, "Child terminated")
            return
        except TimeoutError:
            _info(self.verbose, f"Child did not exit after grace period of {KILL_GRACE:g}s")
        _info(self.verbose, f"Killing child pid {self.proc.pid}")
        self.signal(signal.SIGKILL)
        await self.proc.wait()


async def run_lock(argv: list[str]) -> int:
    flags, rest = _parse(argv, {"n": "str", "timeout": "str", "try": "str", "verbose": "bool",
                                "child-exit-code": "bool", "name": "str", "pass-stdin": "bool", "shell": "bool",
                                "monitor-retry": "str"})
    verbose = bool(flags.get("verbose"))
    limit = _int_flag(flags, "n", 1)
    if limit <= 0:
        return _error("Lock holder limit must be positive")
    if len(rest) < 2:
        return _error("Key prefix and child command must be specified")
    prefix, words = rest[0].lstrip("/"), rest[1:]
    raw_timeout = flags.get("timeout", flags.get("try"))
    try:
        timeout = parse_duration(raw_timeout, what="-timeout") if raw_timeout is not None else 0.0
    except InvalidRequest as exc:
        if str(raw_timeout).strip().startswith("-"):
            return _error("Timeout must be positive")
        raise UsageError(str(exc)) from None
    monitor_retry = _int_flag(flags, "monitor-retry", MONITOR_RETRY)
    if monitor_retry < 0:
        return _error("Number for 'monitor-retry' must be >= 0")
    name = flags.get("name") or f"Consul lock for '{' '.join(words)}' at '{prefix}'"

    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()
    child = _Child(verbose)

    def on_signal(sig: int) -> None:
        child.signal(sig)
        shutdown.set()

    for sig in FORWARDED:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with _client(flags) as c:
            try:
                await c.get("/v1/agent/self")
            except APIError as exc:
                return _error(f"Error querying Consul agent: {exc.message}")
            common: dict[str, Any] = {"session_name": name, "monitor_retries": monitor_retry}
            lock: Lock | Semaphore
            try:
                if limit == 1:
                    key = join_key(prefix, LOCK_KEY)
                    _info(verbose, f"Setting up lock at path: {key}")
                    lock = Lock(c, key, **common)
                else:
                    _info(verbose, f"Setting up semaphore (limit {limit}) at prefix: {prefix}")
                    lock = Semaphore(c, prefix, limit, **common)
            except ValueError as exc:
                return _error(f"Lock setup failed: {exc}")
            return await _hold(lock, child, shutdown, words, flags, timeout, verbose)
    finally:
        for sig in FORWARDED:
            loop.remove_signal_handler(sig)


async def _first(*aws: Any) -> None:
    """Wait for the first of some awaitables; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def _hold(lock: Lock | Semaphore, child: _Child, shutdown: asyncio.Event, words: list[str],
                flags: dict[str, Any], timeout: float, verbose: bool) -> int:
    _info(verbose, "Attempting lock acquisition")
    # -timeout > 0: give up after it (Consul's one-shot mode); 0: wait for ever
    acquiring = asyncio.ensure_future(lock.acquire(timeout if timeout > 0 else None))
    await _first(asyncio.shield(acquiring), shutdown.wait())
    if not acquiring.done():
        acquiring.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await acquiring
        return _error("Shutdown triggered or timeout during lock acquisition")
    try:
        got = acquiring.result()
    except (LockError, APIError) as exc:
        return _error(f"Lock acquisition failed: {getattr(exc, 'message', None) or exc}")
    if not got:
        return _error("Shutdown triggered or timeout during lock acquisition")

    child_code = 0
    own_code = 0  # COMMAND's own exit status (128+N when a signal ended it), mesh's default answer
    if shutdown.is_set():
        print("Shutdown triggered during lock acquisition", file=sys.stderr, flush=True)
    else:
        try:
            await child.start(words, flags.get("shell", True), bool(flags.get("pass-stdin")))
        except OSError as exc:
            print(f"Error starting handler: {exc}", file=sys.stderr, flush=True)
            child_code = own_code = 2
        if child.proc is not None:
            waiting = asyncio.ensure_future(child.proc.wait())
            await _first(asyncio.shield(waiting), shutdown.wait(), lock.wait_lost())
            if waiting.done():
                if child.proc.returncode != 0:
                    print(f"Error running handler: exit status {_status(child.proc.returncode)}",
                          file=sys.stderr, flush=True)
                    child_code = 2
                    own_code = _exit_code(child.proc.returncode)
                _info(verbose, "Child terminated, releasing lock")
            else:
                _info(verbose, "Shutdown triggered, killing child" if shutdown.is_set()
                      else "Lock lost, killing child")
                await child.kill()
                waiting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiting
                if child.proc.returncode is not None:
                    own_code = _exit_code(child.proc.returncode)

    try:
        await lock.release()
    except (LockError, APIError) as exc:
        return _error(f"Lock release failed: {getattr(exc, 'message', None) or exc}")
    try:
        await lock.destroy()
        _info(verbose, "Cleanup succeeded")
    except LockInUse:
        _info(verbose, "Cleanup aborted, lock in use")
    except (LockError, APIError) as exc:
        return _error(f"Lock cleanup failed: {getattr(exc, 'message', None) or exc}")
    return child_code if flags.get("child-exit-code") else own_code


def _exit_code(returncode: int) -> int:
    """A shell's way of reporting how a child ended: its status, or 128+N for signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"signal: {signal.Signals(-code).name}"
    return str(code)
