"""structlog set-up: key=value lines on a terminal, JSON with -log-json.

Library logs (pysyncobj, aiohttp) go through the standard logging module; they are
routed into the same renderer so an operator sees one format.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure", "get_logger"]

_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "err": logging.ERROR}


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


def get_logger(component: str) -> structlog.typing.FilteringBoundLogger:
    """A lazy logger: modules create theirs at import, before `configure` runs, so it
    must not bind (and freeze) the default configuration then."""
    return structlog.get_logger(component=component)  # type: ignore[no-any-return]
