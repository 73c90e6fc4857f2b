"""The agent's DNS view: loading names, and never starving the event loop."""

from __future__ import annotations

import asyncio

from mesh.agent.dns_view import CatalogDNSView
from mesh.agent.reads import ReadResult
from mesh.dns.parse import Lookup


class InstantBackend:
    """An in-process backend whose reads never suspend (an empty catalog at index 0)."""

    def __init__(self) -> None:
        self.reads = 0

    async def read(self, name, params, opts, token=None):
        self.reads += 1
        return ReadResult(0, [], True, 0)


async def test_watchers_on_an_instant_backend_do_not_starve_the_loop():
    backend = InstantBackend()
    view = CatalogDNSView(backend, max_stale=60)
    await view.prepare(Lookup("service", "consul.", name="web"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1

    await asyncio.wait_for(ticker(), 2)  # would hang if the watcher never yielded
    assert ticks == 5
    assert view.service_entries("web") is None  # known to be empty: NXDOMAIN, not SERVFAIL
    await view.stop()


class Store:
    def __init__(self) -> None:
        self.index = 5
        self.value = [{"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"Service": "web"}, "Checks": []}]
        self.changed = asyncio.Event()

    async def read(self, name, params, opts, token=None):
        if opts.min_index >= self.index:
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), opts.wait)
            except TimeoutError:
                pass
        return ReadResult(self.index, self.value, True, 0)


async def test_view_follows_changes_and_tokens_invalidate():
    store = Store()
    view = CatalogDNSView(store, max_stale=60)
    lookup = Lookup("service", "consul.", name="web")
    await view.prepare(lookup)
    assert view.ready(lookup) and view.service_entries("web")[0]["Node"]["Node"] == "n1"
    token = view.token(lookup)
    assert view.token_valid(token)
    store.index, store.value = 6, []
    store.changed.set()
    for _ in range(100):
        await asyncio.sleep(0.01)
        if view.service_entries("web") is None:
            break
    assert view.service_entries("web") is None and not view.token_valid(token)
    await view.stop()
