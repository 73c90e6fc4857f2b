"""Fixes for pysyncobj 0.3.17 that live on our side of the library.

The library's source is never copied here; these are small, pure helpers and patch
functions, pinned to the exact version (PINNED_VERSION) and applied by agent/raft.py.
Each has a test in tests/unit/agent/test_pysyncobj_fixes.py reproducing what it fixes
(../shared/reference/raft.md §2.4 and §4):

- conflict-aware truncation: a follower that receives a stale or duplicate
  append_entries must not drop entries it already holds unless a term conflicts
  (Raft §5.3); the library truncates whenever it holds entries past prevLogIdx, which
  under bursts ends with an empty journal and a node stuck forever (bug A);
- `clamp_delete_to`: log compaction may ask to delete past the end of the log, which
  empties it (bug A, second half);
- durable term/vote metadata: written with fsync before rename, file handles closed;
- a safe wire (`install_safe_wire`): the library pickles messages, log entries and
  in-memory snapshots. Every such use is routed to raft_wire's msgpack codec, frames are
  read through raft_wire.FrameReader (capped before authentication and after), and the
  transport refuses what a member never sends (utility commands, read-only nodes), drops
  connections that do not finish the handshake in time and penalises junk senders.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pysyncobj.journal
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.tcp_connection
import pysyncobj.tcp_server
import pysyncobj.transport
import pysyncobj.version
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.node import Node, TCPNode
from pysyncobj.tcp_connection import TcpConnection
from pysyncobj.transport import TCPTransport

from mesh.catalog.errors import FatalStateError

from . import raft_wire
from .logging import get_logger, per_peer_limiter
from .metrics import RAFT

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
]

log = get_logger("raft")

CODEC = raft_wire.Codec(Node, TCPNode)

PINNED_VERSION = "0.3.17"

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's journal tuple


def check_version() -> None:
    if pysyncobj.version.VERSION != PINNED_VERSION:
        raise RuntimeError(
            f"mesh's Raft adapter is pinned to pysyncobj {PINNED_VERSION}, found {pysyncobj.version.VERSION}"
        )


def trim_append_entries(
    term_at: Callable[[int], int | None], last_index: int, message: dict[str, Any]
) -> bool:
    """Make an append_entries message safe to hand to pysyncobj. Returns True when the
    library must not truncate the follower's log for this message.

    `term_at(i)` is the follower's term of entry i (None when it does not hold it).
    Leading entries the follower already holds with the same term are dropped and
    prevLogIdx/prevLogTerm moved past them: they are a verified common prefix. If no
    entry is left and the follower holds more, nothing conflicts and nothing may be
    truncated; the commit index offered is then clamped to the verified prefix, since
    the entries past it are not known to be the leader's.
    """
    if "prevLogIdx" not in message or message.get("transmission") is not None:
        return False
    entries: Sequence[Entry] = message.get("entries") or []
    prev_idx = message["prevLogIdx"]
    if term_at(prev_idx) != message["prevLogTerm"]:
        return False  # the library answers with a reset: nothing to trim
    skipped = 0
    for entry in entries:
        if term_at(entry[1]) != entry[2]:
            break
        skipped += 1
    if skipped:
        last_skipped = entries[skipped - 1]
        message["prevLogIdx"] = last_skipped[1]
        message["prevLogTerm"] = last_skipped[2]
        message["entries"] = list(entries[skipped:])
    if not message.get("entries") and last_index > message["prevLogIdx"]:
        message["commit_index"] = min(message["commit_index"], message["prevLogIdx"])
        return True
    return False


def clamp_delete_to(to_index: int, last_index: int) -> int:
    """Compaction deletes entries before `to_index`; never past the last one."""
    return min(to_index, last_index)


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


def pickled_meta(path: str) -> bool:
    """True when a Raft meta file was written by a mesh that still pickled (protocol 2+
    pickles start with 0x80): such a data-dir's log entries are pickles too."""
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"
    except OSError:
        return False


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
