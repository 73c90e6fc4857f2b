"""The finite state machine: applies committed Raft entries to the store.

Deterministic: apply reads no clock, randomness, environment or network, so every
server that applies the same log reaches the same `state_hash()`. Validation failures
are results (`{"Error": ...}`), never exceptions: pysyncobj retries an applied method
that raises, forever. Only a log that cannot be decoded, or a command type this
version does not know and may not skip, is fatal.

One Raft entry is a batch of commands (group commit); each carries a request ID, and
the dedupe table remembers the result of the last DEDUPE_LIMIT request IDs so a
command sent again after a timeout applies once and answers the same.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import msgpack

from .acl_state import ACLWrite
from .commands import (
    IGNORE_UNKNOWN,
    Command,
    ConfigDeleteRequest,
    ConfigSetRequest,
    DeregisterRequest,
    KVRequest,
    MessageType,
    RegisterRequest,
    SessionDestroyRequest,
    decode,
    decode_batch,
)
from .config_entries import (
    PROXY_DEFAULTS,
    SERVICE_DEFAULTS,
    SERVICE_INTENTIONS,
    SERVICE_ROUTER,
    graph_violations,
)
from .discovery_chain import CHAIN_KINDS, chain_failures
from .errors import CatalogError, FatalStateError, InvalidRequest
from .kv import KVEntry, KVOverlay, TxnError, run_op, run_txn
from .sessions import Session, invalidate_session, session_problem
from .store import Store
from .structs import (
    HEALTH_STATES,
    Check,
    ConfigEntry,
    Intention,
    Node,
    ServerInfo,
    Service,
    row_from_wire,
    row_to_wire,
    with_index,
)

__all__ = ["FSM", "SNAPSHOT_VERSION", "DEDUPE_LIMIT"]

SNAPSHOT_VERSION = 5
# versions this one reads: 2 is 3 without config entries, 3 is 4 without KV and
# sessions, 4 is 5 without ACLs
_READABLE_VERSIONS = (2, 3, 4, 5)
DEDUPE_LIMIT = 16384
# A Raft entry carries a batch of commands (at most 4096, see agent/server/raft/protocol.py), so a CA
# serial is the entry's index times this plus the command's place in the batch.
SERIALS_PER_ENTRY = 1 << 16
# The datacenter chains are compiled in to check a write: the state machine knows none,
# and whether a chain compiles (loops, subsets, protocols) does not depend on it.
_CHECK_DATACENTER = "dc1"
# kinds whose writes can break a discovery chain (its entries, and the protocols under it)
_CHAIN_INPUTS = (*CHAIN_KINDS, SERVICE_DEFAULTS, PROXY_DEFAULTS)


class FSM:
    def __init__(self) -> None:
        self.store = Store()
        self.dedupe: dict[bytes, tuple[int, Any]] = {}
        self.last_index = 0
        self.applied_by_type: dict[int, int] = {}
        self._handlers: dict[int, Callable[[int, Command], Any]] = {
            MessageType.REGISTER: self._register,
            MessageType.DEREGISTER: self._deregister,
            MessageType.BARRIER: lambda index, cmd: None,
            MessageType.SERVER_UPSERT: self._server_upsert,
            MessageType.SERVER_REMOVE: self._server_remove,
            MessageType.RESTORE: self._restore_command,
            MessageType.INTENTION_UPSERT: self._intention_upsert,
            MessageType.INTENTION_DELETE: self._intention_delete,
            MessageType.CA_SET: self._ca_set,
            MessageType.CA_SERIAL: lambda index, cmd: index * SERIALS_PER_ENTRY + self._position,
            MessageType.CONFIG_SET: self._config_set,
            MessageType.CONFIG_DELETE: self._config_delete,
            MessageType.KV_APPLY: self._kv_apply,
            MessageType.TXN: self._txn,
            MessageType.SESSION_CREATE: self._session_create,
            MessageType.SESSION_DESTROY: self._session_destroy,
            MessageType.KV_REAP: self._kv_reap,
            MessageType.ACL: self._acl,
        }
        self._position = 0  # the command's place in the entry being applied

    # ---- apply ---------------------------------------------------------------
    def apply_batch(
        self,
        index: int,
        payload: bytes,
        clock: Callable[[], float] | None = None,
        observe: Callable[[int, float], None] | None = None,
    ) -> list[Any]:
        """Apply one Raft entry (a batch of encoded commands) at `index`.

        With `clock` and `observe`, reports (command type, seconds) per command for the
        metrics; time never reaches the state."""
        results = []
        for position, raw in enumerate(decode_batch(payload)):
            self._position = position
            if clock is None or observe is None:
                results.append(self.apply(index, raw))
            else:
                started = clock()
                results.append(self.apply(index, raw))
                observe(raw[0] & 0x7F if raw else -1, clock() - started)
        self._position = 0
        self.last_index = max(self.last_index, index)
        return results

    def apply(self, index: int, raw: bytes) -> Any:
        cmd = decode(raw)
        if cmd.request_id and cmd.request_id in self.dedupe:
            return self.dedupe[cmd.request_id][1]
        handler = self._handlers.get(cmd.type)
        if handler is None:
            if cmd.flags & IGNORE_UNKNOWN:
                return None
            raise FatalStateError(f"unknown command type {cmd.type} at index {index}")
        try:
            result = handler(index, cmd)
        except CatalogError as exc:
            if isinstance(exc, FatalStateError):
                raise
            result = {"Error": str(exc)}
        self.applied_by_type[cmd.type] = self.applied_by_type.get(cmd.type, 0) + 1
        if cmd.request_id:
            self.dedupe[cmd.request_id] = (index, result)
            while len(self.dedupe) > DEDUPE_LIMIT:
                del self.dedupe[next(iter(self.dedupe))]
        return result

    def _register(self, index: int, cmd: Command) -> Any:
        req: RegisterRequest = cmd.body
        store = self.store
        self._validate_register(req)
        if not (req.skip_node_update and store.node(req.node.node) is not None):
            store.ensure_node(index, req.node)
        if req.service is not None:
            store.ensure_service(index, req.node.node, req.service)
        for check in req.checks:
            store.ensure_check(index, req.node.node, check)
        return True

    def _validate_register(self, req: RegisterRequest) -> None:
        """Everything that could fail, checked before the store is touched: no half-writes."""
        store = self.store
        if req.node.id:
            for other in store.nodes.values():
                if other.id == req.node.id and other.node.lower() != req.node.node.lower():
                    raise InvalidRequest(
                        f"Error updating node: node ID {req.node.id!r} conflicts with node {other.node!r}"
                    )
        known = set(store.node_services(req.node.node))
        if req.service is not None:
            known.add(req.service.id)
        for check in req.checks:
            if check.status not in HEALTH_STATES:
                raise InvalidRequest(f"Invalid check status: {check.status!r}")
            if check.service_id and check.service_id not in known:
                raise InvalidRequest(
                    f"Missing service registration for check {check.check_id!r}: "
                    f"service {check.service_id!r} is not on node {req.node.node!r}"
                )

    def _deregister(self, index: int, cmd: Command) -> Any:
        req: DeregisterRequest = cmd.body
        if req.service_id:
            self.store.delete_service(index, req.node, req.service_id)
        if req.check_id:
            self.store.delete_check(index, req.node, req.check_id)
        if not req.service_id and not req.check_id:
            self.store.delete_node(index, req.node)
        return True

    def _server_upsert(self, index: int, cmd: Command) -> Any:
        self.store.upsert_server(index, cmd.body)
        return True

    def _server_remove(self, index: int, cmd: Command) -> Any:
        self.store.remove_server(index, str(cmd.body))
        return True

    def _intention_upsert(self, index: int, cmd: Command) -> Any:
        intention, mode = cmd.body
        if intention.permissions:
            problems = graph_violations(self.store, (), [intention.destination_name])
            if problems:
                raise InvalidRequest(problems[0])
        row = self.store.upsert_intention(index, intention, mode)
        return {"ID": row.id}

    def _intention_delete(self, index: int, cmd: Command) -> Any:
        if not self.store.delete_intention(index, str(cmd.body)):
            return {"Error": f"Intention {cmd.body!r} not found", "NotFound": True}
        return True

    # ---- config entries --------------------------------------------------------
    def _config_modify_index(self, kind: str, name: str) -> int | None:
        """The entry's ModifyIndex for CAS, or None when it does not exist. Intentions
        from a snapshot older than config entries have rows but no record."""
        if kind == SERVICE_INTENTIONS:
            rows = self.store.intentions_to(name)
            if not rows:
                return None
            record = self.store.config_entry(kind, name)
            return record.modify_index if record else max(r.modify_index for r in rows)
        entry = self.store.config_entry(kind, name)
        return entry.modify_index if entry else None

    def _check_graph(self, kind: str, name: str, proposed: ConfigEntry | None,
                     intentions: tuple[Intention, ...] = ()) -> None:
        """Refuse a write that breaks a rule between entries (catalog.config_entries.
        graph_violations) which held before it: the protocol under a router or under L7
        intentions. Violations already there (say, from an old snapshot) are not this
        write's fault and do not block it."""
        if kind == SERVICE_INTENTIONS and not any(i.permissions for i in intentions):
            return
        if kind == SERVICE_ROUTER and proposed is None:
            return
        store = self.store
        l7 = {i.destination_name for i in store.intentions.values() if i.permissions}
        before = graph_violations(store, store.config_entries_of(SERVICE_ROUTER), l7)
        lookup = _Overlay(store, kind, name, proposed)
        routers = [r for r in store.config_entries_of(SERVICE_ROUTER)
                   if not (kind == SERVICE_ROUTER and r.name.lower() == name.lower())]
        if kind == SERVICE_ROUTER and proposed is not None:
            routers.append(proposed)
        if kind == SERVICE_INTENTIONS:
            l7 = {d for d in l7 if d.lower() != name.lower()} | {i.destination_name for i in intentions if i.permissions}
        for problem in graph_violations(lookup, routers, l7):
            if problem not in before:
                raise InvalidRequest(problem)

    def _check_chains(self, kind: str, name: str, proposed: ConfigEntry | None) -> None:
        """Refuse a write (or a delete) that makes a discovery chain fail to compile
        that compiled before: a redirect or splitter loop, a route, split, redirect or
        failover naming a subset its resolver does not define (a resolver deleted from
        under its references too), services of different protocols in one chain.

        Only a service with a router, splitter or resolver entry has a chain that can
        fail (any other compiles to the default resolver), so the chains compiled, on
        the store and on the store as the write would leave it, are those of every
        service such an entry names, plus the written one. Chains broken before (say,
        by an old snapshot) are not this write's fault and do not block it."""
        if kind not in _CHAIN_INPUTS:
            return
        store = self.store
        services = {e.name.lower() for k in CHAIN_KINDS for e in store.config_entries_of(k)}
        if kind in CHAIN_KINDS:
            services.add(name.lower())
        if not services:
            return
        before = chain_failures(store, services, _CHECK_DATACENTER)
        after = chain_failures(_Overlay(store, kind, name, proposed), services, _CHECK_DATACENTER)
        for service, problem in after.items():
            if service not in before:
                raise InvalidRequest(problem)

    def _config_set(self, index: int, cmd: Command) -> Any:
        req: ConfigSetRequest = cmd.body
        entry = req.entry
        if entry.kind == PROXY_DEFAULTS and entry.name != "global":
            raise InvalidRequest(f'invalid name ("{entry.name}"), only "global" is supported')
        current = self._config_modify_index(entry.kind, entry.name)
        if req.cas is not None and (current is not None if req.cas == 0 else current != req.cas):
            return False  # cas=0 creates only; cas=N needs the entry at ModifyIndex N
        if entry.kind == SERVICE_INTENTIONS:
            if not req.intentions:
                raise InvalidRequest("At least one source is required")
            self._check_graph(entry.kind, entry.name, entry, req.intentions)
            self.store.replace_intentions(index, entry.name, list(req.intentions), entry.body.get("Meta") or {})
            return True
        self._check_graph(entry.kind, entry.name, entry)
        self._check_chains(entry.kind, entry.name, entry)
        self.store.set_config_entry(index, entry)
        return True

    def _config_delete(self, index: int, cmd: Command) -> Any:
        req: ConfigDeleteRequest = cmd.body
        current = self._config_modify_index(req.kind, req.name)
        if req.cas is not None and current != req.cas:
            return False
        if current is None:
            return True
        self._check_graph(req.kind, req.name, None)
        self._check_chains(req.kind, req.name, None)
        if req.kind == SERVICE_INTENTIONS:
            self.store.replace_intentions(index, req.name, [], {})
        else:
            self.store.delete_config_entry(index, req.kind, req.name)
        return True

    def _ca_set(self, index: int, cmd: Command) -> Any:
        state = cmd.body
        if not isinstance(state, dict) or not state.get("roots") or not state.get("active_root_id"):
            return {"Error": "CA state needs roots and an active root"}
        if not any(r.get("ID") == state["active_root_id"] for r in state["roots"]):
            return {"Error": "the active root is not among the roots"}
        state = dict(state)
        expected = state.pop("cas_index", None)
        if expected is not None and expected != self.store.ca.get("index", 0):
            return {"Error": "the CA state changed meanwhile; retry"}
        self.store.ca = dict(state, index=index)
        self.store.touch_key(index, "ca")
        return True

    # ---- KV and sessions --------------------------------------------------------------
    def _session_ok(self, session_id: str) -> bool:
        session = self.store.sessions.get(session_id)
        return session is not None and not session_problem(self.store, session)

    def _kv_view(self, index: int, now: float) -> KVOverlay:
        self.store.kv.expire_lock_delays(now)
        return KVOverlay(self.store.kv, index, now, self._session_ok)

    def _kv_apply(self, index: int, cmd: Command) -> Any:
        """A /v1/kv write: true or false, or an error for a session that may not lock."""
        req: KVRequest = cmd.body
        if len(req.ops) != 1:
            raise InvalidRequest("a KV write is one operation")
        op = req.ops[0]
        view = self._kv_view(index, req.now)
        try:
            ok, _ = run_op(view, op.verb, op.key, op.value, op.flags, op.index, op.session)
        except TxnError as exc:
            return {"Error": str(exc), "Server": True}
        if ok:
            view.commit(self.store.touch)
        return ok

    def _txn(self, index: int, cmd: Command) -> Any:
        """A /v1/txn: every op against the same view, all applied or none."""
        req: KVRequest = cmd.body
        view = self._kv_view(index, req.now)
        results, errors = run_txn(view, req.ops)
        if errors:
            return {"Results": None, "Errors": errors}
        view.commit(self.store.touch)
        return {"Results": results, "Errors": None}

    def _session_create(self, index: int, cmd: Command) -> Any:
        session: Session = cmd.body
        store = self.store
        if session.id in store.sessions:
            return {"Error": f"Session {session.id!r} already exists", "Server": True}
        problem = session_problem(store, session)
        if problem:
            return {"Error": problem, "Server": True}
        row = with_index(session, index, index)
        store.sessions[row.id] = row
        store.touch(index, "sessions", "session:" + row.id, "session-node:" + row.node.lower())
        return {"ID": row.id}

    def _session_destroy(self, index: int, cmd: Command) -> Any:
        req: SessionDestroyRequest = cmd.body
        self.store.kv.expire_lock_delays(req.now)
        for session_id in req.ids:
            invalidate_session(self.store, index, session_id, req.now)
        return True

    def _kv_reap(self, index: int, cmd: Command) -> Any:
        return self.store.kv.reap(int(cmd.body))

    def _acl(self, index: int, cmd: Command) -> Any:
        """Tokens, policies, roles and the one-time bootstrap (catalog.acl_state)."""
        req: ACLWrite = cmd.body
        table, body = self.store.acl, req.body
        if req.op == "bootstrap":
            if table.bootstrap_index:
                return {"Error": f"ACL bootstrap no longer allowed (reset index: {table.bootstrap_index})",
                        "Forbidden": True}
            result: Any = table.bootstrap(index, body["accessor_id"], body["secret_id"], req.now,
                                          description=body["description"]).to_api(table)
        elif req.op in ("token-create", "token-update"):
            result = table.put_token(index, body, req.now, create=req.op == "token-create").to_api(table)
        elif req.op == "token-delete":
            result = table.delete_token(body["id"])
        elif req.op == "policy-set":
            if body.get("update") and body["id"] not in table.policies:
                raise InvalidRequest(f"Cannot find policy {body['id']}")
            result = table.put_policy(index, body).to_api()
        elif req.op == "policy-delete":
            result = table.delete_policy(body["id"])
        elif req.op == "role-set":
            if body.get("update") and body["id"] not in table.roles:
                raise InvalidRequest(f"Cannot find role {body['id']}")
            result = table.put_role(index, body).to_api(table)
        elif req.op == "role-delete":
            result = table.delete_role(body["id"])
        else:
            raise InvalidRequest(f"unknown ACL operation {req.op!r}")
        self.store.touch(index, "acl")
        return result

    def _restore_command(self, index: int, cmd: Command) -> Any:
        """A user's snapshot restore: replace the catalog, keep the Raft bookkeeping.

        Every watch key moves to `index` so blocking queries notice, and the servers
        table is kept: it describes the running cluster, not the restored data."""
        servers = self.store.servers
        restored = FSM.from_snapshot(bytes(cmd.body))
        self.store = restored.store
        self.store.servers = servers
        for key in list(self.store.indexes) + ["nodes", "services", "checks", "servers"]:
            self.store.indexes[key] = index
            self.store.touched.add(key)
        self.store.touched.add("*")
        return True

    # ---- snapshots -----------------------------------------------------------
    def snapshot_state(self) -> tuple[Store, dict[bytes, tuple[int, Any]], int]:
        """The parts a snapshot needs, copied: call under the apply lock, encode outside it."""
        return self.store.copy(), dict(self.dedupe), self.last_index

    @staticmethod
    def write_snapshot(out: BinaryIO, store: Store, dedupe: dict[bytes, tuple[int, Any]], last_index: int) -> None:
        """Stream the state as a sequence of msgpack objects: a header, then one object
        per row. Nothing the size of the whole state is built in memory, so a snapshot
        of a large catalog does not raise the server's peak memory."""
        packer = msgpack.Packer(use_bin_type=True)
        out.write(packer.pack({"v": SNAPSHOT_VERSION, "index": last_index, "indexes": store.indexes}))
        for node in store.nodes.values():
            out.write(packer.pack(("n", row_to_wire(node))))
        for per in store.services.values():
            for svc in per.values():
                out.write(packer.pack(("s", row_to_wire(svc))))
        for per in store.checks.values():
            for check in per.values():
                out.write(packer.pack(("c", row_to_wire(check))))
        for server in store.servers.values():
            out.write(packer.pack(("v", row_to_wire(server))))
        for intention in store.intentions.values():
            out.write(packer.pack(("i", row_to_wire(intention))))
        if store.ca:
            out.write(packer.pack(("ca", store.ca)))
        for entry in store.config.values():
            out.write(packer.pack(("ce", row_to_wire(entry))))
        kv = store.kv
        for kv_entry in kv.entries.values():
            out.write(packer.pack(("kv", row_to_wire(kv_entry))))
        for key, deleted in kv.tombstones.items():
            out.write(packer.pack(("kt", (key, deleted))))
        for key, until in kv.lock_delays.items():
            out.write(packer.pack(("kd", (key, until))))
        if kv.reaped_index:
            out.write(packer.pack(("kr", kv.reaped_index)))
        for session in store.sessions.values():
            out.write(packer.pack(("se", session.to_wire())))
        for record in store.acl.rows():
            out.write(packer.pack(record))
        for key, (index, result) in dedupe.items():
            out.write(packer.pack(("d", (key, index, result))))
        out.write(packer.pack(("end", None)))

    @staticmethod
    def encode_snapshot(store: Store, dedupe: dict[bytes, tuple[int, Any]], last_index: int) -> bytes:
        buf = io.BytesIO()
        FSM.write_snapshot(buf, store, dedupe, last_index)
        return buf.getvalue()

    def snapshot(self) -> bytes:
        return self.encode_snapshot(*self.snapshot_state())

    @classmethod
    def read_snapshot(cls, objects: Iterator[Any]) -> FSM:
        """Rebuild from the objects `write_snapshot` wrote (any msgpack Unpacker)."""
        fsm = cls()
        store = fsm.store
        try:
            header = next(objects)
            if not isinstance(header, dict) or header.get("v") not in _READABLE_VERSIONS:
                raise CatalogError("not a mesh snapshot (unknown format version)")
            store.indexes = dict(header["indexes"])
            fsm.last_index = int(header["index"])
            complete = False
            for kind, values in objects:
                if kind == "n":
                    node = row_from_wire(Node, values)
                    store.nodes[node.node.lower()] = node
                elif kind == "s":
                    svc = row_from_wire(Service, values)
                    key = svc.node.lower()
                    store.services.setdefault(key, {})[svc.id] = svc
                    store.index_service(key, svc)
                elif kind == "c":
                    check = row_from_wire(Check, values)
                    store.checks.setdefault(check.node.lower(), {})[check.check_id] = check
                elif kind == "v":
                    server = row_from_wire(ServerInfo, values)
                    store.servers[server.raft_address] = server
                elif kind == "i":
                    intention = row_from_wire(Intention, values)
                    store.intentions[intention.id] = intention
                elif kind == "ca":
                    store.ca = dict(values)
                elif kind == "ce":
                    entry = row_from_wire(ConfigEntry, values)
                    store.config[(entry.kind, entry.name.lower())] = entry
                elif kind == "kv":
                    kv_entry = KVEntry(*values)
                    store.kv.entries[kv_entry.key] = kv_entry
                elif kind == "kt":
                    store.kv.tombstones[values[0]] = int(values[1])
                elif kind == "kd":
                    store.kv.lock_delays[values[0]] = float(values[1])
                elif kind == "kr":
                    store.kv.reaped_index = int(values)
                elif kind == "se":
                    session = Session.from_wire(values)
                    store.sessions[session.id] = session
                elif kind in ("ap", "ar", "at", "ab"):
                    store.acl.restore_row(kind, values)
                elif kind == "d":
                    key_, index, result = values
                    fsm.dedupe[bytes(key_)] = (index, result)
                elif kind == "end":
                    complete = True
                    break
                else:
                    raise CatalogError(f"corrupt mesh snapshot: unknown record {kind!r}")
            if not complete:
                raise CatalogError("corrupt mesh snapshot: truncated")
            store.kv.rebuild_indexes()
        except CatalogError:
            raise
        except (StopIteration, KeyError, TypeError, ValueError, msgpack.UnpackException) as exc:
            raise CatalogError(f"not a mesh snapshot: {exc.__class__.__name__}: {exc}") from None
        return fsm

    @classmethod
    def from_snapshot(cls, data: bytes) -> FSM:
        unpacker = msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False, max_buffer_size=64 << 20)
        return cls.read_snapshot(iter(unpacker))

    def restore(self, data: bytes) -> None:
        other = FSM.from_snapshot(data)
        self.store, self.dedupe, self.last_index = other.store, other.dedupe, other.last_index
        self.store.touched.add("*")

    def state_hash(self) -> str:
        """Digest of the whole replicated state, equal on servers that applied the same log."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FSM):
            return NotImplemented
        return self.store == other.store and self.dedupe == other.dedupe and self.last_index == other.last_index

    __hash__ = None  # type: ignore[assignment]


class _Overlay:
    """The store as it would read with one entry replaced (or removed, when `entry` is
    None): what the graph rules are checked against before a write."""

    def __init__(self, store: Store, kind: str, name: str, entry: ConfigEntry | None) -> None:
        self._store, self._key, self._entry = store, (kind, name.lower()), entry

    def config_entry(self, kind: str, name: str) -> ConfigEntry | None:
        if (kind, name.lower()) == self._key:
            return self._entry
        return self._store.config_entry(kind, name)
