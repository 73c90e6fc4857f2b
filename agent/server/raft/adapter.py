"""The asyncio Raft adapter over pysyncobj (PysyncobjRaft, implementing protocol.Raft).

Only pysyncobj_node.py imports the library; this module reaches it through the names
that module exports. The snapshot file format is snapshot.py, the watchdog's decision
watchdog.py.

What it adds to the library (../shared/reference/raft.md §4):

- Group commit. Commands queue on the asyncio side; one `apply_batch` entry is in
  flight per server at a time, holding everything queued meanwhile. Idle writes go
  out at once (pysyncobj's per-command send, no 100 ms batching timer); under load
  entries grow instead of tens of thousands of commands going in flight.
- Idempotent retries: every command carries a request ID and the FSM dedupes, so a
  batch whose outcome is unknown (leader change, timeout) is simply sent again until
  the write deadline, then fails with "No cluster leader".
- Durability: the journal is msync'ed once per tick when it changed, before the
  follower acks and before the leader counts itself (group-committed fsync); term and
  vote are fsync'ed (pysyncobj_node). `fsync=False` trades that away.
- Snapshots in msgpack: entries back as tuples, members as TCPNode objects; the state
  is copied on the Raft thread and encoded and written (tmp, fsync, rename) on another.
- Reads: `lease_valid()` (a leader that has not heard from a quorum within the lease
  is no leader for reads) and `barrier()` for ?consistent.
- Security: always a bind address and always a key (the cluster's -encrypt key, or a
  random one for a server that has no peers); every frame is authenticated before it is
  decoded, and nothing on the wire or in the log is pickled (pysyncobj_node's
  safe wire, raft_wire's codec and frame caps).
- A watchdog that notices a broken node and resyncs it from the leader's snapshot.

Threading: pysyncobj's tick thread applies entries to the FSM under `self.lock`;
readers on the event loop take the same lock for the duration of a query. Results and
change notifications reach the loop through `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from typing import Any

from mesh.catalog.commands import MessageType, encode, encode_batch
from mesh.catalog.errors import FatalStateError
from mesh.catalog.fsm import FSM

from ...data_dir import make_private_dir, write_private
from ...errors import ApplyTimeout, MembershipError, NoLeader, RaftError
from ...logging import get_logger
from ...metrics import RAFT
from ...tasks import cancel_all
from . import pysyncobj_node
from .protocol import OnChange, RaftConfig
from .pysyncobj_node import FAIL_REASON, RETRYABLE, SERIALIZER_STATE, SyncObjConf, TCPNode, _Node
from .snapshot import read_snapshot_file, write_snapshot_file
from .watchdog import Progress, recovery_reason, track_progress

__all__ = ["PysyncobjRaft"]

log = get_logger("raft")


class PysyncobjRaft:
    """asyncio-facing Raft: `await apply(...)`, `await barrier()`, leadership, membership."""

    def __init__(self, config: RaftConfig, fsm: FSM, on_change: OnChange) -> None:
        pysyncobj_node.check_version()
        pysyncobj_node.patch_meta_storer(config.fsync)
        pysyncobj_node.install_safe_wire()
        if not config.password:
            raise RaftError("the Raft port needs a key: -encrypt, or a generated one for a single server")
        self.config = config
        self.fsm = fsm
        self.lock = threading.RLock()
        self._on_change = on_change
        self._loop: asyncio.AbstractEventLoop | None = None
        self._node: _Node | None = None
        self._pending: deque[tuple[bytes, asyncio.Future[Any], float]] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING
        self._fatal: str | None = None
        self._tick_errors: deque[float] = deque(maxlen=100)
        self._last_leader: str | None = None
        self._partners: list[str] = []
        self._stopping = False
        self._log_handler = _PysyncobjLogWatcher(self)
        self._log_bytes = 0
        self._request_prefix = uuid.uuid4().bytes[:8]
        self._request_seq = 0
        # Fault injection for the watchdog's test: the first node raises in this many ticks.
        self._injected_tick_errors = int(os.environ.get("MESH_FAULT_TICK_ERRORS", "0") or 0)

    # ---- lifecycle --------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self._node is not None

    @property
    def raft_dir(self) -> str | None:
        return os.path.join(self.config.data_dir, "raft") if self.config.data_dir else None

    def saved_peers(self) -> list[str] | None:
        """Peers persisted by an earlier run: a restarted server rejoins without a join."""
        if not self.raft_dir:
            return None
        try:
            with open(os.path.join(self.raft_dir, "peers.json")) as f:
                peers = json.load(f)
        except (OSError, ValueError):
            return None
        return [p for p in peers if isinstance(p, str)] if isinstance(peers, list) else None

    def check_data_format(self) -> None:
        """Refuse a data-dir whose Raft log an older mesh wrote with pickle: we no longer
        unpickle anything, so it could not be applied."""
        if self.raft_dir and pysyncobj_node.pickled_meta(os.path.join(self.raft_dir, "journal.meta")):
            raise RaftError(
                f"{self.raft_dir} was written by an older mesh (pickled Raft log); start this server on a "
                "fresh -data-dir and restore a snapshot ('mesh snapshot restore')"
            )

    def start(self, partners: list[str]) -> None:
        """Create the pysyncobj node. Must run on the main thread (pysyncobj's tick
        thread exits when the thread that created it does)."""
        self._loop = asyncio.get_running_loop()
        self.check_data_format()
        logging.getLogger("pysyncobj").addHandler(self._log_handler)
        self._partners = sorted(p for p in partners if p != self.config.self_address)
        self._node = self._create_node(self._partners)
        if self._injected_tick_errors:
            self._node.addOnTickCallback(self._inject_tick_error)
        self._persist_peers()
        self._tasks.append(self._loop.create_task(self._flusher(), name="raft-flusher"))
        self._tasks.append(self._loop.create_task(self._watchdog(), name="raft-watchdog"))
        log.info("raft_started", address=self.config.self_address, peers=self._partners, data_dir=self.raft_dir)

    def _conf(self) -> SyncObjConf:
        cfg = self.config
        kwargs: dict[str, Any] = dict(
            bindAddress=f"{cfg.bind_host}:{cfg.self_address.rsplit(':', 1)[1]}",
            password=cfg.password,
            appendEntriesUseBatch=False,
            dynamicMembershipChange=True,
            commandsWaitLeader=False,
            leaderFallbackTimeout=cfg.lease,
            raftMinTimeout=0.2 if cfg.fast_elections else 0.4,
            raftMaxTimeout=0.3 if cfg.fast_elections else 1.4,
            appendEntriesPeriod=0.05 if cfg.fast_elections else 0.1,
            connectionTimeout=3.5,
            connectionRetryTime=1.0,
            logCompactionMinEntries=cfg.compaction_min_entries,
            logCompactionMinTime=cfg.compaction_min_time,
            commandsQueueSize=100000,
            onStateChanged=self._on_state_changed,
            useFork=False,
        )
        if self.raft_dir:
            make_private_dir(self.raft_dir)
            kwargs.update(
                journalFile=os.path.join(self.raft_dir, "journal"),
                fullDumpFile=os.path.join(self.raft_dir, "snapshot.msgpack"),
                serializer=self._serialize,
                deserializer=self._deserialize,
                serializeChecker=self._serialize_checker,
            )
        return SyncObjConf(**kwargs)

    def _inject_tick_error(self) -> None:
        if self._injected_tick_errors > 0:
            self._injected_tick_errors -= 1
            raise RuntimeError("injected tick fault (MESH_FAULT_TICK_ERRORS)")

    def _create_node(self, partners: list[str]) -> _Node:
        return _Node(self, self.config.self_address, partners, self._conf())

    async def stop(self) -> None:
        self._stopping = True
        await cancel_all(self._tasks)
        self._tasks.clear()
        while self._pending:
            _, fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(NoLeader("server shutting down"))
        node, self._node = self._node, None
        if node is not None:
            self._persist_peers(node)
            await asyncio.to_thread(node.destroy_synchronous)
        logging.getLogger("pysyncobj").removeHandler(self._log_handler)

    # ---- status -------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        return self._node is not None and self._node._isLeader()

    @property
    def leader(self) -> str | None:
        if self._node is None:
            return None
        leader = self._node._getLeader()
        return leader.id if leader is not None else None

    def lease_valid(self) -> bool:
        return self._node is not None and self._node.lease_valid(self.config.lease)

    def last_contact(self) -> float:
        """Seconds since this server last heard from a leader (0 on a leader)."""
        if self._node is None:
            return float("inf")
        if self._node._isLeader():
            return 0.0
        return max(0.0, time.monotonic() - self._node._last_leader_contact)

    def caught_up(self) -> bool:
        """A default read may be served here: the leader, or a follower that heard the
        leader within half the lease and has applied everything that leader said was
        committed. A follower just back from a partition knows a leader long before it
        has caught up; its state may then be far older than the lease. Half: the last
        message may have been sent before a write committed and arrived late, so the
        other half is for network delay (heartbeats come every 0.1 s: a healthy follower
        never gets near it). The chaos suite found a read 2.17 s stale with the whole
        lease as the window."""
        node = self._node
        if node is None:
            return False
        if node._isLeader():
            return self.lease_valid()
        leader_commit = node._SyncObj__leaderCommitIndex or 0
        return self.last_contact() < self.config.lease / 2 and node.raftLastApplied >= leader_commit

    def has_leader(self) -> bool:
        if self._node is None:
            return False
        if self._node._isLeader():
            return self.lease_valid()
        return self.leader is not None and self.last_contact() < self.config.lease * 2

    def voters(self) -> list[str]:
        if self._node is None:
            return []
        return sorted([self.config.self_address] + [n.id for n in self._node.otherNodes])

    def peer_connected(self, address: str) -> bool:
        return self._node is not None and self._node.isNodeConnected(TCPNode(address))

    def status(self) -> dict[str, Any]:
        if self._node is None:
            return {"state": "not started"}
        st = self._node.getStatus()
        return {k: (str(v) if not isinstance(v, int | float | str | bool | type(None)) else v) for k, v in st.items()}

    @property
    def applied_index(self) -> int:
        return self._node.raftLastApplied if self._node else 0

    @property
    def commit_index(self) -> int:
        return self._node.raftCommitIndex if self._node else 0

    # ---- writes ---------------------------------------------------------------------
    def _request_id(self) -> bytes:
        """Unique across the cluster: a random per-process prefix and a counter
        (os.urandom per write showed up in profiles)."""
        self._request_seq += 1
        return self._request_prefix + self._request_seq.to_bytes(8, "big")

    async def apply(self, msg_type: MessageType, body: Any = None, timeout: float | None = None) -> Any:
        """Commit one command and return the FSM's result for it."""
        raw = encode(msg_type, body, self._request_id())
        return await self.apply_raw(raw, timeout)

    async def apply_raw(self, raw: bytes, timeout: float | None = None) -> Any:
        if self._node is None:
            raise NoLeader("Raft is not running on this server yet")
        if self._fatal:
            raise RaftError(self._fatal)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + (timeout if timeout is not None else self.config.write_timeout)
        self._pending.append((raw, fut, deadline))
        self._wakeup.set()
        started = time.perf_counter()
        try:
            return await fut
        finally:
            RAFT.apply_seconds.observe(time.perf_counter() - started)

    async def barrier(self, timeout: float | None = None) -> None:
        """Returns once every entry committed before the call is applied here (?consistent)."""
        await self.apply(MessageType.BARRIER, None, timeout)

    async def _flusher(self) -> None:
        assert self._loop is not None
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch: list[tuple[bytes, asyncio.Future[Any], float]] = []
            size = 0
            while self._pending and len(batch) < self.config.max_batch_commands:
                raw, fut, deadline = self._pending[0]
                if batch and size + len(raw) > self.config.max_batch_bytes:
                    break
                self._pending.popleft()
                if fut.done():
                    continue
                batch.append((raw, fut, deadline))
                size += len(raw)
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[bytes, asyncio.Future[Any], float]]) -> None:
        """Submit one entry; retry it (idempotent) until it commits or its deadlines pass."""
        assert self._loop is not None
        loop = self._loop
        payload = encode_batch([raw for raw, _, _ in batch])
        RAFT.batch_size.observe(len(batch))
        backoff = 0.02
        while True:
            live = [(raw, fut, dl) for raw, fut, dl in batch if not fut.done()]
            if not live:
                return
            now = loop.time()
            expired = [item for item in live if item[2] <= now]
            for _, fut, _ in expired:
                RAFT.applies.labels("timeout").inc()
                fut.set_exception(NoLeader() if not self.has_leader() else ApplyTimeout())
            if len(expired) == len(live):
                return
            node = self._node
            if node is None:
                for _, fut, _ in live:
                    if not fut.done():
                        fut.set_exception(NoLeader("server shutting down"))
                return
            attempt: asyncio.Future[tuple[Any, int]] = loop.create_future()

            def done(result: Any, err: int, attempt: asyncio.Future[tuple[Any, int]] = attempt) -> None:
                loop.call_soon_threadsafe(_resolve, attempt, (result, err))

            node.apply_batch(payload, callback=done)
            latest = max(dl for _, _, dl in live)
            wait = min(self.config.attempt_timeout, max(0.0, latest - loop.time()))
            try:
                result, err = await asyncio.wait_for(asyncio.shield(attempt), wait)
            except TimeoutError:
                result, err = None, FAIL_REASON.UNKNOWN_OUTCOME
            if err == FAIL_REASON.SUCCESS:
                if isinstance(result, FatalStateError):
                    for _, fut, _ in batch:
                        if not fut.done():
                            fut.set_exception(RaftError(str(result)))
                    return
                for (_, fut, _), res in zip(batch, result, strict=True):
                    if not fut.done():
                        RAFT.applies.labels("ok").inc()
                        fut.set_result(res)
                return
            if err not in RETRYABLE and err != FAIL_REASON.REQUEST_DENIED:
                log.warning("raft_apply_failed", reason=err)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 0.25)

    # ---- the FSM side (pysyncobj's tick thread) ---------------------------------------
    def _apply_on_raft_thread(self, index: int, payload: bytes) -> Any:
        if self._fatal:
            return FatalStateError(self._fatal)
        # pysyncobj counts entries, not bytes, and keeps the whole log in memory: with
        # group commit one entry can hold thousands of commands, so bound it by size too
        self._log_bytes += len(payload)
        if self._log_bytes > self.config.compaction_max_bytes and self._node is not None:
            self._log_bytes = 0
            self._node.forceLogCompaction()
        try:
            with self.lock:
                results = self.fsm.apply_batch(index, payload, time.perf_counter, _observe_apply)
                changed = self.fsm.store.drain_touched()
        except FatalStateError as exc:
            # Never raise into pysyncobj (it would retry forever); stop serving instead.
            self._fatal = f"cannot apply the Raft log at index {index}: {exc}"
            log.critical("fsm_fatal", index=index, error=str(exc))
            return exc
        RAFT.applied_index.set(index)
        log.debug("raft_applied", index=index, commands=len(results))
        if changed and self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_change, changed, index)
        return results

    def _on_state_changed(self, old: int, new: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._log_state, old, new)

    def _log_state(self, old: int, new: int) -> None:
        names = {0: "follower", 1: "candidate", 2: "leader"}
        RAFT.is_leader.set(1 if new == 2 else 0)
        if new == 2 or old == 2:
            RAFT.leader_changes.inc()
            log.info("raft_state_changed", old=names.get(old, old), new=names.get(new, new),
                     term=self._node.raftCurrentTerm if self._node else None)
        if self._on_change is not None:
            self._on_change({"raft.state"}, 0)

    # ---- snapshots (serializer hooks, called on the tick thread) ---------------------
    def _serialize(self, tmp_file: str, raft_data: tuple[Any, Any, Any]) -> None:
        """Copy the state now (consistent at the snapshot's index), write it elsewhere.

        We do not create `tmp_file`: the library's rename of it fails harmlessly and the
        real outcome is reported through `_serialize_checker`."""
        last, prev, cluster = raft_data
        with self.lock:
            state = self.fsm.snapshot_state()
        self._snapshot_state = SERIALIZER_STATE.SERIALIZING
        dump_file = tmp_file[: -len(".tmp")]
        members = sorted(getattr(n, "id", str(n)) for n in cluster)
        threading.Thread(
            target=self._write_snapshot, args=(dump_file, state, tuple(last), tuple(prev), members),
            name="raft-snapshot", daemon=True,
        ).start()

    def _write_snapshot(self, dump_file: str, state: Any, last: tuple[Any, ...], prev: tuple[Any, ...], members: list[str]) -> None:
        started = time.perf_counter()
        try:
            write_snapshot_file(dump_file, state, last, prev, members, self.config.fsync)
            RAFT.snapshots.labels("ok").inc()
            RAFT.snapshot_seconds.set(time.perf_counter() - started)
            self._snapshot_state = SERIALIZER_STATE.SUCCESS
        except Exception as exc:  # disk full, permissions: keep running on the log
            RAFT.snapshots.labels("failed").inc()
            log.error("raft_snapshot_failed", error=str(exc))
            self._snapshot_state = SERIALIZER_STATE.FAILED

    def _serialize_checker(self) -> int:
        state = self._snapshot_state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snapshot_state = SERIALIZER_STATE.NOT_SERIALIZING
        return state

    def _deserialize(self, file_name: str) -> tuple[Any, Any, list[TCPNode]]:
        last, prev, cluster, restored = read_snapshot_file(file_name)
        with self.lock:
            self.fsm.store = restored.store
            self.fsm.dedupe = restored.dedupe
            self.fsm.last_index = restored.last_index
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._on_change, {"*"}, restored.last_index)
        return last, prev, [TCPNode(a) for a in cluster]

    # ---- membership -----------------------------------------------------------------------
    async def _membership(self, op: str, address: str, timeout: float = 10.0) -> None:
        node = self._node
        if node is None:
            raise NoLeader()
        if not node._isLeader():
            raise MembershipError("not the leader")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[Any, int]] = loop.create_future()

        def done(result: Any, err: int) -> None:
            loop.call_soon_threadsafe(_resolve, fut, (result, err))

        if op == "add":
            node.addNodeToCluster(address, callback=done)
        else:
            node.removeNodeFromCluster(address, callback=done)
        try:
            _, err = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise MembershipError(f"timed out changing membership ({op} {address})") from None
        if err == FAIL_REASON.REQUEST_DENIED:
            raise MembershipError("another membership change is in progress; try again")
        if err != FAIL_REASON.SUCCESS:
            raise MembershipError(f"membership change failed (reason {err})")
        log.info("raft_membership_changed", op=op, peer=address)
        self._persist_peers()

    async def add_peer(self, address: str) -> None:
        if address in self.voters():
            return
        await self._membership("add", address)

    async def remove_peer(self, address: str) -> None:
        if address not in self.voters():
            raise MembershipError(f"address {address!r} is not a Raft peer")
        await self._membership("remove", address)

    async def transfer_leadership(self, timeout: float = 5.0) -> bool:
        """Hand leadership to the most caught-up follower (Raft TimeoutNow).

        pysyncobj refuses while no follower has the whole log, which is common under
        writes, so the request is repeated until it takes or `timeout` passes."""
        node = self._node
        if node is None or not node._isLeader() or not node.otherNodes:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_try = 0.0
        while loop.time() < deadline:
            if not node._isLeader():
                if self.leader not in (None, self.config.self_address):
                    return True
            elif loop.time() >= next_try:
                node.transferLeadership()
                next_try = loop.time() + 0.3
            await asyncio.sleep(0.02)
        return not node._isLeader()

    def _persist_peers(self, node: _Node | None = None) -> None:
        node = node or self._node
        if node is None or not self.raft_dir:
            return
        peers = sorted(n.id for n in node.otherNodes)
        write_private(os.path.join(self.raft_dir, "peers.json"), json.dumps(peers).encode(), sync=self.config.fsync)

    # ---- watchdog ---------------------------------------------------------------------------
    def note_tick_error(self) -> None:
        self._tick_errors.append(time.monotonic())
        RAFT.tick_errors.inc()

    async def _watchdog(self) -> None:
        """Notices a node pysyncobj left broken and resyncs it from the leader."""
        progress = Progress(-1, time.monotonic())
        last_peers: list[str] = []
        while True:
            await asyncio.sleep(self.config.watchdog_interval)
            RAFT.watchdog_runs.inc()
            node = self._node
            if node is None:
                continue
            RAFT.commit_index.set(node.raftCommitIndex)
            RAFT.term.set(node.raftCurrentTerm)
            RAFT.peers.set(len(node.otherNodes) + 1)
            RAFT.last_contact.set(min(self.last_contact(), 1e9))
            leader = self.leader
            if leader != self._last_leader:
                self._last_leader = leader
                log.info("raft_leader", leader=leader, term=node.raftCurrentTerm)
            peers = sorted(n.id for n in node.otherNodes)
            if peers != last_peers:
                last_peers = peers
                self._persist_peers()
            now = time.monotonic()
            applied, leader_commit = node.raftLastApplied, node._SyncObj__leaderCommitIndex or 0
            progress = track_progress(progress, applied, leader_commit, now)
            reason = recovery_reason(
                tick_errors=self._tick_errors, applied=applied, leader_commit=leader_commit,
                applied_since=progress.since, thread_alive=node.tick_thread_alive(), stopping=self._stopping,
                is_leader=node._isLeader(), persistent=self.raft_dir is not None, now=now,
                stuck_after=self.config.stuck_after,
            )
            if reason is not None:
                await self._recover(reason)
                progress = Progress(-1, time.monotonic())

    async def _recover(self, reason: str) -> None:
        """Move this node's Raft data aside and start over from the leader's snapshot."""
        assert self.raft_dir is not None
        node = self._node
        if node is None:
            return
        partners = sorted(n.id for n in node.otherNodes)
        log.error("raft_watchdog_recovering", reason=reason, peers=partners)
        RAFT.recoveries.inc()
        self._injected_tick_errors = 0
        self._node = None
        await asyncio.to_thread(node.destroy_synchronous)
        aside = f"{self.raft_dir}.broken-{int(time.time())}"
        shutil.move(self.raft_dir, aside)
        with self.lock:
            self.fsm.__init__()  # type: ignore[misc]
        self._tick_errors.clear()
        self._node = self._create_node(partners)
        log.warning("raft_watchdog_recovered", moved_to=aside)


_TYPE_NAMES = {int(t): t.name.lower() for t in MessageType}


def _observe_apply(msg_type: int, seconds: float) -> None:
    RAFT.fsm_apply_seconds.labels(_TYPE_NAMES.get(msg_type, str(msg_type))).observe(seconds)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class _PysyncobjLogWatcher(logging.Handler):
    """Counts what pysyncobj only logs: tick exceptions and unsafe truncations."""

    def __init__(self, raft: PysyncobjRaft) -> None:
        super().__init__(level=logging.WARNING)
        self._raft = raft

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "failed _onTick" in msg:
            self._raft.note_tick_error()
        elif "truncating already-applied" in msg:
            RAFT.truncations.inc()
