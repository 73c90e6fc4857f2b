"""Owning background tasks: every long-lived task belongs to a component that cancels
and awaits it on stop, so nothing outlives its owner."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

__all__ = ["cancel_all"]


async def cancel_all(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them to finish; their errors are not re-raised
    (the component is stopping) but a cancellation of the caller still propagates."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
