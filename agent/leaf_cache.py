"""The agent's leaf certificates: the key is generated here and never leaves the agent.

The first request for a service's leaf issues one; from then on a renewer task keeps
it fresh without being asked: at a random moment between 60% and 90% of the leaf's
lifetime (spreads the renewals of many services out), and at once when the active
root changes. Blocking requests (`?index`) wake when the renewer replaces the leaf, so
a proxy holding one always has the next before the last expires. While servers are
unreachable the cached leaf keeps being served and the renewer retries. A service
deregistered from this agent loses its renewer and its cached leaf. With a data-dir the
leaves and roots are kept on disk too (agent.leaf_files), so an agent restarted while no
server answers still serves them.

One watch on the roots (a blocking query) tells every renewer about a rotation and
keeps the roots' expiry metrics current.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mesh.ca import x509 as certs
from mesh.ca.manager import parse_time
from mesh.ca.spiffe import ServiceID, check_service_name
from mesh.catalog.errors import InvalidRequest, MeshError, RateLimited

from .backend import Backend
from .leaf_files import LeafFiles
from .logging import get_logger
from .metrics import CA
from .reads import ReadOptions

__all__ = ["LeafCache"]

log = get_logger("ca")

_RETRY_MIN, _RETRY_MAX = 0.5, 10.0
RENEW_FROM, RENEW_BY = 0.6, 0.9  # of a leaf's lifetime
_FIRST_PATIENCE = 30.0  # seconds a first leaf request retries rate-limited servers


def _forget(gauge: Any, label: str) -> None:
    try:
        gauge.remove(label)
    except KeyError:
        pass


def _record(leaf: _Leaf) -> dict[str, Any]:
    return {"body": leaf.body, "root_id": leaf.root_id, "index": leaf.index, "issued": leaf.issued.isoformat(),
            "renew_at": leaf.renew_at.isoformat()}


def _from_record(record: dict[str, Any]) -> _Leaf:
    body = dict(record["body"])
    return _Leaf(body, str(record["root_id"]), int(record["index"]),
                 datetime.datetime.fromisoformat(record["issued"]),
                 datetime.datetime.fromisoformat(record["renew_at"]), parse_time(body["ValidBefore"]))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class _Leaf:
    body: dict[str, Any]
    root_id: str
    index: int
    issued: datetime.datetime
    renew_at: datetime.datetime
    expires: datetime.datetime
    last_error: str = ""
    failures: int = field(default=0)


class LeafCache:
    def __init__(self, backend: Backend, datacenter: str, node_name: str, owns: Callable[[str], bool],
                 sync: Callable[[], Awaitable[Any]], rng: random.Random | None = None,
                 files: LeafFiles | None = None) -> None:
        self._backend = backend
        self._files = files or LeafFiles(None)
        self._sync = sync
        self._datacenter = datacenter
        self._node_name = node_name
        self._owns = owns
        self._rng = rng or random.Random()
        self._leaves: dict[str, _Leaf] = {}
        # the token the last request for each leaf came with: its signing and renewals
        # use it, so the servers sign only for a token that may write the service
        self._tokens: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._renewers: dict[str, asyncio.Task[None]] = {}
        self._leaf_changed: dict[str, asyncio.Event] = {}  # set (and dropped) when the service's leaf is replaced
        self._roots_changed = asyncio.Event()  # set (and replaced) when the roots change
        self.roots: dict[str, Any] = {}
        self.roots_index = 0
        self.roots_error = ""
        self._published_roots: set[str] = set()

    # ---- reading ---------------------------------------------------------------
    def expiries(self, now: datetime.datetime) -> dict[str, float]:
        """Seconds until each cached leaf expires (negative once expired)."""
        return {service: (leaf.expires - now).total_seconds() for service, leaf in self._leaves.items()}

    def describe(self) -> list[dict[str, Any]]:
        """The cache as `mesh connect ca status` shows it: no private keys."""
        return [{
            "Service": service, "SerialNumber": leaf.body["SerialNumber"], "ServiceURI": leaf.body["ServiceURI"],
            "ValidAfter": leaf.body["ValidAfter"], "ValidBefore": leaf.body["ValidBefore"],
            "RenewAt": leaf.renew_at.strftime("%Y-%m-%dT%H:%M:%SZ"), "RootID": leaf.root_id,
            "ModifyIndex": leaf.index, "LastError": leaf.last_error,
        } for service, leaf in sorted(self._leaves.items())]

    async def get(self, service: str, min_index: int = 0, wait: float = 0.0,
                  token: str | None = None) -> tuple[dict[str, Any], int]:
        """(leaf, index). With `min_index`, waits up to `wait` seconds for a leaf newer
        than that index (a renewal), then answers with the current one. `token` signs
        it (None: the agent's own)."""
        if token is not None:
            self._tokens[service] = token
        leaf = self._leaves.get(service)
        if leaf is None:
            leaf = await self._first(service)
        deadline = time.monotonic() + wait
        while min_index and leaf.index <= min_index and (remaining := deadline - time.monotonic()) > 0:
            changed = self._leaf_changed.setdefault(service, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                break
            leaf = self._leaves.get(service) or leaf
        return leaf.body, leaf.index

    async def _first(self, service: str) -> _Leaf:
        check_service_name(service)
        lock = self._locks.setdefault(service, asyncio.Lock())
        try:
            return await self._first_locked(service, lock)
        finally:
            if service not in self._leaves:
                self._locks.pop(service, None)  # refused names leave nothing behind

    async def _first_locked(self, service: str, lock: asyncio.Lock) -> _Leaf:
        async with lock:
            leaf = self._leaves.get(service)
            if leaf is None:
                roots = await self._current_roots()
                try:
                    leaf = await self._issue_patiently(service, roots)
                except InvalidRequest:
                    if not self._owns(service):
                        raise
                    # registered here a moment ago and not yet in the catalog the
                    # servers check against: push it now rather than refuse
                    await self._sync()
                    leaf = await self._issue_patiently(service, roots)
                await self._store(service, leaf)
                if service not in self._renewers:
                    self._renewers[service] = asyncio.get_running_loop().create_task(
                        self._renew_loop(service), name=f"leaf-renewer-{service}")
            return leaf

    async def _current_roots(self) -> dict[str, Any]:
        roots = self.roots
        if not roots.get("ActiveRootID"):
            roots = dict((await self._backend.read("ca.roots", {}, ReadOptions(stale=True))).value)
        if not roots.get("ActiveRootID"):
            raise MeshError("the CA is not initialized yet (no cluster leader?)")
        return roots

    def forget_unowned(self) -> None:
        """A local deregistration: stop renewing leaves of services no longer here."""
        for service, task in list(self._renewers.items()):
            if not self._owns(service):
                log.info("leaf_dropped", service=service, reason="service deregistered")
                task.cancel()
                self._drop(service)  # now: a task cancelled before it ran never reaches its finally

    async def _issue_patiently(self, service: str, roots: dict[str, Any]) -> _Leaf:
        """A first leaf someone is waiting for: rate-limited servers (CSRMaxPerSecond)
        are asked again after a jittered pause, for up to _FIRST_PATIENCE seconds."""
        deadline = time.monotonic() + _FIRST_PATIENCE
        pause = 0.1
        while True:
            try:
                return await self._issue(service, roots)
            except RateLimited:
                if time.monotonic() + pause > deadline:
                    raise
                await asyncio.sleep(pause * (0.5 + self._rng.random()))
                pause = min(pause * 2, 2.0)

    # ---- issuing -----------------------------------------------------------------
    async def _issue(self, service: str, roots: dict[str, Any]) -> _Leaf:
        check_service_name(service)
        uri = ServiceID(roots["TrustDomain"], "default", self._datacenter, service).uri()
        active = next((r for r in roots.get("Roots", []) if r["ID"] == roots["ActiveRootID"]), {})
        # the leaf's key follows the CA's key type, as Consul's do
        key_type, bits = str(active.get("PrivateKeyType") or "ec"), int(active.get("PrivateKeyBits") or 256)
        key_pem, csr_pem = await asyncio.to_thread(certs.make_csr, uri, key_type, bits)
        request = {"csr": csr_pem, "service": service, "node": self._node_name}
        if service in self._tokens:
            request["token"] = self._tokens[service]
        signed = await self._backend.sign(request)
        # The lifetime counts from now, not from ValidAfter: that is backdated for
        # clock skew and would pull the renewal point before the leaf is even issued.
        issued, expires = _now(), parse_time(signed["ValidBefore"])
        renew_at = issued + (expires - issued) * self._renew_fraction(expires - issued)
        index = int(signed.get("ModifyIndex") or 0)
        body = dict(signed, PrivateKeyPEM=key_pem, CreateIndex=index, ModifyIndex=index)
        return _Leaf(body, roots["ActiveRootID"], index, issued, renew_at, expires)

    def _renew_fraction(self, lifetime: datetime.timedelta) -> float:
        """A random point in [60%, 90%) of the lifetime, ending early by the time a
        signing may take (2% of the lifetime, at most 30 s), so that the new leaf is in
        hand by the 90% mark rather than started there."""
        slack = min(0.02, 30.0 / max(lifetime.total_seconds(), 1e-3))
        return RENEW_FROM + (RENEW_BY - slack - RENEW_FROM) * self._rng.random()

    async def _store(self, service: str, leaf: _Leaf) -> None:
        self._leaves[service] = leaf
        self._files.save_leaf(service, _record(leaf))
        changed = self._leaf_changed.pop(service, None)
        if changed is not None:
            changed.set()  # wakes this service's blocking requests, nobody else's
        CA.leaf_expiry.labels(service).set((leaf.expires - _now()).total_seconds())

    def _due(self, service: str) -> float:
        """Seconds until the renewer must act: 0 when the root changed under the leaf."""
        leaf = self._leaves[service]
        if self.roots.get("ActiveRootID") and self.roots["ActiveRootID"] != leaf.root_id:
            return 0.0
        return max(0.0, (leaf.renew_at - _now()).total_seconds())

    async def _renew_loop(self, service: str) -> None:
        try:
            while True:
                due = self._due(service)
                if due > 0:
                    try:
                        await asyncio.wait_for(self._roots_changed.wait(), due)
                    except TimeoutError:
                        pass
                    continue
                if not self._owns(service):
                    log.info("leaf_dropped", service=service, reason="service deregistered")
                    self._drop(service)
                    return
                await self._renew(service)
        finally:
            # cancelled at shutdown the leaf stays, on disk too, for the next start
            if self._renewers.get(service) is asyncio.current_task():
                self._renewers.pop(service, None)

    def _drop(self, service: str) -> None:
        self._files.delete_leaf(service)
        self._renewers.pop(service, None)
        self._locks.pop(service, None)
        self._leaves.pop(service, None)
        self._tokens.pop(service, None)
        _forget(CA.leaf_expiry, service)
        waiting = self._leaf_changed.pop(service, None)
        if waiting is not None:
            waiting.set()

    async def _renew(self, service: str) -> None:
        old = self._leaves[service]
        try:
            leaf = await self._issue(service, await self._current_roots())
        except RateLimited as exc:
            self._note_failure(service, old, str(exc), expected=True)  # servers asked us to wait
        except MeshError as exc:
            # unreachable servers, or a refusal (service gone from the catalog): keep
            # serving the old leaf; the owner check stops us once it is gone here too
            self._note_failure(service, old, str(exc))
        else:
            log.debug("leaf_renewed", service=service, serial=leaf.body["SerialNumber"], root=leaf.root_id)
            CA.leaf_renewals.inc()
            CA.leaf_renewed_at.observe((_now() - old.issued) / (old.expires - old.issued))
            await self._store(service, leaf)
            return
        backoff = min(_RETRY_MAX, _RETRY_MIN * 2 ** min(old.failures, 6))
        await asyncio.sleep(backoff * (0.5 + self._rng.random() / 2))

    def _note_failure(self, service: str, leaf: _Leaf, error: str, expected: bool = False) -> None:
        leaf.failures += 1
        leaf.last_error = error
        CA.leaf_renewal_errors.inc()
        (log.debug if expected else log.warning)("leaf_renewal_failed", service=service, error=error, attempts=leaf.failures,
                    expires=leaf.body["ValidBefore"])

    # ---- the roots watch -------------------------------------------------------------
    def _restore(self) -> None:
        """What the data-dir kept from before a restart: served at once, renewed by
        the usual rules (a root change seen later re-issues them)."""
        roots, index, records = self._files.load()
        if roots.get("ActiveRootID") and not self.roots:
            self.roots, self.roots_index = roots, index
        for service, record in records.items():
            if not self._owns(service):
                self._files.delete_leaf(service)
                continue
            try:
                leaf = _from_record(record)
            except (KeyError, ValueError, TypeError) as exc:
                log.warning("leaf_file_unreadable", service=service, error=str(exc))
                self._files.delete_leaf(service)
                continue
            self._leaves[service] = leaf
            CA.leaf_expiry.labels(service).set((leaf.expires - _now()).total_seconds())
            self._renewers[service] = asyncio.get_running_loop().create_task(
                self._renew_loop(service), name=f"leaf-renewer-{service}")
        if records:
            log.info("leaves_restored", services=sorted(self._leaves), roots=len(self.roots.get("Roots", [])))

    async def run(self) -> None:
        """Follow the roots with a blocking query; wake the renewers on a rotation."""
        backoff = _RETRY_MIN
        self._restore()
        try:
            while True:
                try:
                    result = await self._backend.read(
                        "ca.roots", {}, ReadOptions(min_index=self.roots_index, wait=60.0, stale=True))
                except MeshError as exc:
                    self.roots_error = str(exc)
                    log.debug("ca_roots_watch_failed", error=str(exc))
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _RETRY_MAX)
                    continue
                backoff = _RETRY_MIN
                self.roots_error = ""
                await asyncio.sleep(0)  # an in-process backend answers without suspending
                self.roots_index = max(1, result.index) if result.index >= self.roots_index else 0
                roots = dict(result.value or {})
                rotated = roots.get("ActiveRootID") != self.roots.get("ActiveRootID")
                if rotated and self.roots:
                    log.info("ca_active_root_changed", root=roots.get("ActiveRootID"), leaves=len(self._leaves))
                if roots != self.roots:
                    self._files.save_roots(roots, self.roots_index)
                self.roots = roots
                self._publish_root_metrics()
                if rotated:
                    self._roots_changed.set()  # every renewer re-issues its leaf now
                    self._roots_changed = asyncio.Event()
        finally:
            for task in list(self._renewers.values()):
                task.cancel()

    def _publish_root_metrics(self) -> None:
        CA.checks.inc()
        now = _now()
        current = {root["ID"] for root in self.roots.get("Roots", [])}
        for pruned in self._published_roots - current:
            _forget(CA.root_expiry, pruned)
        self._published_roots = current
        for root in self.roots.get("Roots", []):
            CA.root_expiry.labels(root["ID"]).set((parse_time(root["NotAfter"]) - now).total_seconds())
        for service, seconds in self.expiries(now).items():
            CA.leaf_expiry.labels(service).set(seconds)
