"""Exporting finished spans over OTLP/HTTP (JSON), in batches, off the request path.

Requests only append to a bounded queue; a background task posts a batch every second
(or sooner when `BATCH` spans wait). A collector that is down or slow costs dropped
spans, counted, never a slower request: the queue is capped and each post has a
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp

from .tracing import FinishedSpan, otlp_span_json

__all__ = ["SpanExporter"]

BATCH = 256
MAX_QUEUED = 4096
POST_TIMEOUT = 5.0


class SpanExporter:
    def __init__(self, service: str, log: Any) -> None:
        self.service = service
        self._log = log
        self._queue: list[FinishedSpan] = []
        self._endpoint = ""
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.exported = 0
        self.dropped = 0

    def add(self, endpoint: str, span: FinishedSpan, service: str) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._endpoint, self.service = endpoint, service
        self._queue.append(span)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="span-export")
        if len(self._queue) >= BATCH:
            self._wake.set()

    async def _run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT)) as session:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                self._wake.clear()
                if not self._queue:
                    continue
                batch, self._queue = self._queue[:BATCH], self._queue[BATCH:]
                body = json.dumps(otlp_span_json(batch, self.service)).encode()
                try:
                    async with session.post(self._endpoint, data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                        if response.status >= 300:
                            raise aiohttp.ClientResponseError(response.request_info, (), status=response.status)
                    self.exported += len(batch)
                except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                    self.dropped += len(batch)
                    self._log.debug("span_export_failed", endpoint=self._endpoint, error=str(exc)[:200])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
