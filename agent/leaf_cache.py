"""The agent's leaf certificates: the key is generated here and never leaves the agent.

A cached leaf is served until its renewal point, a random moment between 60% and 90%
of its lifetime (spreads renewals out), or until the active root changes; then a new
key and CSR go to a server for signing. While servers are unreachable the cached leaf
keeps being served.
"""

from __future__ import annotations

import asyncio
import datetime
import random
from dataclasses import dataclass
from typing import Any

from mesh.ca import x509 as certs
from mesh.ca.manager import RFC3339
from mesh.ca.spiffe import ServiceID
from mesh.catalog.errors import MeshError

from .metrics import CA
from .server import ReadOptions

__all__ = ["LeafCache"]


@dataclass
class _Leaf:
    body: dict[str, Any]
    root_id: str
    renew_at: datetime.datetime


class LeafCache:
    def __init__(self, agent: Any, rng: random.Random | None = None) -> None:
        self._agent = agent
        self._rng = rng or random.Random()
        self._leaves: dict[str, _Leaf] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def expiries(self, now: datetime.datetime) -> dict[str, float]:
        """Seconds until each cached leaf expires (negative once expired)."""
        out = {}
        for service, leaf in self._leaves.items():
            before = datetime.datetime.strptime(leaf.body["ValidBefore"], RFC3339).replace(tzinfo=datetime.UTC)
            out[service] = (before - now).total_seconds()
        return out

    async def _roots(self) -> dict[str, Any]:
        result = await self._agent.backend.read("ca.roots", {}, ReadOptions(stale=True))
        return dict(result.value)

    async def get(self, service: str) -> dict[str, Any]:
        lock = self._locks.setdefault(service, asyncio.Lock())
        async with lock:
            cached = self._leaves.get(service)
            now = datetime.datetime.now(datetime.UTC)
            try:
                roots = await self._roots()
            except MeshError:
                if cached is not None:
                    return cached.body  # servers unreachable: the cached leaf still serves
                raise
            if not roots.get("ActiveRootID"):
                raise MeshError("the CA is not initialized yet (no cluster leader?)")
            if cached is not None and cached.root_id == roots["ActiveRootID"] and now < cached.renew_at:
                return cached.body
            leaf = await self._issue(service, roots)
            self._leaves[service] = leaf
            CA.leaf_expiry.labels(service).set(self.expiries(now)[service])
            return leaf.body

    async def _issue(self, service: str, roots: dict[str, Any]) -> _Leaf:
        cfg = self._agent.cfg
        uri = ServiceID(roots["TrustDomain"], "default", cfg.datacenter, service).uri()
        key_pem, csr_pem = await asyncio.to_thread(certs.make_csr, uri)
        signed = await self._agent.backend.sign({"csr": csr_pem, "service": service, "node": cfg.node_name})
        after = datetime.datetime.strptime(signed["ValidAfter"], RFC3339).replace(tzinfo=datetime.UTC)
        before = datetime.datetime.strptime(signed["ValidBefore"], RFC3339).replace(tzinfo=datetime.UTC)
        renew_at = after + (before - after) * (0.6 + 0.3 * self._rng.random())
        body = dict(signed, PrivateKeyPEM=key_pem, CreateIndex=0, ModifyIndex=0)
        return _Leaf(body, roots["ActiveRootID"], renew_at)
