"""The Connect CA on the servers: signing, configuration, and the leader's CA duties.

Endpoints: `ConnectCA.Sign` (a leaf for a service registered on the requesting node,
rate-limited per the CA configuration) and `ConnectCA.Configure`. The leader's duty,
run each second by leader.py: create the CA once, rotate the root well before it
expires, prune rotated-out roots once no leaf of theirs can be valid. Every change goes
through Raft as CA_SET, compare-and-set on the CA state's index, so a configuration
change racing the leader's own rotation fails instead of overwriting it. The pure
certificate work is ca.manager's; key generation runs in a thread.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Callable
from typing import Any

from mesh.ca import manager as ca_manager
from mesh.catalog.commands import MessageType
from mesh.catalog.connect import may_hold_identity
from mesh.catalog.errors import InvalidRequest, MeshError, RateLimited
from mesh.catalog.fsm import FSM, SERIALS_PER_ENTRY

from ..config import AgentConfig
from ..errors import NoLeader
from ..logging import get_logger
from ..metrics import CA, LEADER
from ..rpc import Handler
from . import rpc_args
from .acl import ServerACLs
from .clock import Clock, utc_now
from .csr_limit import CSRLimiter
from .membership import Membership
from .raft import Raft

__all__ = ["ConnectCA", "MAX_CSR_BYTES", "csr_size_ok"]

# a CSR with one key and a few dozen names is a few KiB: anything past this is not one
MAX_CSR_BYTES = 32 * 1024


def csr_size_ok(args: dict[str, Any], what: str) -> None:
    """Refuse an oversized CSR before anything parses it."""
    if len(str(args.get("csr", ""))) > MAX_CSR_BYTES:
        CA.sign_errors.inc()
        raise InvalidRequest(f"{what}: csr is larger than {MAX_CSR_BYTES} bytes")

log = get_logger("server")


class ConnectCA:
    def __init__(self, cfg: AgentConfig, membership: Membership, fsm: FSM, clock: Clock, acls: ServerACLs) -> None:
        self.cfg = cfg
        self.acls = acls
        self.membership = membership
        self.fsm = fsm
        self.clock = clock
        self._csr_limiter = CSRLimiter()
        self._last_error: tuple[str, float] = ("", 0.0)

    def rpc_methods(self) -> dict[str, Handler]:
        return {"ConnectCA.Sign": self._rpc_sign, "ConnectCA.Configure": self._rpc_configure}

    # ---- endpoints ---------------------------------------------------------------------
    async def sign(self, args: dict[str, Any]) -> dict[str, Any]:
        """ConnectCA.Sign: a leaf for a service registered on the requesting node (or fronted
        by a connect-proxy registered there)."""
        raft = self.membership.require_raft()
        service, node, csr = str(args.get("service", "")), str(args.get("node", "")), str(args.get("csr", ""))
        # Consul: a leaf is signed only for a token that may write the service
        (await self.acls.access(args.get("token"))).require("service", service, "write")
        with raft.lock:
            store = self.fsm.store
            state = store.ca
            owned = any(may_hold_identity(s, service) for s in store.node_services(node).values())
        if not owned:
            CA.sign_errors.inc()
            raise InvalidRequest(f"service {service!r} is not registered on node {node!r}: cannot sign its identity")
        return await self.issue(raft, state, lambda serial, now: ca_manager.sign_csr(
            state, csr, service, self.cfg.datacenter, serial, now, self.cfg.encrypt))

    async def issue(self, raft: Raft, state: dict[str, Any] | None,
                    sign: Callable[[int, datetime.datetime], dict[str, Any]]) -> dict[str, Any]:
        """Every signing (service leaves, agents' auto_encrypt certificates) under the
        CA configuration's limits: a serial through Raft, `sign(serial, now)` in a
        thread, the metrics."""
        started = time.perf_counter()
        config = state.get("config", {}) if state else {}
        try:
            self._csr_limiter.acquire(self.clock.monotonic(), float(config.get("CSRMaxPerSecond") or 0),
                                      int(config.get("CSRMaxConcurrent") or 0))
        except RateLimited:
            CA.sign_rate_limited.inc()
            raise
        try:
            serial = await raft.apply(MessageType.CA_SERIAL)
            now = utc_now(self.clock)
            signed = await asyncio.to_thread(sign, int(serial), now)
        except MeshError:
            CA.sign_errors.inc()
            raise
        finally:
            self._csr_limiter.release()
        CA.sign_seconds.observe(time.perf_counter() - started)
        index = int(serial) // SERIALS_PER_ENTRY  # the Raft entry that recorded the serial
        return dict(signed, CreateIndex=index, ModifyIndex=index)

    async def _rpc_sign(self, args: dict[str, Any]) -> dict[str, Any]:
        for key in ("service", "node", "csr"):
            rpc_args.string(args, key, "ConnectCA.Sign")
        csr_size_ok(args, "ConnectCA.Sign")
        rpc_args.string(args, "token", "ConnectCA.Sign")
        return await self.sign(args)

    async def configure(self, body: Any) -> bool:
        """PUT /v1/connect/ca/configuration. A new key type, size or root lifetime
        rotates the root (cross-signed by the old one); other changes apply as they are.
        Bad input changes nothing."""
        raft = self.membership.require_raft()
        config = ca_manager.validate_config(body)
        with raft.lock:
            state = self.fsm.store.ca
        if not state:
            raise NoLeader("the CA is not initialized yet")
        old = state["config"]
        if any(config[k] != old.get(k) for k in ("PrivateKeyType", "PrivateKeyBits", "RootCertTTL")) or \
                bool(body.get("ForceRotation")):
            await self._rotate(raft, state, config, "configuration changed",
                               without_cross_signing=bool(body.get("ForceWithoutCrossSigning")))
        else:
            await self._commit(raft, state, ca_manager.reconfigure(state, config))
        return True

    async def _rpc_configure(self, args: dict[str, Any]) -> bool:
        (await self.acls.access(rpc_args.string(args, "token", "ConnectCA.Configure"))).require("operator", None, "write")
        return await self.configure(args.get("body"))

    # ---- the leader's duty -----------------------------------------------------------------
    async def _ensure(self, raft: Raft) -> None:
        """On first leadership: the cluster's trust domain and first root, through Raft."""
        with raft.lock:
            initialized = bool(self.fsm.store.ca)
        if initialized:
            return
        serial = await raft.apply(MessageType.CA_SERIAL)
        now = utc_now(self.clock)
        state = await asyncio.to_thread(ca_manager.initial_state, now, self.cfg.encrypt, int(serial),
                                        dict(self.cfg.ca_config) or None)
        result = await raft.apply(MessageType.CA_SET, state)
        if result is True:
            log.info("ca_initialized", trust_domain=state["trust_domain"], root=state["active_root_id"])

    async def _rotate(self, raft: Raft, state: dict[str, Any], config: dict[str, Any], reason: str,
                      without_cross_signing: bool = False) -> None:
        serial = await raft.apply(MessageType.CA_SERIAL)
        now = utc_now(self.clock)
        new_state = await asyncio.to_thread(ca_manager.rotate, state, config, now, self.cfg.encrypt, int(serial),
                                            without_cross_signing)
        await self._commit(raft, state, new_state)
        CA.rotations.inc()
        log.info("ca_root_rotated", old=state["active_root_id"], new=new_state["active_root_id"], reason=reason)

    @staticmethod
    async def _commit(raft: Raft, based_on: dict[str, Any], new_state: dict[str, Any]) -> None:
        """CA_SET, refused by the FSM if another change landed since `based_on` was read
        (a configuration change racing the leader's own rotation or pruning)."""
        result = await raft.apply(MessageType.CA_SET, dict(new_state, cas_index=based_on.get("index", 0)))
        if result is not True:
            raise InvalidRequest(str(result.get("Error") if isinstance(result, dict) else result))

    async def maintain(self, raft: Raft) -> None:
        """The leader's CA duties: create the CA once, rotate the root well before it
        expires, prune rotated-out roots once no leaf of theirs can be valid."""
        await self._ensure(raft)
        with raft.lock:
            state = self.fsm.store.ca
        now = utc_now(self.clock)
        reason = ca_manager.rotation_due(state, now)
        if reason:
            await self._rotate(raft, state, state["config"], reason)
            return
        pruned = ca_manager.prune(state, now)
        if pruned is not None:
            await self._commit(raft, state, pruned)
            log.info("ca_roots_pruned", removed=sorted({r["ID"] for r in state["roots"]} - {r["ID"] for r in pruned["roots"]}))

    async def maintain_logged(self, raft: Raft) -> None:
        """Runs each second while something fails: the metric counts every failure, the
        log says a repeated one once a minute."""
        try:
            await self.maintain(raft)
        except MeshError as exc:
            LEADER.ca_errors.inc()
            now = self.clock.monotonic()
            if str(exc) != self._last_error[0] or now - self._last_error[1] >= 60:
                log.warning("ca_maintenance_failed", error=str(exc))
                self._last_error = (str(exc), now)
