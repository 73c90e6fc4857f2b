"""Sidecar proxies run inside the test's event loop, configured by a FakeAgent."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from mesh.api.client import Client
from mesh.proxy.app import Proxy, ProxyOptions


async def start_proxy(mesh: Any, parent: str) -> Proxy:
    """Start the sidecar of `parent` as `mesh.agent` describes it and wait until it is
    ready (its readiness gauge), at most 10 s; `mesh` keeps it in `proxies`, its stop
    event in `stops` and its task in `tasks` (set the stops and gather the tasks to end)."""
    client = Client(mesh.agent.address)
    proxy = Proxy(client, ProxyOptions(sidecar_for=parent, supervised=True, drain_timeout=1),
                  log=structlog.get_logger("test-proxy"))
    stop = asyncio.Event()
    mesh.proxies[parent], mesh.stops[parent] = proxy, stop

    async def run() -> None:
        try:
            await proxy.run(stop)
        finally:
            await client.close()

    mesh.tasks[parent] = asyncio.get_running_loop().create_task(run())
    deadline = time.monotonic() + 10
    while proxy.metrics.ready._value.get() != 1:  # noqa: SLF001 - the gauge is the readiness signal
        if mesh.tasks[parent].done():
            mesh.tasks[parent].result()
        assert time.monotonic() < deadline, f"{parent} proxy not ready: {proxy.builder.problem}"
        await asyncio.sleep(0.02)
    return proxy
