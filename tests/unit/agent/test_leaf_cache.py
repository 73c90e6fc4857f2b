"""The agent's leaf cache against an in-memory CA (real certificates, no cluster):
renewal on its own, blocking wake-ups, re-issue on a root change, serving while the
servers are away, dropping a deregistered service."""

from __future__ import annotations

import asyncio
import datetime
import random

from mesh.agent.leaf_cache import LeafCache
from mesh.agent.leaf_files import LeafFiles
from mesh.agent.reads import ReadResult
from mesh.ca import manager
from mesh.catalog.errors import InvalidRequest, MeshError


class FakeServers:
    """What the servers would answer: roots (blocking on their index) and signatures."""

    def __init__(self, leaf_seconds: float) -> None:
        now = datetime.datetime.now(datetime.UTC)
        self.state = manager.initial_state(now, "", 1, {"LeafCertTTL": f"{leaf_seconds / 3600}h"})
        self.index, self.serial, self.signed = 5, 10, 0
        self.down = False
        self.registered = {"web", "api"}
        self._changed = asyncio.Event()

    def rotate(self) -> None:
        self.state = manager.rotate(self.state, self.state["config"], datetime.datetime.now(datetime.UTC), "", 99)
        self.index += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def read(self, name, params, opts) -> ReadResult:
        if self.down:
            raise MeshError("no server reachable")
        if opts.min_index >= self.index:
            try:
                await asyncio.wait_for(self._changed.wait(), min(opts.wait, 5))
            except TimeoutError:
                pass
        return ReadResult(self.index, manager.roots_api(self.state, self.index), True, 0)

    async def sign(self, args):
        if self.down:
            raise MeshError("no server reachable")
        if args["service"] not in self.registered:
            raise InvalidRequest("not registered")
        self.serial += 1
        self.signed += 1
        signed = manager.sign_csr(self.state, args["csr"], args["service"], "dc1", self.serial,
                                  datetime.datetime.now(datetime.UTC), "")
        return dict(signed, ModifyIndex=self.serial)


def run_with_cache(servers: FakeServers, owned: set[str], scenario, files: LeafFiles | None = None) -> None:
    """Runs `scenario(cache)` with the cache's roots watch going, then stops it."""
    async def sync() -> None:
        return None

    async def main() -> None:
        cache = LeafCache(servers, "dc1", "n1", lambda s: s in owned, sync, rng=random.Random(1), files=files)
        watch = asyncio.get_running_loop().create_task(cache.run())
        try:
            for _ in range(100):
                if cache.roots:
                    break
                await asyncio.sleep(0.01)
            await scenario(cache)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    asyncio.run(main())


def test_renews_on_its_own_and_wakes_blocking_requests():
    servers = FakeServers(leaf_seconds=2.0)

    async def scenario(cache: LeafCache) -> None:
        first, index = await cache.get("web")
        assert (await cache.get("web"))[0]["SerialNumber"] == first["SerialNumber"]  # cached
        started = asyncio.get_running_loop().time()
        second, new_index = await cache.get("web", min_index=index, wait=5)
        waited = asyncio.get_running_loop().time() - started
        assert new_index > index and second["SerialNumber"] != first["SerialNumber"]
        assert waited < 1.9  # before the 2 s leaf expired: at 60-90% of its life
        # no index newer than the current one: the wait runs out, the same leaf comes back
        same, same_index = await cache.get("web", min_index=new_index, wait=0.2)
        assert same_index == new_index and same["SerialNumber"] == second["SerialNumber"]

    run_with_cache(servers, {"web"}, scenario)


def test_a_root_change_reissues_at_once_and_outages_serve_the_cache():
    servers = FakeServers(leaf_seconds=3600)

    async def scenario(cache: LeafCache) -> None:
        first, index = await cache.get("web")
        servers.rotate()
        renewed, _ = await cache.get("web", min_index=index, wait=5)
        assert renewed["SerialNumber"] != first["SerialNumber"]
        assert cache.describe()[0]["RootID"] == servers.state["active_root_id"]
        servers.down = True
        during, _ = await cache.get("web")  # no server: the cached leaf
        assert during["SerialNumber"] == renewed["SerialNumber"]

    run_with_cache(servers, {"web"}, scenario)


def test_a_deregistered_service_loses_its_leaf():
    servers = FakeServers(leaf_seconds=3600)
    owned = {"web", "api"}

    async def scenario(cache: LeafCache) -> None:
        await cache.get("web")
        await cache.get("api")
        owned.discard("api")
        cache.forget_unowned()
        await asyncio.sleep(0.05)
        assert [leaf["Service"] for leaf in cache.describe()] == ["web"]

    run_with_cache(servers, owned, scenario)


def test_a_restarted_agent_serves_its_saved_leaf_and_roots_without_servers(tmp_path):
    servers = FakeServers(leaf_seconds=3600)
    saved = {}

    async def before(cache: LeafCache) -> None:
        saved["leaf"], _ = await cache.get("web")
        await cache.get("api")

    run_with_cache(servers, {"web", "api"}, before, LeafFiles(str(tmp_path)))
    assert oct((tmp_path / "connect" / "leaf-web.json").stat().st_mode & 0o777) == "0o600"  # it holds the key
    servers.down = True

    async def after(cache: LeafCache) -> None:
        leaf, _ = await cache.get("web")  # no server answers: from the data-dir
        assert leaf["SerialNumber"] == saved["leaf"]["SerialNumber"] and leaf["PrivateKeyPEM"]
        assert cache.roots["ActiveRootID"] == servers.state["active_root_id"]
        assert [lf["Service"] for lf in cache.describe()] == ["web"]

    run_with_cache(servers, {"web"}, after, LeafFiles(str(tmp_path)))  # api is no longer registered
    assert not (tmp_path / "connect" / "leaf-api.json").exists()
    (tmp_path / "connect" / "leaf-web.json").write_text("{not json")

    async def corrupt(cache: LeafCache) -> None:
        assert cache.describe() == []  # an unreadable file is skipped, not fatal

    run_with_cache(servers, {"web"}, corrupt, LeafFiles(str(tmp_path)))
