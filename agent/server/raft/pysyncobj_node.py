"""The one module that imports pysyncobj (DESIGN.md principle 3): pysyncobj's SyncObj
subclass with our FSM behind one replicated method, and the fixes for pysyncobj 0.3.17
that must touch the library, pinned to the exact version (PINNED_VERSION). Each fix has
a test in tests/unit/agent/test_pysyncobj_fixes.py or test_raft_wire.py reproducing what
it fixes (../shared/reference/raft.md §2.4 and §4):

- `_Node`: group-committed fsync of the journal, conflict-aware truncation and
  compaction (the pure halves are in fixes.py), reassembly of chunked entries, the
  lease check;
- durable term/vote metadata: written with fsync before rename, file handles closed;
- a safe wire (`install_safe_wire`): the library pickles messages, log entries and
  in-memory snapshots. Every such use is routed to raft_wire's msgpack codec, frames are
  read through raft_wire.FrameReader (capped before authentication and after), and the
  transport refuses what a member never sends (utility commands, read-only nodes), drops
  connections that do not finish the handshake in time and penalises junk senders.

The asyncio adapter (adapter.py) reaches the library only through the names exported
here, so nothing else of ours imports pysyncobj.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import pysyncobj.journal
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.tcp_server
import pysyncobj.transport
import pysyncobj.version
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import Node, TCPNode
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from mesh.catalog.errors import FatalStateError

from ... import raft_wire
from ...logging import get_logger, per_peer_limiter
from ...metrics import RAFT
from .fixes import clamp_delete_to, pickled_meta, trim_append_entries

if TYPE_CHECKING:
    from .adapter import PysyncobjRaft

__all__ = [
    "PINNED_VERSION",
    "trim_append_entries",
    "clamp_delete_to",
    "patch_meta_storer",
    "check_version",
    "install_safe_wire",
    "CODEC",
    "SafeConnection",
    "MeshTransport",
    "pickled_meta",
    "FAIL_REASON",
    "RETRYABLE",
    "SERIALIZER_STATE",
    "SyncObjConf",
    "TCPNode",
]

log = get_logger("raft")

CODEC = raft_wire.Codec(Node, TCPNode)

PINNED_VERSION = "0.3.17"

RETRYABLE = {
    FAIL_REASON.QUEUE_FULL,
    FAIL_REASON.MISSING_LEADER,
    FAIL_REASON.DISCARDED,
    FAIL_REASON.NOT_LEADER,
    FAIL_REASON.LEADER_CHANGED,
    FAIL_REASON.UNKNOWN_OUTCOME,
}


def check_version() -> None:
    if pysyncobj.version.VERSION != PINNED_VERSION:
        raise RuntimeError(
            f"mesh's Raft adapter is pinned to pysyncobj {PINNED_VERSION}, found {pysyncobj.version.VERSION}"
        )


_FSYNC = {"enabled": True}


def patch_meta_storer(fsync: bool) -> None:
    """Term and vote must be on disk before a vote is sent (Raft §5.1): write the meta
    file, fsync it, then rename. Also closes the handle the library leaks on read."""
    _FSYNC["enabled"] = fsync
    storer = pysyncobj.journal.MetaStorer
    if getattr(storer, "_mesh_patched", False):
        return

    def get_meta(self: Any) -> dict[str, Any]:
        """Term and vote, or {} for a new node. An unreadable file is fatal: starting
        from term 0 could make this server vote twice in one term."""
        try:
            with open(self.getPath(), "rb") as f:
                meta = CODEC.loads(f.read())
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001 - any decoding failure means the same
            raise FatalStateError(f"{self.getPath()}: unreadable Raft term/vote file ({type(exc).__name__})") from None
        if not isinstance(meta, dict):
            raise FatalStateError(f"{self.getPath()}: not a Raft term/vote file")
        return meta

    def store_meta(self: Any, meta: dict[str, Any]) -> None:
        path = self.getPath()
        tmp = path + ".tmp"
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(CODEC.dumps(meta))
            f.flush()
            if _FSYNC["enabled"]:
                os.fsync(f.fileno())
        os.replace(tmp, path)

    storer.getMeta = get_meta
    storer.storeMeta = store_meta
    storer._mesh_patched = True


# ---- the safe wire ------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 3.0  # a new connection must be a known, keyed member by then
READS_PER_EVENT = 16  # recv calls per poll event: one busy peer cannot hold the tick
MAX_PREAUTH_PER_STRANGER = 8  # handshaking connections from an address that is no member
MAX_PREAUTH_TOTAL = 512  # from all strangers together

_PENALTIES = raft_wire.PenaltyBox(clock=monotonic_time)
_JUNK_LOG = per_peer_limiter()


def _note_junk(peer: str, reason: str, member: bool) -> None:
    """Count and (now and then) log a peer's junk; penalise it unless it is a member's
    address (a stranger sharing a member's address must not lock the member out: the
    caps keep its junk cheap)."""
    RAFT.wire_rejects.labels(reason.split(":", 1)[0]).inc()
    seconds = 0.0 if member else _PENALTIES.punish(peer)
    suppressed = _JUNK_LOG.allow(peer)
    if suppressed is not None:
        log.warning("raft_peer_rejected", peer=peer, reason=reason, refused_for=round(seconds, 1), suppressed=suppressed)


def _peer_of(sock: Any) -> str:
    try:
        return str(sock.getpeername()[0])
    except (OSError, AttributeError, IndexError, TypeError):
        return "?"


class SafeConnection(TcpConnection):
    """pysyncobj's connection with our framing and codec on the read and write paths.

    The library's private read/parse/send steps are overridden through their mangled
    names; its connect/disconnect/timeout logic is kept."""

    def __init__(self, poller: Any, onMessageReceived: Any = None, onConnected: Any = None,
                 onDisconnected: Any = None, socket: Any = None, timeout: float = 10.0,
                 sendBufferSize: int = 2 ** 13, recvBufferSize: int = 2 ** 13, keepalive: Any = None) -> None:
        self.frames = raft_wire.FrameReader()
        self.authenticated = False
        self.opened_at = monotonic_time()
        self.peer = _peer_of(socket)
        self.member_peer = False
        super().__init__(poller, onMessageReceived, onConnected, onDisconnected, socket, timeout,
                         sendBufferSize, recvBufferSize, keepalive)

    def connect(self, host: str, port: int) -> bool:
        self.frames.reset()
        self.authenticated = False
        self.opened_at = monotonic_time()
        self.peer, self.member_peer = host, True
        return bool(super().connect(host, port))

    def disconnect(self) -> None:
        super().disconnect()
        self.frames.reset()
        self.authenticated = False

    def junk(self, reason: str) -> None:
        _note_junk(self.peer, reason, self.member_peer)
        self.disconnect()

    # -- write path: one bytearray, consumed from the front ---------------------
    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = CODEC.dumps(message)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(monotonic_time()))
        buf = self._TcpConnection__writeBuffer
        if not isinstance(buf, bytearray):
            buf = bytearray(buf)
            self._TcpConnection__writeBuffer = buf
        buf += raft_wire.frame(data)
        self._TcpConnection__trySendBuffer()

    def _TcpConnection__processSend(self) -> bool:
        buf = self._TcpConnection__writeBuffer
        sock = self._TcpConnection__socket
        if not buf or sock is None:
            return False
        try:
            sent = sock.send(buf)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if sent <= 0:
            if sent < 0:
                self.disconnect()
            return False
        if isinstance(buf, bytearray):
            del buf[:sent]
        else:
            self._TcpConnection__writeBuffer = buf[sent:]
        return True

    # -- read path: bounded reads, capped frames ---------------------------------
    def _TcpConnection__tryReadBuffer(self) -> None:
        for _ in range(READS_PER_EVENT):
            if not self._TcpConnection__processRead():
                break
        self._TcpConnection__lastReadTime = monotonic_time()

    def _TcpConnection__processRead(self) -> bool:
        sock = self._TcpConnection__socket
        if sock is None:
            return False
        try:
            incoming = sock.recv(self._TcpConnection__recvBufferSize)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.disconnect()
            return False
        if not incoming or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return False
        try:
            self.frames.feed(incoming)
        except raft_wire.FrameError as exc:
            self.junk(f"framing: {exc}")
            return False
        return True

    def _TcpConnection__processParseMessage(self) -> Any:
        try:
            data = self.frames.next_frame()
        except raft_wire.FrameError as exc:
            self.junk(f"framing: {exc}")
            return None
        if data is None:
            return None
        try:
            if not self.encryptor:
                raise ValueError("no cluster key: the Raft port accepts nothing unauthenticated")
            stamp = self.encryptor.extract_timestamp(data)
            if stamp < self.recvLastTimestamp:
                raise ValueError("frame older than the last one")
            self.recvLastTimestamp = stamp
            message = CODEC.loads(self.encryptor.decrypt(data))
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    raise ValueError("connection key mismatch")
        except Exception as exc:  # noqa: BLE001 - a bad token, msgpack or shape: all junk
            self.junk(f"auth: {type(exc).__name__}")
            return None
        if not isinstance(message, dict | str | bytes):
            self.junk(f"shape: {type(message).__name__}")
            return None
        if not self.authenticated:
            self.authenticated = True
            self.frames.limit = raft_wire.MAX_FRAME
            RAFT.wire_authenticated.inc()
        return message


class MeshTransport(TCPTransport):
    """pysyncobj's TCP transport, refusing what our members never send and whoever
    cannot authenticate in time."""

    def _onTick(self) -> None:
        super()._onTick()
        now = monotonic_time()
        for conn in list(self._unknownConnections):
            if now - getattr(conn, "opened_at", now) > HANDSHAKE_TIMEOUT:
                _note_junk(getattr(conn, "peer", "?"), "handshake timeout", getattr(conn, "member_peer", False))
                conn.disconnect()
                self._unknownConnections.discard(conn)

    def _member_ips(self) -> set[str]:
        ips = set()
        for node in self._nodes:
            try:
                ips.add(node.ip or node.host)
            except Exception:  # noqa: BLE001 - an unresolvable member name
                ips.add(node.host)
        return ips

    def _onNewIncomingConnection(self, conn: Any) -> None:
        peer = getattr(conn, "peer", "?")
        conn.member_peer = peer in self._member_ips()
        if not conn.member_peer:
            strangers = [c for c in self._unknownConnections if not getattr(c, "member_peer", False)]
            if _PENALTIES.blocked(peer):
                RAFT.wire_rejects.labels("penalised").inc()
                conn.disconnect()
                return
            same = sum(1 for c in strangers if getattr(c, "peer", None) == peer)
            if same >= MAX_PREAUTH_PER_STRANGER or len(strangers) >= MAX_PREAUTH_TOTAL:
                RAFT.wire_rejects.labels("too many handshakes").inc()
                conn.disconnect()
                return
        super()._onNewIncomingConnection(conn)

    def _onIncomingMessageReceived(self, conn: Any, message: Any) -> None:
        if self._syncObj.encryptor and not conn.sendRandKey:
            if not (isinstance(message, bytes) and len(message) == 32):
                conn.junk("handshake: bad connection key")
                self._unknownConnections.discard(conn)
                return
        elif not isinstance(message, str) or message not in self._nodeAddrToNode:
            # utility commands (lists), read-only nodes, unknown addresses: none are ours
            conn.junk("handshake: not a member")
            self._unknownConnections.discard(conn)
            return
        super()._onIncomingMessageReceived(conn, message)

    def _onOutgoingMessageReceived(self, conn: Any, message: Any) -> None:
        if not conn.sendRandKey and not (isinstance(message, bytes) and len(message) == 32):
            conn.junk("handshake: bad connection key")
            return
        super()._onOutgoingMessageReceived(conn, message)


def install_safe_wire() -> None:
    """Route every pickle use of pysyncobj to the msgpack codec and every connection
    through SafeConnection. Process-wide and idempotent."""
    for module in (pysyncobj.syncobj, pysyncobj.serializer, pysyncobj.tcp_connection):
        module.pickle = CODEC  # type: ignore[attr-defined]
    pysyncobj.transport.TcpConnection = SafeConnection  # type: ignore[misc]
    pysyncobj.tcp_server.TcpConnection = SafeConnection  # type: ignore[attr-defined]


# ---- the node ---------------------------------------------------------------------
class _Node(SyncObj):
    """pysyncobj's SyncObj with our FSM behind one replicated method.

    Every attribute is set before SyncObj.__init__: the tick thread starts inside it."""

    def __init__(self, adapter: PysyncobjRaft, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        self._adapter = adapter
        self._journal_dirty = False
        self._no_truncate = False
        self._last_leader_contact = time.monotonic()
        self._chunks: bytearray | None = None  # a large entry arriving in pieces
        super().__init__(self_address, partners, conf, transportClass=MeshTransport)
        journal = self._SyncObj__raftLog
        if adapter.config.data_dir is not None and adapter.config.fsync:
            original_add, original_delete = journal.add, journal.deleteEntriesFrom

            def add(command: bytes, idx: int, term: int) -> None:
                original_add(command, idx, term)
                self._journal_dirty = True

            def delete_from(entry_from: int) -> None:
                original_delete(entry_from)
                self._journal_dirty = True

            journal.add = add
            journal.deleteEntriesFrom = delete_from
            self.addOnTickCallback(self._flush_journal)
        self.addOnTickCallback(self._commit_alone)

    @replicated
    def apply_batch(self, payload: bytes) -> Any:
        return self._adapter._apply_on_raft_thread(self._SyncObj__raftLastApplied + 1, payload)

    # ---- durability ------------------------------------------------------------
    def _flush_journal(self) -> None:
        """Make the journal durable: fdatasync of its file.

        Not mmap.flush(): msync holds the GIL for the whole disk write and stalls the
        HTTP loop with it; fdatasync releases it. On Linux the page cache is shared, so
        syncing the file's descriptor writes the pages the mapping dirtied."""
        if not self._journal_dirty:
            return
        self._journal_dirty = False
        journal = self._SyncObj__raftLog
        try:
            os.fdatasync(journal._FileJournal__journalFile._ResizableFile__f.fileno())
        except (AttributeError, ValueError, OSError):
            journal.flush()  # msync of the whole mapping: slower, never wrong

    def _commit_alone(self) -> None:
        """A single-server cluster gets no acks to wake its tick loop, so an entry
        appended this tick would wait out pysyncobj's 50 ms poll before it commits."""
        if not self.otherNodes and self._isLeader():
            log_ = self._SyncObj__raftLog
            if len(log_) and log_[-1][1] > self.raftCommitIndex:
                notifier = getattr(self, "_SyncObj__pipeNotifier", None)
                if notifier is not None:
                    notifier.notify()

    def _SyncObj__sendNextNodeIdx(self, node: Any, reset: bool = False, nextNodeIdx: Any = None, success: bool = False) -> None:
        self._flush_journal()  # a follower acks only what is on disk
        SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)

    # ---- fixes applied on the message path -------------------------------------
    def _term_at(self, index: int) -> int | None:
        log_ = self._SyncObj__raftLog
        if not len(log_):
            return None
        first = log_[0][1]
        pos = index - first
        if pos < 0 or pos >= len(log_):
            return None
        return log_[pos][2]

    def _reassemble(self, message: dict[str, Any]) -> bool:
        """Collect a large entry sent in chunks ourselves (the library concatenates
        immutable bytes, quadratic in the entry's size, and its 'finish' mark can come
        one chunk early); hand the library the whole entry as a plain append. False:
        drop the message."""
        transmission = message["transmission"]
        data = message.get("data")
        if not isinstance(data, bytes) or transmission not in ("start", "process", "finish"):
            return False
        if transmission == "start":
            self._chunks = bytearray()
        elif self._chunks is None:
            return False
        self._chunks += data
        if len(self._chunks) > raft_wire.MAX_ENTRY:
            self._chunks = None
            return False
        if transmission == "finish":
            try:
                entry = CODEC.loads(self._chunks)
            except Exception:  # noqa: BLE001 - incomplete: the real last chunk is still to come
                entry = None
            if isinstance(entry, tuple) and len(entry) == 3:
                self._chunks = None
                del message["transmission"], message["data"]
                message["entries"] = [entry]
                return True
            message["transmission"] = "process"
        message["data"] = b""  # the library answers as usual and keeps nothing
        return True

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("type") == "append_entries":
            if "serialized" in message and self._adapter.raft_dir is None:
                return  # an in-memory (-dev) node has no peers to install a snapshot from
            if message.get("transmission") is not None and not self._reassemble(message):
                return
            self._last_leader_contact = time.monotonic()
            log_ = self._SyncObj__raftLog
            last = log_[-1][1] if len(log_) else 0
            self._no_truncate = trim_append_entries(self._term_at, last, message)
        try:
            SyncObj._SyncObj__onMessageReceived(self, node, message)
        finally:
            self._no_truncate = False

    def _SyncObj__deleteEntriesFrom(self, fromIDx: int) -> None:
        if self._no_truncate:
            return
        SyncObj._SyncObj__deleteEntriesFrom(self, fromIDx)

    def _SyncObj__deleteEntriesTo(self, toIDx: int) -> None:
        log_ = self._SyncObj__raftLog
        last = log_[-1][1] if len(log_) else 0
        SyncObj._SyncObj__deleteEntriesTo(self, clamp_delete_to(toIDx, last))

    # ---- read-side helpers -----------------------------------------------------
    def lease_valid(self, lease: float) -> bool:
        if not self._isLeader():
            return False
        others = self.otherNodes
        if not others:
            return True
        responses = dict(self._SyncObj__lastResponseTime)
        now = time.monotonic()
        fresh = 1 + sum(1 for n in others if now - responses.get(n, 0) < lease)
        return fresh > (len(others) + 1) / 2
