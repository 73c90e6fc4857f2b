"""One asyncio runner per check kind: probe on a timer, gate through CheckState, report changes.

A runner owns no task: its owner (the agent's local state) starts `run()` in its own
TaskGroup and cancels that task to stop the check; `run()` cleans up what it holds (an
HTTP session, a script's process group) on the way out and never swallows the
cancellation. Results reach the owner through `on_update(check_id, status, output)`,
called synchronously on the event loop whenever the reported status or output differs
from the last report (the first report is compared with the definition's initial status
and an empty output). Time and randomness are injected so tests run in milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import ssl
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import aiohttp

from mesh.agent.local.definitions import (
    DEFAULT_OUTPUT_MAX_SIZE,
    CheckDefinition,
    output_limit,
    split_host_port,
)
from mesh.agent.logging import get_logger
from mesh.catalog.durations import format_duration
from mesh.catalog.errors import InvalidRequest, MeshError
from mesh.catalog.structs import CRITICAL, HEALTH_STATES, PASSING, WARNING

from .metrics import CHECK_RUNS, CHECK_SECONDS
from .state import CheckState

__all__ = [
    "Runner",
    "HTTPCheck",
    "TCPCheck",
    "ScriptCheck",
    "TTLCheck",
    "AliasCheck",
    "make_runner",
    "OnUpdate",
    "AliasFetch",
    "MIN_INTERVAL",
    "SCRIPTS_DISABLED",
]

OnUpdate = Callable[[str, str, str], None]
AliasFetch = Callable[[], Awaitable[list[str] | None]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MIN_INTERVAL = 1.0  # Consul raises shorter intervals to one second
ALIAS_INTERVAL = 1.0
SCRIPTS_DISABLED = "Scripts are disabled on this agent; to enable, configure 'enable_script_checks' to true"
USER_AGENT = "Consul Health Check"  # what Consul sends: apps filter health probes from logs by it

log = get_logger("checks")


class Runner:
    """The timer loop shared by the probing kinds (HTTP, TCP, script)."""

    kind = ""
    stagger = True  # first probe after a random part of the interval, so checks do not fire together
    thresholds = True  # feed results through CheckState; alias/TTL mirror a status set elsewhere

    def __init__(
        self,
        definition: CheckDefinition,
        on_update: OnUpdate,
        *,
        rng: random.Random | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        min_interval: float = MIN_INTERVAL,
        output_max_size: int = DEFAULT_OUTPUT_MAX_SIZE,
    ) -> None:
        self.definition = definition
        self.output_max_size = output_limit(definition.output_max_size, output_max_size)
        self.check_id = definition.check_id
        self._on_update = on_update
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self.interval = max(definition.interval, min_interval)
        # a probe never outlives its interval: the next one would start on top of it
        self.timeout = min(definition.timeout, self.interval) if self.interval else definition.timeout
        self.state = CheckState(
            definition.status,
            success_before_passing=definition.success_before_passing,
            failures_before_warning=definition.failures_before_warning,
            failures_before_critical=definition.failures_before_critical,
        )
        self.status = definition.status
        self.output = ""

    async def run(self) -> None:
        """Probe every `interval` until cancelled."""
        if self.stagger:
            await self._sleep(self._rng.random() * self.interval)
        while True:
            await self.check_once()
            await self._sleep(self.interval)

    async def check_once(self) -> tuple[str, str] | None:
        """One probe, gated and reported; returns the probe's raw result."""
        start = self._clock()
        try:
            result = await self.probe()
        except Exception as exc:  # a bug in a probe must not stop the check for good
            log.exception("check_probe_failed", check_id=self.check_id, kind=self.kind)
            result = CRITICAL, f"check failed: {exc}"
        CHECK_SECONDS.labels(self.kind).observe(max(0.0, self._clock() - start))
        if result is None:
            return None
        status, output = result
        CHECK_RUNS.labels(self.kind, status).inc()
        report = self.state.observe(status, output) if self.thresholds else result
        if report is not None:
            self._publish(*report)
        return result

    async def probe(self) -> tuple[str, str] | None:
        raise NotImplementedError

    def _publish(self, status: str, output: str) -> None:
        if (status, output) == (self.status, self.output):
            return
        changed = status != self.status
        self.status, self.output = status, output
        if changed:
            level = log.warning if status == CRITICAL else log.info
            level("check_status_changed", check_id=self.check_id, status=status, output=output[:200])
        try:
            self._on_update(self.check_id, status, output)
        except Exception:  # the owner's bug must not kill the check loop
            log.exception("check_update_callback_failed", check_id=self.check_id)


def _http_status(code: int) -> str:
    if 200 <= code < 300:
        return PASSING
    if code == 429:  # Too Many Requests: alive but shedding load
        return WARNING
    return CRITICAL


async def _read_head(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The first `limit` bytes of a body; the rest is never read."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await stream.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


class HTTPCheck(Runner):
    """2xx passing, 429 warning, anything else (or no answer in time) critical."""

    kind = "http"

    def __init__(
        self,
        definition: CheckDefinition,
        on_update: OnUpdate,
        *,
        tls_context: ssl.SSLContext | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(definition, on_update, **kwargs)
        self._tls_context = tls_context  # the agent's CA bundle; None: the system's
        self._session: aiohttp.ClientSession | None = None
        names = {k.lower() for k in definition.header}
        self._headers: list[tuple[str, str]] = []
        if "user-agent" not in names:
            self._headers.append(("User-Agent", USER_AGENT))
        if "accept" not in names:
            self._headers.append(("Accept", "text/plain, text/*, */*"))
        self._headers.extend((k, v) for k, values in definition.header.items() for v in values)

    @staticmethod
    def _new_session() -> aiohttp.ClientSession:
        # no keep-alive, as Consul: a probe must open a connection the way a client would
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=True,
        )

    async def run(self) -> None:
        self._session = self._new_session()
        try:
            await super().run()
        finally:
            session, self._session = self._session, None
            await session.close()

    async def probe(self) -> tuple[str, str]:
        if self._session is not None:
            return await self._request(self._session)
        async with self._new_session() as session:
            return await self._request(session)

    async def _request(self, session: aiohttp.ClientSession) -> tuple[str, str]:
        d = self.definition
        prefix = f"HTTP {d.method} {d.http}"
        extra: dict[str, Any] = {}
        if d.tls_skip_verify:
            extra["ssl"] = False
        elif self._tls_context is not None:
            extra["ssl"] = self._tls_context
        if d.tls_server_name:
            extra["server_hostname"] = d.tls_server_name
        try:
            async with asyncio.timeout(self.timeout):
                async with session.request(
                    d.method,
                    d.http,
                    headers=self._headers,
                    data=d.body.encode() if d.body else None,
                    allow_redirects=not d.disable_redirects,
                    **extra,
                ) as resp:
                    body = await _read_head(resp.content, self.output_max_size)
                    reason = resp.reason or _phrase(resp.status)
                    text = body.decode("utf-8", errors="replace")
                    return _http_status(resp.status), f"{prefix}: {resp.status} {reason} Output: {text}"
        except TimeoutError:
            return CRITICAL, f"{prefix}: timed out after {format_duration(self.timeout)}"
        except aiohttp.ClientConnectorError as exc:
            return CRITICAL, f"{prefix}: dial {exc.host}:{exc.port}: {_os_error(exc.os_error)}"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return CRITICAL, f"{prefix}: {exc or type(exc).__name__}"


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


class TCPCheck(Runner):
    """Passing when a TCP connection opens within the timeout (every resolved address is tried)."""

    kind = "tcp"

    async def probe(self) -> tuple[str, str]:
        addr = self.definition.tcp
        host, port = split_host_port(addr)
        try:
            async with asyncio.timeout(self.timeout):
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except TimeoutError:
            return CRITICAL, f"TCP connect {addr}: timed out after {format_duration(self.timeout)}"
        except OSError as exc:
            return CRITICAL, f"TCP connect {addr}: {_os_error(exc)}"
        return PASSING, f"TCP connect {addr}: Success"


def _os_error(exc: OSError) -> str:
    """"Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    if isinstance(exc, ssl.SSLError):  # its errno is OpenSSL's, not the OS's
        return f"tls: {exc}"
    if exc.errno and exc.errno > 0:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__  # resolver errors have negative codes


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the script and whatever it started: it runs as the leader of its own
    process group, so the group ID is its PID."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


async def _read_tail(stream: asyncio.StreamReader, limit: int) -> tuple[bytes, int]:
    """The last `limit` bytes of a stream and its total length (the end of a script's
    output is where its error is)."""
    tail = bytearray()
    total = 0
    while chunk := await stream.read(65536):
        total += len(chunk)
        tail += chunk
        if len(tail) > limit:
            del tail[: len(tail) - limit]
    return bytes(tail), total


class ScriptCheck(Runner):
    """Runs `args` (no shell): exit 0 passing, 1 warning, anything else critical; the
    combined stdout and stderr is the output."""

    kind = "script"

    async def probe(self) -> tuple[str, str]:
        d = self.definition
        try:
            proc = await asyncio.create_subprocess_exec(
                *d.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            return CRITICAL, f"Failed to invoke check {d.args[0]!r}: {_os_error(exc)}"
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(self.timeout):
                tail, total = await _read_tail(proc.stdout, self.output_max_size)
                code = await proc.wait()
        except TimeoutError:
            log.warning("check_script_timed_out", check_id=self.check_id, pid=proc.pid)
            return CRITICAL, f"Timed out ({format_duration(self.timeout)}) running check"
        finally:
            if proc.returncode is None:  # timed out or cancelled: no orphans, no zombies
                _kill_group(proc)
                await proc.wait()
        output = tail.decode("utf-8", errors="replace")
        if total > len(tail):
            output = f"Captured {len(tail)} of {total} bytes\n...\n{output}"
        if code == 0:
            return PASSING, output
        if code == 1:
            return WARNING, output
        return CRITICAL, output


class TTLCheck(Runner):
    """A check the application reports on itself; critical once `ttl` passes without a report."""

    kind = "ttl"
    thresholds = False

    def __init__(self, definition: CheckDefinition, on_update: OnUpdate, **kwargs: Any) -> None:
        super().__init__(definition, on_update, **kwargs)
        self.ttl = definition.ttl
        self._deadline = self._clock() + self.ttl
        self._expired = False
        self._last_output = ""

    def update(self, status: str, output: str = "") -> None:
        """A report from /v1/agent/check/pass|warn|fail|update: resets the TTL."""
        if status not in HEALTH_STATES:
            raise InvalidRequest(f"Unknown check status {status!r}: must be passing, warning or critical")
        limit = self.output_max_size
        if len(output) > limit:
            output = f"{output[:limit]} ... (captured {limit} of {len(output)} bytes)"
        self._deadline = self._clock() + self.ttl
        self._expired = False
        self._last_output = output
        CHECK_RUNS.labels(self.kind, status).inc()
        self._publish(status, output)

    async def run(self) -> None:
        while True:
            remaining = self._deadline - self._clock()
            if remaining > 0:
                await self._sleep(remaining)  # an update moves the deadline: look again on waking
                continue
            if not self._expired:
                self._expired = True
                log.warning("check_ttl_missed", check_id=self.check_id)
                CHECK_RUNS.labels(self.kind, CRITICAL).inc()
                output = "TTL expired"
                if self._last_output:
                    output += f" (last output before timeout follows): {self._last_output}"
                self._publish(CRITICAL, output)
            await self._sleep(self.ttl)


class AliasCheck(Runner):
    """Mirrors the worst status of another service's (or node's) checks."""

    kind = "alias"
    stagger = False
    thresholds = False

    def __init__(
        self, definition: CheckDefinition, on_update: OnUpdate, *, fetch: AliasFetch, **kwargs: Any
    ) -> None:
        kwargs["min_interval"] = 0.0
        super().__init__(definition, on_update, **kwargs)
        self._fetch = fetch
        self.interval = definition.interval or ALIAS_INTERVAL
        self.timeout = min(definition.timeout, max(self.interval, 1.0))

    async def probe(self) -> tuple[str, str] | None:
        try:
            async with asyncio.timeout(self.timeout):
                statuses = await self._fetch()
        except (TimeoutError, OSError, MeshError) as exc:
            # the servers being unreachable says nothing about the aliased service
            log.warning("check_alias_unreadable", check_id=self.check_id, error=str(exc))
            return None
        target = self.definition.alias_service or f"node {self.definition.alias_node}"
        if statuses is None:
            return CRITICAL, f"Aliased service {target!r} not found"
        if CRITICAL in statuses:
            return CRITICAL, f"At least one check of {target!r} is critical"
        if WARNING in statuses:
            return WARNING, f"At least one check of {target!r} is warning"
        return PASSING, "All checks passing." if statuses else "No checks found."


def make_runner(
    definition: CheckDefinition,
    on_update: OnUpdate,
    *,
    enable_script_checks: bool,
    alias_fetch: AliasFetch | None = None,
    rng: random.Random | None = None,
    clock: Clock | None = None,
    sleep: Sleep | None = None,
    min_interval: float = MIN_INTERVAL,
    tls_context: ssl.SSLContext | None = None,
    output_max_size: int = DEFAULT_OUTPUT_MAX_SIZE,
) -> Runner | None:
    """The runner for a check, or None for a check with nothing to run (its status
    changes only through the API). The caller starts `run()` and cancels it to stop.
    `output_max_size` is the agent's check_output_max_size: the most output any check
    keeps, whatever its own OutputMaxSize says."""
    kwargs: dict[str, Any] = {"rng": rng, "min_interval": min_interval, "output_max_size": output_max_size}
    if clock is not None:
        kwargs["clock"] = clock
    if sleep is not None:
        kwargs["sleep"] = sleep
    kind = definition.kind
    if kind == "":
        return None
    if kind == "http":
        return HTTPCheck(definition, on_update, tls_context=tls_context, **kwargs)
    if kind == "tcp":
        return TCPCheck(definition, on_update, **kwargs)
    if kind == "script":
        if not enable_script_checks:
            raise InvalidRequest(SCRIPTS_DISABLED)
        return ScriptCheck(definition, on_update, **kwargs)
    if kind == "ttl":
        return TTLCheck(definition, on_update, **kwargs)
    if kind == "alias":
        if alias_fetch is None:
            raise ValueError("an alias check needs alias_fetch")
        return AliasCheck(definition, on_update, fetch=alias_fetch, **kwargs)
    if kind == "grpc":
        raise InvalidRequest("GRPC checks are not supported yet")
    raise InvalidRequest(f"Unknown check type {kind!r}")
