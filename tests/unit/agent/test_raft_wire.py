"""The Raft wire's pure parts: frame caps, the msgpack codec in pickle's place, penalties;
and the adapter's reassembly of an entry that arrives in chunks."""

from __future__ import annotations

import pickle

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pysyncobj.node import Node, TCPNode

from mesh.agent import raft_wire
from mesh.agent.server.raft import RaftConfig
from mesh.agent.server.raft import pysyncobj_node as pysyncobj_fixes
from mesh.agent.server.raft.adapter import PysyncobjRaft as Raft
from mesh.agent.server.raft.pysyncobj_node import _Node
from mesh.catalog.fsm import FSM
from tests.harness.cluster import free_port

CODEC = raft_wire.Codec(Node, TCPNode)


# ---- frames ---------------------------------------------------------------------------
def test_header_past_the_cap_is_refused_before_the_body():
    reader = raft_wire.FrameReader(limit=4096)
    with pytest.raises(raft_wire.FrameError):
        reader.feed(b"\x7f\xff\xff\x7f")  # 2 GiB announced; nothing of the body has come


def test_zero_length_frame_is_refused():
    with pytest.raises(raft_wire.FrameError):
        raft_wire.FrameReader().feed(b"\0\0\0\0")


def test_limit_is_raised_after_authentication():
    reader = raft_wire.FrameReader(limit=16)
    reader.feed(raft_wire.frame(b"hello"))
    assert reader.next_frame() == b"hello"
    reader.limit = raft_wire.MAX_FRAME
    big = b"x" * 100_000
    reader.feed(raft_wire.frame(big))
    assert reader.next_frame() == big


def test_a_second_frame_past_the_cap_is_caught_when_the_first_is_taken():
    reader = raft_wire.FrameReader(limit=64)
    reader.feed(raft_wire.frame(b"a" * 10) + b"\x00\x10\x00\x00")
    with pytest.raises(raft_wire.FrameError):
        reader.next_frame()


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20), st.integers(1, 50))
def test_frames_survive_any_split(payloads, step):
    stream = b"".join(raft_wire.frame(p) for p in payloads)
    reader = raft_wire.FrameReader(limit=1024)
    got = []
    for i in range(0, len(stream), step):
        reader.feed(stream[i : i + step])
        while (f := reader.next_frame()) is not None:
            got.append(f)
    assert got == payloads
    assert len(reader) == 0


# ---- codec ----------------------------------------------------------------------------
def test_codec_round_trips_what_pysyncobj_sends():
    message = {
        "type": "append_entries", "term": 3, "commit_index": 7, "prevLogIdx": 6, "prevLogTerm": 2,
        "entries": [(b"\x00cmd", 7, 3), (b"\x01x", 8, 3)],
    }
    back = CODEC.loads(CODEC.dumps(message))
    assert back["entries"] == ((b"\x00cmd", 7, 3), (b"\x01x", 8, 3))  # tuples, as the journal holds them
    membership = CODEC.loads(CODEC.dumps(["add", "127.0.0.1:1", TCPNode("127.0.0.1:1")]))
    assert membership[2] == TCPNode("127.0.0.1:1") and isinstance(membership[2], TCPNode)
    snapshot = CODEC.loads(CODEC.dumps(({}, (b"a", 1, 1), (b"b", 2, 1), {TCPNode("h:1"), TCPNode("h:2")})))
    assert snapshot[3] == {TCPNode("h:1"), TCPNode("h:2")}
    assert CODEC.loads(CODEC.dumps((1, (b"payload",)))) == (1, (b"payload",))


def test_codec_never_unpickles():
    class Boom:
        def __reduce__(self):
            raise AssertionError("unpickled")

    with pytest.raises((ValueError, msgpack.UnpackException, msgpack.ExtraData)):
        CODEC.loads(pickle.dumps(["x", 1]))
    with pytest.raises(TypeError):
        CODEC.dumps(Boom())


def test_codec_refuses_unknown_extensions():
    with pytest.raises(ValueError):
        CODEC.loads(msgpack.packb(msgpack.ExtType(9, b"x")))


def test_pysyncobj_modules_use_the_codec():
    import pysyncobj.serializer
    import pysyncobj.syncobj
    import pysyncobj.tcp_server
    import pysyncobj.transport

    pysyncobj_fixes.install_safe_wire()
    assert pysyncobj.syncobj.pickle is pysyncobj_fixes.CODEC
    assert pysyncobj.serializer.pickle is pysyncobj_fixes.CODEC
    assert pysyncobj.transport.TcpConnection is pysyncobj_fixes.SafeConnection
    assert pysyncobj.tcp_server.TcpConnection is pysyncobj_fixes.SafeConnection


# ---- penalties ------------------------------------------------------------------------
def test_penalty_doubles_then_caps_and_expires():
    now = [100.0]
    box = raft_wire.PenaltyBox(clock=lambda: now[0], base=1.0, ceiling=8.0)
    assert not box.blocked("a")
    assert box.punish("a") == 1.0
    assert box.blocked("a") and not box.blocked("b")
    assert [box.punish("a") for _ in range(4)] == [2.0, 4.0, 8.0, 8.0]
    now[0] += 8.01
    assert not box.blocked("a")
    now[0] += 100
    assert box.punish("a") == 1.0  # a long good behaviour starts over


def test_penalty_table_is_bounded():
    now = [0.0]
    box = raft_wire.PenaltyBox(clock=lambda: now[0], max_peers=100)
    for i in range(1000):
        box.punish(f"10.0.{i // 256}.{i % 256}")
    assert len(box._until) <= 100


# ---- reassembly of an entry sent in chunks --------------------------------------------------
@pytest.fixture
def node():
    port = free_port()
    adapter = Raft(RaftConfig(self_address=f"127.0.0.1:{port}", bind_host="127.0.0.1", data_dir=None,
                              password="test-key"), FSM(), lambda keys, index: None)
    from pysyncobj import SyncObjConf

    made = _Node(adapter, f"127.0.0.1:{port}", [f"127.0.0.1:{free_port()}"],
                 SyncObjConf(autoTick=False, bindAddress=f"127.0.0.1:{port}", dynamicMembershipChange=True))
    yield made
    made._destroy()


def _chunks(entry, size, early_finish):
    data = CODEC.dumps(entry)
    pieces = [data[i : i + size] for i in range(0, len(data), size)]
    marks = ["start"] + ["process"] * (len(pieces) - 2) + ["finish"]
    if early_finish:  # pysyncobj marks 'finish' by the command's length, one chunk early at times
        marks[-2] = "finish"
    return list(zip(marks, pieces, strict=True))


@pytest.mark.parametrize("early_finish", [False, True])
def test_chunked_entry_becomes_one_plain_append(node, early_finish):
    entry = (b"\x00" + b"z" * 5000, 2, 1)
    final = None
    for mark, piece in _chunks(entry, 1000, early_finish):
        message = {"type": "append_entries", "transmission": mark, "data": piece, "term": 1,
                   "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0}
        assert node._reassemble(message)
        if "entries" in message:
            final = message
        else:
            assert message["data"] == b""
    assert final is not None and final["entries"] == [entry]
    assert "transmission" not in final


def test_chunks_without_a_start_are_dropped(node):
    message = {"type": "append_entries", "transmission": "process", "data": b"x", "term": 1,
               "commit_index": 1, "prevLogIdx": 1, "prevLogTerm": 0}
    assert not node._reassemble(message)
    assert not node._reassemble({**message, "transmission": "start", "data": "not bytes"})


def test_a_data_dir_with_a_pickled_log_is_refused(tmp_path):
    from mesh.agent.errors import RaftError

    raft_dir = tmp_path / "raft"
    raft_dir.mkdir()
    (raft_dir / "journal.meta").write_bytes(pickle.dumps({"term": 3, "vote": None}))
    adapter = Raft(RaftConfig(self_address="127.0.0.1:1", bind_host="127.0.0.1", data_dir=str(tmp_path),
                              password="k"), FSM(), lambda keys, index: None)
    with pytest.raises(RaftError, match="older mesh"):
        adapter.check_data_format()
    (raft_dir / "journal.meta").write_bytes(pysyncobj_fixes.CODEC.dumps({"term": 3}))
    adapter.check_data_format()


def test_meta_storer_writes_msgpack(tmp_path):
    import pysyncobj.journal

    pysyncobj_fixes.patch_meta_storer(fsync=False)
    path = str(tmp_path / "journal.meta")
    storer = pysyncobj.journal.MetaStorer(path)
    storer.storeMeta({"term": 9, "votedFor": "127.0.0.1:5"})
    assert open(path, "rb").read(1) != b"\x80"
    assert storer.getMeta() == {"term": 9, "votedFor": "127.0.0.1:5"}


def test_an_unreadable_term_file_is_fatal_not_term_zero(tmp_path):
    import pysyncobj.journal

    from mesh.catalog.errors import FatalStateError

    pysyncobj_fixes.patch_meta_storer(fsync=False)
    path = tmp_path / "journal.meta"
    path.write_bytes(b"\xc1garbage")
    with pytest.raises(FatalStateError, match="unreadable"):
        pysyncobj.journal.MetaStorer(str(path)).getMeta()
    path.write_bytes(pysyncobj_fixes.CODEC.dumps([1, 2]))
    with pytest.raises(FatalStateError):
        pysyncobj.journal.MetaStorer(str(path)).getMeta()
