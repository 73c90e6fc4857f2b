"""mesh.api.lock: the pure decisions of Consul's lock and semaphore algorithms, then the
Lock and Semaphore classes against a small in-memory KV + session agent (real HTTP,
real blocking queries) so their I/O is checked without a mesh agent."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import pytest
from aiohttp import web

from mesh.api.client import Client
from mesh.api.errors import DecodeError
from mesh.api.lock import (
    LOCK_FLAG,
    SEMAPHORE_FLAG,
    Lock,
    LockConflict,
    LockError,
    Semaphore,
    decode_semaphore,
    encode_semaphore,
    join_key,
    kv_path,
    lock_step,
    parse_pairs,
    prune_holders,
    semaphore_holds,
    semaphore_step,
)
from mesh.catalog.kv import KVEntry

A, B, C = "aaaaaaaa-0000-0000-0000-000000000001", "bbbbbbbb-0000-0000-0000-000000000002", \
    "cccccccc-0000-0000-0000-000000000003"


# ------------------------------------------------------------------ pure decisions


def test_constants_are_consuls():
    assert LOCK_FLAG == 0x2DDCCBC058A50C18 == 3304740253564472344
    assert SEMAPHORE_FLAG == 0xE0F69A2BAA414DE0 == 16210313421097356768


def test_join_key_is_go_path_join():
    assert join_key("svc/leader", ".lock") == "svc/leader/.lock"
    assert join_key("svc/leader/", ".lock") == "svc/leader/.lock"
    assert join_key("/svc//x", "s1") == "svc/x/s1"
    assert join_key("", ".lock") == ".lock"


def test_kv_path_quotes_everything_but_slashes():
    assert kv_path("a/b c?d#e%f") == "/v1/kv/a/b%20c%3Fd%23e%25f"


def test_parse_pairs():
    body = [{"Key": "k", "Value": base64.b64encode(b"\x00hi").decode(), "Flags": 7, "Session": A,
             "CreateIndex": 3, "ModifyIndex": 9, "LockIndex": 1},
            {"Key": "empty", "Value": None, "Flags": 0, "CreateIndex": 4, "ModifyIndex": 4, "LockIndex": 0}]
    assert parse_pairs(body) == [KVEntry("k", b"\x00hi", 7, A, lock_index=1, create_index=3, modify_index=9),
                                 KVEntry("empty", b"", 0, "", lock_index=0, create_index=4, modify_index=4)]
    assert parse_pairs(None) == []
    for bad in ({"Key": "k"}, [{"Value": "aGk="}], [{"Key": "k", "Value": "not base64!"}],
                [{"Key": "k", "Flags": -1}], [{"Key": "k", "Flags": "7"}], [{"Key": "k", "Session": 3}]):
        with pytest.raises(DecodeError):
            parse_pairs(bad)


def test_lock_step():
    assert lock_step(None, A) == "acquire"
    assert lock_step(KVEntry("k", flags=LOCK_FLAG), A) == "acquire"
    assert lock_step(KVEntry("k", flags=LOCK_FLAG, session=A), A) == "held"
    assert lock_step(KVEntry("k", flags=LOCK_FLAG, session=B), A) == "wait"
    assert lock_step(KVEntry("k", flags=0, session=""), A) == "conflict"
    assert lock_step(KVEntry("k", flags=SEMAPHORE_FLAG, session=B), A) == "conflict"


def test_semaphore_encoding_round_trips_as_go_writes_it():
    value = encode_semaphore(2, {B, A})
    assert value == b'{"Limit":2,"Holders":{"' + A.encode() + b'":true,"' + B.encode() + b'":true}}'
    assert decode_semaphore(KVEntry(".lock", value, SEMAPHORE_FLAG), 5) == (2, frozenset({A, B}))
    assert decode_semaphore(None, 3) == (3, frozenset())
    assert decode_semaphore(KVEntry(".lock", b""), 3) == (3, frozenset())
    # Go's decoder takes a null Holders (a nil map) and false entries are no holders
    assert decode_semaphore(KVEntry(".lock", b'{"Limit":1,"Holders":null}'), 3) == (1, frozenset())
    assert decode_semaphore(KVEntry(".lock", b'{"Limit":1,"Holders":{"x":false}}'), 3) == (1, frozenset())
    for bad in (b"nope", b"[1]", b'{"Limit":"2"}', b'{"Limit":2,"Holders":[]}'):
        with pytest.raises(LockError):
            decode_semaphore(KVEntry(".lock", bad), 2)


def _contender(prefix: str, session: str) -> KVEntry:
    return KVEntry(f"{prefix}/{session}", b"", SEMAPHORE_FLAG, session)


def test_prune_holders_drops_sessions_without_a_key():
    pairs = [_contender("p", A), _contender("p", B), KVEntry("p/.lock", b"", SEMAPHORE_FLAG)]
    assert prune_holders({A, B, C}, pairs) == {A, B}
    assert prune_holders({C}, pairs) == frozenset()
    assert prune_holders(set(), pairs) == frozenset()


def _lock_pair(limit: int, holders: set[str], index: int = 10) -> KVEntry:
    return KVEntry("p/.lock", encode_semaphore(limit, holders), SEMAPHORE_FLAG, "", create_index=5, modify_index=index)


def test_semaphore_step_acquires_a_free_slot_by_cas():
    pairs = [_contender("p", A)]
    step = semaphore_step(pairs, "p", 2, A)
    assert step.kind == "acquire" and step.cas == 0 and step.holders == {A}
    assert json.loads(step.value) == {"Limit": 2, "Holders": {A: True}}
    pairs = [_lock_pair(2, {B}, 42), _contender("p", A), _contender("p", B)]
    step = semaphore_step(pairs, "p", 2, A)
    assert step.kind == "acquire" and step.cas == 42 and step.holders == {A, B}


def test_semaphore_step_waits_when_full_and_prunes_the_dead():
    pairs = [_lock_pair(2, {B, C}), _contender("p", A), _contender("p", B), _contender("p", C)]
    assert semaphore_step(pairs, "p", 2, A).kind == "full"
    # C's session is gone (its contender key went with it): its slot is free again
    pairs = [_lock_pair(2, {B, C}), _contender("p", A), _contender("p", B)]
    step = semaphore_step(pairs, "p", 2, A)
    assert step.kind == "acquire" and step.holders == {A, B}


def test_semaphore_step_conflicts():
    assert semaphore_step([KVEntry("p/.lock", b"{}", LOCK_FLAG, A)], "p", 2, A).kind == "conflict"
    step = semaphore_step([_lock_pair(3, set()), _contender("p", A)], "p", 2, A)
    assert step.kind == "limit" and step.limit == 3
    assert semaphore_step([_lock_pair(2, {A}), _contender("p", A)], "p", 2, A).kind == "held"


def test_semaphore_holds():
    pairs = [_lock_pair(2, {A, B}), _contender("p", A)]
    assert semaphore_holds(pairs, "p", A)
    assert not semaphore_holds(pairs, "p", B)  # listed, but its session holds no key any more
    assert not semaphore_holds([_contender("p", A)], "p", A)  # the .lock key is gone
    assert not semaphore_holds([KVEntry("p/.lock", b"garbage", SEMAPHORE_FLAG), _contender("p", A)], "p", A)


# ------------------------------------------------------------------ a tiny agent


class KVAgent:
    """/v1/kv and /v1/session as Consul answers them, in memory: one global index,
    blocking GETs, acquire/release/cas/flags, session TTLs left to the test (renew
    answers 404 once `expire()` dropped a session)."""

    def __init__(self) -> None:
        self.index = 1
        self.kv: dict[str, dict] = {}
        self.tombstones: dict[str, int] = {}  # deleted key -> index: blocking lists see deletes
        self.sessions: dict[str, dict] = {}
        self.changed = asyncio.Condition()
        self.renews = 0

    async def _bump(self) -> int:
        async with self.changed:
            self.index += 1
            self.changed.notify_all()
        return self.index

    def _select(self, key: str, recurse: bool) -> list[dict]:
        if recurse:
            return [e for k, e in sorted(self.kv.items()) if k.startswith(key)]
        return [self.kv[key]] if key in self.kv else []

    async def get(self, request: web.Request) -> web.Response:
        key, q = request.match_info["key"], request.query
        recurse = "recurse" in q
        want = int(q.get("index", "0"))
        wait = float(q.get("wait", "1000ms").removesuffix("ms")) / 1000

        def index_of() -> int:
            found = [e["ModifyIndex"] for e in self._select(key, recurse)]
            found += [i for k, i in self.tombstones.items() if (k.startswith(key) if recurse else k == key)]
            return max(found, default=self.index)

        if want:
            async with self.changed:
                with _suppress_timeout():
                    await asyncio.wait_for(self.changed.wait_for(lambda: index_of() > want), wait)
        found = self._select(key, recurse)
        headers = {"X-Consul-Index": str(max(1, index_of()))}
        if not found:
            return web.Response(status=404, headers=headers)
        body = [{**e, "Value": base64.b64encode(e["Value"]).decode() if e["Value"] else None} for e in found]
        return web.json_response(body, headers=headers)

    async def put(self, request: web.Request) -> web.Response:
        key, q = request.match_info["key"], request.query
        value = await request.read()
        existing = self.kv.get(key)
        flags = int(q.get("flags", existing["Flags"] if existing else 0))
        if "cas" in q:
            cas = int(q["cas"])
            if (cas == 0 and existing) or (cas and (not existing or existing["ModifyIndex"] != cas)):
                return web.json_response(False)
        session = existing.get("Session", "") if existing else ""
        lock_index = existing["LockIndex"] if existing else 0
        if "acquire" in q:
            if q["acquire"] not in self.sessions:
                return web.Response(status=500, text="invalid session")
            if session and session != q["acquire"]:
                return web.json_response(False)
            if session != q["acquire"]:
                lock_index += 1
            session = q["acquire"]
        if "release" in q:
            if session != q["release"]:
                return web.json_response(False)
            session = ""
        index = self.index + 1
        self.kv[key] = {"Key": key, "Value": value, "Flags": flags, "Session": session, "LockIndex": lock_index,
                        "CreateIndex": existing["CreateIndex"] if existing else index, "ModifyIndex": index}
        if not session:
            del self.kv[key]["Session"]
        await self._bump()
        return web.json_response(True)

    async def delete(self, request: web.Request) -> web.Response:
        key, q = request.match_info["key"], request.query
        if "cas" in q:
            existing = self.kv.get(key)
            if not existing or existing["ModifyIndex"] != int(q["cas"]):
                return web.json_response(False)
        for k in [k for k in self.kv if (k.startswith(key) if "recurse" in q else k == key)]:
            del self.kv[k]
            self.tombstones[k] = self.index + 1
        await self._bump()
        return web.json_response(True)

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        sid = str(uuid.uuid4())
        self.sessions[sid] = body
        await self._bump()
        return web.json_response({"ID": sid})

    async def destroy(self, request: web.Request) -> web.Response:
        await self.expire(request.match_info["id"])
        return web.json_response(True)

    async def expire(self, sid: str) -> None:
        body = self.sessions.pop(sid, None)
        if body is None:
            return
        for key, entry in list(self.kv.items()):
            if entry.get("Session") == sid:
                if body.get("Behavior") == "delete":
                    del self.kv[key]
                    self.tombstones[key] = self.index + 1
                else:
                    entry.pop("Session")
                    entry["ModifyIndex"] = self.index + 1
        await self._bump()

    async def renew(self, request: web.Request) -> web.Response:
        self.renews += 1
        body = self.sessions.get(request.match_info["id"])
        if body is None:
            return web.Response(status=404, text="Session id not found")
        return web.json_response([{"ID": request.match_info["id"], "TTL": body.get("TTL", "")}])

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/kv/{key:.*}", self.get)
        app.router.add_put("/v1/kv/{key:.*}", self.put)
        app.router.add_delete("/v1/kv/{key:.*}", self.delete)
        app.router.add_put("/v1/session/create", self.create)
        app.router.add_put("/v1/session/destroy/{id}", self.destroy)
        app.router.add_put("/v1/session/renew/{id}", self.renew)
        return app


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, *_: object) -> bool:
        return kind is TimeoutError


@pytest.fixture
async def agent():
    fake = KVAgent()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - the test server's own port
    client = Client(f"127.0.0.1:{port}", timeout=5)
    fake.client = client
    try:
        yield fake
    finally:
        await client.close()
        await runner.cleanup()


def _fast(**kw):
    return {"wait": 1.0, "retry": 0.2, **kw}


@pytest.mark.timeout(20)
async def test_lock_excludes_and_hands_over(agent):
    first = Lock(agent.client, "svc/.lock", value=b"one", **_fast())
    second = Lock(agent.client, "svc/.lock", **_fast())
    assert await first.acquire(timeout=1)
    entry = agent.kv["svc/.lock"]
    assert entry["Flags"] == LOCK_FLAG and entry["Session"] == first.session and entry["Value"] == b"one"
    created = agent.sessions[first.session]
    assert created == {"Name": "Consul API Lock", "TTL": "15s", "Behavior": "release"}
    assert not await second.acquire(timeout=0.3)  # gave up, and its session with it
    assert set(agent.sessions) == {first.session}
    waiting = asyncio.create_task(second.acquire(timeout=5))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await first.release()
    assert first.lost.is_set() and first.session not in agent.sessions
    assert await asyncio.wait_for(waiting, 3)
    assert agent.kv["svc/.lock"]["Session"] == second.session
    await second.release()
    await second.destroy()
    assert "svc/.lock" not in agent.kv and not agent.sessions


@pytest.mark.timeout(20)
async def test_lock_is_lost_when_its_session_is_destroyed(agent):
    lock = Lock(agent.client, "svc/.lock", lock_delay=0, **_fast())
    assert await lock.acquire()
    assert agent.sessions[lock.session]["LockDelay"] == "0s"
    await agent.expire(lock.session)
    await asyncio.wait_for(lock.wait_lost(), 3)
    await lock.release()  # nothing of ours left to release: no error


@pytest.mark.timeout(20)
async def test_lock_lost_when_renew_says_404(agent):
    slept = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await asyncio.sleep(0.01)

    lock = Lock(agent.client, "svc/.lock", session_ttl=20, sleep=sleep, **_fast())
    assert await lock.acquire()
    await asyncio.sleep(0.1)
    assert agent.renews >= 1 and slept[0] == 10.0  # every TTL/2
    agent.sessions.pop(lock.session)  # gone without touching the key: only the renew can tell
    await asyncio.wait_for(lock.wait_lost(), 3)
    assert lock.session_gone
    await lock.release()


async def test_lock_refuses_a_key_that_is_not_a_lock(agent):
    agent.kv["data/.lock"] = {"Key": "data/.lock", "Value": b"x", "Flags": 0, "LockIndex": 0, "CreateIndex": 2,
                              "ModifyIndex": 2}
    lock = Lock(agent.client, "data/.lock", **_fast())
    with pytest.raises(LockConflict):
        await lock.acquire(timeout=1)
    assert not agent.sessions and agent.kv["data/.lock"]["Value"] == b"x"


async def test_a_given_session_is_used_and_kept(agent):
    sid = (await agent.client.put("/v1/session/create", {"Name": "mine"}))["ID"]
    lock = Lock(agent.client, "svc/.lock", session=sid, **_fast())
    assert await lock.acquire(timeout=1)
    assert agent.kv["svc/.lock"]["Session"] == sid
    await lock.release()
    assert sid in agent.sessions


@pytest.mark.timeout(30)
async def test_semaphore_admits_limit_holders(agent):
    sems = [Semaphore(agent.client, "pool", 2, **_fast()) for _ in range(3)]
    assert await sems[0].acquire(timeout=1)
    assert await sems[1].acquire(timeout=1)
    for s in sems[:2]:
        entry = agent.kv[f"pool/{s.session}"]
        assert entry["Flags"] == SEMAPHORE_FLAG and entry["Session"] == s.session
        assert agent.sessions[s.session]["Behavior"] == "delete"
    limit, holders = decode_semaphore(parse_pairs([{**agent.kv["pool/.lock"], "Value": base64.b64encode(
        agent.kv["pool/.lock"]["Value"]).decode()}])[0], 0)
    assert (limit, holders) == (2, {sems[0].session, sems[1].session})
    assert not await sems[2].acquire(timeout=0.3)
    assert not any(k for k in agent.kv if k.startswith("pool/") and k != "pool/.lock"
                   and k not in (f"pool/{sems[0].session}", f"pool/{sems[1].session}"))
    third = asyncio.create_task(sems[2].acquire(timeout=5))
    await asyncio.sleep(0.2)
    assert not third.done()
    await sems[0].release()
    assert await asyncio.wait_for(third, 3)
    # a holder whose session dies is pruned, and loses its slot
    await agent.expire(sems[1].session)
    await asyncio.wait_for(sems[1].wait_lost(), 3)
    await sems[1].release()
    again = Semaphore(agent.client, "pool", 2, **_fast())
    assert await again.acquire(timeout=1)
    await again.release()
    await sems[2].release()
    await sems[2].destroy()
    assert not [k for k in agent.kv if k.startswith("pool/")]


async def test_semaphore_limit_disagreement(agent):
    one = Semaphore(agent.client, "pool", 2, **_fast())
    assert await one.acquire(timeout=1)
    other = Semaphore(agent.client, "pool", 3, **_fast())
    with pytest.raises(LockError, match=r"semaphore limit conflict \(lock: 2, local: 3\)"):
        await other.acquire(timeout=1)
    await one.release()
