"""The watch hub wakes a waiter only for its own keys: exact keys, and prefix keys
(`kv*:web/`) for every touched `kv:` key under the prefix, with few or many prefixes."""

from __future__ import annotations

import asyncio

import pytest

from mesh.agent.watch import WatchHub


async def _woken(hub: WatchHub, keys: list[str], touched: list[str]) -> bool:
    waiter = asyncio.ensure_future(hub.wait(keys, 5.0))
    await asyncio.sleep(0)  # registered
    hub.notify(touched)
    done = bool((await asyncio.wait([waiter], timeout=0.05))[0])
    if not done:
        hub.notify(["*"])
    await waiter
    return done


@pytest.mark.parametrize("keys, touched, woken", [
    (["kv:web/a"], ["kvs", "kv:web/a"], True),
    (["kv:web/a"], ["kvs", "kv:web/ab"], False),
    (["kv*:web/"], ["kvs", "kv:web/a/b"], True),
    (["kv*:web/"], ["kvs", "kv:webby"], False),
    (["kv*:"], ["kv:anything"], True),
    (["kv*:web/"], ["services", "service.web"], False),
    (["services"], ["kv:services"], False),
    (["service.a*:b"], ["service.a*:b"], True),  # outside the prefix spaces, `*:` is part of a name
    (["service.a*:b"], ["service.a:bc"], False),
])
async def test_waiters_wake_for_their_own_keys_only(keys, touched, woken):
    hub = WatchHub()
    assert await _woken(hub, keys, touched) is woken
    assert hub.waiting() == 0


async def test_many_prefix_waiters_match_by_the_keys_own_prefixes():
    hub = WatchHub()
    waiters = {i: asyncio.ensure_future(hub.wait([f"kv*:w/{i}/"], 5.0)) for i in range(100)}
    await asyncio.sleep(0)
    assert hub.waiting() == 100
    hub.notify(["kv:w/7/x", "kv:w/42/"])
    await asyncio.wait(waiters.values(), timeout=0.05)
    assert sorted(i for i, w in waiters.items() if w.done()) == [7, 42]
    hub.notify(["*"])
    await asyncio.gather(*waiters.values())
    assert hub.waiting() == 0
