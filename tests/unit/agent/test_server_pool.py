"""The client's server pool: what it learns, what it persists, the order it tries."""

from __future__ import annotations

import json
import os
import random

import pytest

from mesh.agent.backend import NO_SERVERS, ServerPool
from mesh.agent.rpc import RPCError
from mesh.catalog.errors import InvalidRequest, MeshError


class FakeClient:
    """Stands in for the RPC connection layer: which addresses answer, and a log of tries."""

    def __init__(self, up: set[str]) -> None:
        self.up = up
        self.tried: list[str] = []

    async def call(self, address, method, args, timeout=None):
        self.tried.append(address)
        if address not in self.up:
            raise RPCError(f"rpc {method} to {address}: ConnectionRefusedError", "transport")
        if method == "Bad":
            raise RPCError("Port: must be an integer", "invalid")
        return address

    async def close(self):
        pass


def _pool(tmp_path, seeds, up, now):
    pool = ServerPool(seeds, "", rng=random.Random(0), state_file=str(tmp_path / "servers.json"),
                      clock=lambda: now[0])
    pool._client = FakeClient(up)
    return pool


def test_learned_servers_replace_the_old_set_and_are_persisted(tmp_path):
    now = [0.0]
    pool = _pool(tmp_path, ["s1:1"], set(), now)
    pool.learn(["s1:1", "s2:1", "s3:1"])
    assert pool.servers == ["s1:1", "s2:1", "s3:1"]
    pool.learn(["s2:1", "s3:1", "s4:1"])  # s1 removed, s4 added
    assert pool.servers == ["s2:1", "s3:1", "s4:1", "s1:1"]  # the seed stays, last
    path = tmp_path / "servers.json"
    assert json.loads(path.read_text()) == ["s2:1", "s3:1", "s4:1"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    again = ServerPool(["s1:1"], "", state_file=str(path))
    assert again.servers == ["s2:1", "s3:1", "s4:1", "s1:1"]


def test_garbage_server_lists_are_ignored(tmp_path):
    pool = _pool(tmp_path, ["s1:1"], set(), [0.0])
    for junk in (None, "s2:1", [], [1, None], ["no-port"]):
        pool.learn(junk)
    assert pool.servers == ["s1:1"]
    (tmp_path / "bad.json").write_text("{not json")
    assert ServerPool(["s1:1"], "", state_file=str(tmp_path / "bad.json")).servers == ["s1:1"]


async def test_fails_over_at_once_and_skips_a_bad_server_for_a_while(tmp_path):
    now = [0.0]
    pool = _pool(tmp_path, ["seed:1"], {"s2:1", "s3:1"}, now)
    pool.learn(["s1:1", "s2:1", "s3:1"])
    answers = [await pool.call("M", {}) for _ in range(6)]
    assert set(answers) <= {"s2:1", "s3:1"}
    assert pool._client.tried.count("s1:1") == 1  # refused once, then skipped
    now[0] += 11  # the mark expires: s1 is tried again
    pool._client.tried.clear()
    for _ in range(3):
        await pool.call("M", {})
    assert "s1:1" in pool._client.tried


async def test_seeds_are_the_last_resort(tmp_path):
    pool = _pool(tmp_path, ["seed:1"], {"seed:1"}, [0.0])
    pool.learn(["s1:1", "s2:1"])
    assert await pool.call("M", {}) == "seed:1"
    assert pool._client.tried[-1] == "seed:1" and len(pool._client.tried) == 3


async def test_no_server_answers_with_consuls_text(tmp_path):
    pool = _pool(tmp_path, ["s1:1", "s2:1"], set(), [0.0])
    with pytest.raises(MeshError, match=NO_SERVERS):
        await pool.call("M", {}, deadline=0.2)


async def test_a_servers_verdict_is_not_a_failover(tmp_path):
    pool = _pool(tmp_path, ["s1:1", "s2:1"], {"s1:1", "s2:1"}, [0.0])
    with pytest.raises(InvalidRequest):
        await pool.call("Bad", {})
    assert len(pool._client.tried) == 1
