"""structlog set-up: key=value lines on a terminal, JSON with -log-json.

Library logs (pysyncobj, aiohttp) go through the standard logging module; they are
routed into the same renderer so an operator sees one format.

Bad input from the network must not flood the log: anyone who can reach a port can
send a malformed request a thousand times a second. `RateLimiter` (pure, clock
injected) and `log_limited` let each kind of bad input be logged as one line without
a traceback, at most a few times a minute, with a count of the lines it held back.
aiohttp's own "Error handling request" (a traceback at error level for every
unparseable request) goes through the same limiter as one debug line.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

__all__ = ["configure", "get_logger", "RateLimiter", "log_limited", "BAD_INPUT", "per_peer_limiter"]

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "err": logging.ERROR}


class RateLimiter:
    """A token bucket per key: `burst` lines at once, then one every `1/per_second`
    seconds. `allow(key)` says whether to log now and how many lines of that key were
    dropped since the last one logged. Keys are bounded (`max_keys`, least recently
    used dropped first), so keying by a remote address cannot grow it without end."""

    def __init__(self, per_second: float = 1 / 10, burst: int = 5, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        if per_second <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("per_second > 0, burst >= 1 and max_keys >= 1")
        self.per_second = per_second
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # key -> [tokens, last refill time, lines dropped since the last one allowed]
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()

    def allow(self, key: Hashable = "") -> int | None:
        """None: drop this line. Otherwise log it: the number is how many lines of
        this key were dropped before it (0 for none)."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [float(self.burst), now, 0.0]
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(float(self.burst), bucket[0] + max(0.0, now - bucket[1]) * self.per_second)
            bucket[1] = now
        if bucket[0] < 1:
            bucket[2] += 1
            return None
        bucket[0] -= 1
        dropped, bucket[2] = int(bucket[2]), 0.0
        return dropped


# shared by every place that logs input it refused, keyed by event name
BAD_INPUT = RateLimiter()


def per_peer_limiter() -> RateLimiter:
    """One line a minute per (event, peer) key, for what strangers on the network cause;
    bounded in keys so a scan from many addresses cannot grow it."""
    return RateLimiter(per_second=1 / 60, burst=1, max_keys=4096)


def log_limited(logger: Any, level: str, event: str, *, key: Hashable | None = None,
                limiter: RateLimiter | None = None, **fields: Any) -> bool:
    """`logger.<level>(event, **fields)` unless `limiter` (BAD_INPUT by default) holds
    it back for `key` (the event by default); adds `suppressed=N` when lines were
    dropped before it. Never adds a traceback: pass `exc_info` yourself for the
    truly unexpected. Returns whether it logged."""
    dropped = (limiter or BAD_INPUT).allow(event if key is None else key)
    if dropped is None:
        return False
    if dropped:
        fields["suppressed"] = dropped
    getattr(logger, level)(event, **fields)
    return True


def _exception_of(record: logging.LogRecord) -> BaseException | None:
    exc_info = record.exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        return exc_info[1]
    return exc_info if isinstance(exc_info, BaseException) else None


class _AiohttpServerFilter(logging.Filter):
    """aiohttp's server logs every request it cannot parse with a traceback at error
    level; those are bad input (one debug line, rate-limited). Anything else it
    logs keeps its traceback, rate-limited too."""

    def __init__(self, limiter: RateLimiter, logger: Any = None) -> None:
        super().__init__()
        self._limiter = limiter
        self._log = logger if logger is not None else get_logger("http")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = _exception_of(record)
        if isinstance(exc, HttpProcessingError):
            message = str(exc.message or exc).strip().splitlines()
            log_limited(self._log, "debug", "http_malformed_request", limiter=self._limiter,
                        error=type(exc).__name__, detail=(message[0] if message else "")[:200])
            return False
        if record.levelno >= logging.ERROR:
            dropped = self._limiter.allow(("aiohttp", record.msg))
            if dropped is None:
                return False
            if dropped:
                record.msg = f"{record.msg} ({dropped} similar messages suppressed)"
        return True


def configure(level: str = "info", json: bool = False) -> None:
    lvl = _LEVELS.get(level.lower(), logging.INFO)
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
                                            foreign_pre_chain=shared)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO) if lvl > logging.DEBUG else logging.DEBUG)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    server.filters[:] = [f for f in server.filters if not isinstance(f, _AiohttpServerFilter)]
    server.addFilter(_AiohttpServerFilter(BAD_INPUT))


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: modules create theirs at import, before `configure` runs, so it
    must not bind (and freeze) the default configuration then."""
    return structlog.get_logger(component=component)  # type: ignore[no-any-return]
