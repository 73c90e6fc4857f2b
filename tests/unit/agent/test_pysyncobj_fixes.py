"""Reproductions of the pysyncobj 0.3.17 bugs our adapter fixes (raft.md §2.4, §4.1)."""

from __future__ import annotations

import gc
import os
import warnings

import pysyncobj.journal
import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.node import TCPNode

from mesh.agent.server.raft import RaftConfig
from mesh.agent.server.raft import pysyncobj_node as pysyncobj_fixes
from mesh.agent.server.raft.adapter import PysyncobjRaft as Raft
from mesh.agent.server.raft.pysyncobj_node import _Node
from mesh.catalog.fsm import FSM
from tests.harness.cluster import free_port

CMD = b"\x00payload"


def _conf(port: int) -> SyncObjConf:
    return SyncObjConf(autoTick=False, bindAddress=f"127.0.0.1:{port}", appendEntriesUseBatch=False,
                       dynamicMembershipChange=True)


def _append(prev_idx: int, prev_term: int, entries: list[tuple[bytes, int, int]], commit: int) -> dict:
    return {"type": "append_entries", "term": 1, "commit_index": commit, "prevLogIdx": prev_idx,
            "prevLogTerm": prev_term, "entries": list(entries)}


def _log(node: SyncObj) -> list[tuple[bytes, int, int]]:
    return list(node._SyncObj__raftLog[:])


@pytest.fixture
def nodes():
    made: list[SyncObj] = []

    def make(ours: bool) -> SyncObj:
        port = free_port()
        leader = f"127.0.0.1:{free_port()}"
        if ours:
            adapter = Raft(RaftConfig(self_address=f"127.0.0.1:{port}", bind_host="127.0.0.1", data_dir=None,
                                      password="test-key"),
                           FSM(), lambda keys, index: None)
            node = _Node(adapter, f"127.0.0.1:{port}", [leader], _conf(port))
        else:
            node = SyncObj(f"127.0.0.1:{port}", [leader], _conf(port))
        node.leader_node = TCPNode(leader)
        made.append(node)
        return node

    yield make
    for node in made:
        node._destroy()


def _deliver_fresh_then_stale(node: SyncObj) -> None:
    entries = [(CMD, 2, 1), (CMD, 3, 1), (CMD, 4, 1)]
    node._SyncObj__onMessageReceived(node.leader_node, _append(1, 0, entries, 1))
    # a stale duplicate of an earlier append_entries, e.g. after a nextIndex reset
    node._SyncObj__onMessageReceived(node.leader_node, _append(2, 1, [(CMD, 3, 1)], 1))


def test_library_truncates_on_a_stale_duplicate(nodes):
    plain = nodes(ours=False)
    _deliver_fresh_then_stale(plain)
    assert [e[1] for e in _log(plain)] == [1, 2, 3]  # entry 4 was dropped: the bug


def test_adapter_keeps_entries_on_a_stale_duplicate(nodes):
    ours = nodes(ours=True)
    _deliver_fresh_then_stale(ours)
    assert [e[1] for e in _log(ours)] == [1, 2, 3, 4]


def test_adapter_still_truncates_on_a_real_conflict(nodes):
    ours = nodes(ours=True)
    ours._SyncObj__onMessageReceived(ours.leader_node, _append(1, 0, [(CMD, 2, 1), (CMD, 3, 1)], 1))
    conflict = {**_append(2, 1, [(b"\x00other", 3, 2)], 1), "term": 2}
    ours._SyncObj__onMessageReceived(ours.leader_node, conflict)
    assert [(e[1], e[2]) for e in _log(ours)] == [(1, 0), (2, 1), (3, 2)]


def test_trim_clamps_commit_to_the_verified_prefix():
    terms = {1: 0, 2: 1, 3: 1, 4: 1}
    msg = _append(2, 1, [(CMD, 3, 1)], 4)
    assert pysyncobj_fixes.trim_append_entries(terms.get, 4, msg) is True
    assert msg["prevLogIdx"] == 3 and msg["entries"] == [] and msg["commit_index"] == 3


def test_trim_keeps_new_entries_after_the_common_prefix():
    terms = {1: 0, 2: 1, 3: 1}
    msg = _append(1, 0, [(CMD, 2, 1), (CMD, 3, 1), (CMD, 4, 1)], 2)
    assert pysyncobj_fixes.trim_append_entries(terms.get, 3, msg) is False
    assert msg["prevLogIdx"] == 3 and [e[1] for e in msg["entries"]] == [4]


def test_trim_leaves_mismatched_prev_and_snapshot_transmissions_alone():
    terms = {1: 0, 2: 1}
    msg = _append(2, 5, [(CMD, 3, 5)], 2)
    assert pysyncobj_fixes.trim_append_entries(terms.get, 2, msg) is False and msg["prevLogIdx"] == 2
    chunk = {**_append(2, 1, [], 2), "transmission": "start", "data": b""}
    assert pysyncobj_fixes.trim_append_entries(terms.get, 2, chunk) is False


def test_compaction_never_deletes_past_the_end():
    assert pysyncobj_fixes.clamp_delete_to(10, 7) == 7
    assert pysyncobj_fixes.clamp_delete_to(5, 7) == 5


def test_meta_storer_fsyncs_and_closes(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    pysyncobj_fixes.patch_meta_storer(fsync=True)
    storer = pysyncobj.journal.MetaStorer(str(tmp_path / "journal.meta"))
    storer.storeMeta({"currentTerm": 7, "votedForNodeId": "x"})
    assert synced, "term/vote were not fsynced"
    with _NoResourceWarning():
        assert storer.getMeta()["currentTerm"] == 7


class _NoResourceWarning:
    """Fails if a file handle is left for the garbage collector to close."""

    def __enter__(self):
        self._ctx = warnings.catch_warnings(record=True)
        self._w = self._ctx.__enter__()
        warnings.simplefilter("always", ResourceWarning)

    def __exit__(self, *exc):
        gc.collect()
        self._ctx.__exit__(*exc)
        assert not [w for w in self._w if issubclass(w.category, ResourceWarning)]


def test_version_is_pinned():
    pysyncobj_fixes.check_version()
