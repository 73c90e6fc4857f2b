"""A client agent's RPC certificate from the servers (Consul's `auto_encrypt.tls`).

With only the CA file that signed the servers' certificates, the agent makes a key and a
CSR for its agent identity (`spiffe://<trust-domain>/agent/client/dc/<dc>/id/<node>`,
plus `localhost`, 127.0.0.1 and the configured dns_san/ip_san), dials the servers with
TLS verifying them against ca_file but presenting no certificate, and calls
`AutoEncrypt.Sign` with its agent token. The signed certificate (held in memory: it is
loaded into OpenSSL through an anonymous memory file, never written to the data-dir)
then goes into the SSL context of every RPC connection. A restarted agent asks again.

This happens in `Agent.start` before anything else talks RPC, and retries until a
server answers (a log line per kind of failure, not per attempt). The renewer asks for a
new certificate at about half of its lifetime; new connections take the new context,
open ones keep theirs until they close.

The first CSR names `unknown.consul` as its trust domain: the agent does not know the
cluster's yet, and the servers put the real one in (as Consul's).
"""

from __future__ import annotations

import asyncio
import datetime
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mesh.ca import x509 as certs
from mesh.ca.manager import parse_time
from mesh.ca.spiffe import UNKNOWN_TRUST_DOMAIN, AgentID
from mesh.catalog.errors import MeshError

from .backend import ServerPool
from .config import AgentConfig, ConfigError
from .logging import get_logger
from .metrics import RPC
from .rpc import RPCClient, RPCError
from .tls import auto_encrypt_client_context

__all__ = ["AutoEncryptClient", "Issued", "renew_delay", "parse_reply"]

log = get_logger("auto_encrypt")

RENEW_AT = 0.5  # of the certificate's lifetime, as Consul's agent leaf
_RETRY_MIN, _RETRY_MAX = 0.2, 10.0


@dataclass(frozen=True)
class Issued:
    """A signed certificate as the servers answered, with the key made for it."""

    cert_pem: str
    key_pem: str
    trust_domain: str
    valid_after: datetime.datetime
    valid_before: datetime.datetime
    received: datetime.datetime


def parse_reply(reply: Any, key_pem: str, received: datetime.datetime) -> Issued:
    """The AutoEncrypt.Sign answer, checked for shape; MeshError when it is not one."""
    if not isinstance(reply, dict):
        raise MeshError("AutoEncrypt.Sign answered with something other than a map")
    cert_pem, trust_domain = reply.get("cert_pem"), reply.get("trust_domain")
    if not isinstance(cert_pem, str) or "BEGIN CERTIFICATE" not in cert_pem or not isinstance(trust_domain, str):
        raise MeshError("AutoEncrypt.Sign answered without a certificate")
    try:
        after, before = parse_time(str(reply.get("valid_after"))), parse_time(str(reply.get("valid_before")))
    except ValueError:
        raise MeshError("AutoEncrypt.Sign answered with an unreadable validity period") from None
    return Issued(cert_pem, key_pem, trust_domain, after, before, received)


def renew_delay(issued: Issued, now: datetime.datetime, rng: random.Random) -> float:
    """Seconds until the renewal: about RENEW_AT of the lifetime (a little jitter so a
    fleet started together does not renew together), at least one second. The
    lifetime counts from when the certificate arrived: its NotBefore is set back a
    minute for clock skew, which would make a short-lived one look half spent."""
    start = max(issued.valid_after, issued.received)
    lifetime = (issued.valid_before - start).total_seconds()
    due = start + datetime.timedelta(seconds=lifetime * (RENEW_AT + rng.uniform(-0.05, 0.05)))
    return max(1.0, (due - now).total_seconds())


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AutoEncryptClient:
    def __init__(self, cfg: AgentConfig, pool: ServerPool, rng: random.Random | None = None,
                 now: Callable[[], datetime.datetime] = _utc_now) -> None:
        self.cfg = cfg
        self.pool = pool
        self._rng = rng or random.Random()
        self._now = now
        self._logged: set[str] = set()
        self.issued: Issued | None = None

    def _args(self, csr_pem: str) -> dict[str, Any]:
        return {"csr": csr_pem, "node": self.cfg.node_name, "dc": self.cfg.datacenter,
                "token": self.cfg.acl_agent_token}

    async def _csr(self) -> tuple[str, str]:
        """(key PEM, CSR PEM), made in a thread (key generation is CPU work)."""
        trust_domain = self.issued.trust_domain if self.issued is not None else UNKNOWN_TRUST_DOMAIN
        uri = AgentID(trust_domain, self.cfg.datacenter, self.cfg.node_name).uri()
        dns = tuple(dict.fromkeys(("localhost", *self.cfg.auto_encrypt_dns_san)))
        ips = tuple(dict.fromkeys(("127.0.0.1", *self.cfg.auto_encrypt_ip_san)))
        return await asyncio.to_thread(certs.make_agent_csr, uri, dns, ips)

    def _install(self, reply: Any, key_pem: str) -> ssl.SSLContext:
        issued = parse_reply(reply, key_pem, self._now())
        try:
            context = auto_encrypt_client_context(self.cfg, issued.cert_pem, issued.key_pem)
        except ConfigError as exc:
            raise MeshError(str(exc)) from None
        self.issued = issued
        RPC.auto_encrypt.labels("ok").inc()
        RPC.auto_encrypt_expiry.set((issued.valid_before - self._now()).total_seconds())
        log.info("auto_encrypt_certificate", valid_before=issued.valid_before.isoformat(),
                 trust_domain=issued.trust_domain)
        return context

    def _failed(self, kind: str, error: str) -> None:
        """A warning the first time a kind of failure happens, debug after that."""
        RPC.auto_encrypt.labels("failed").inc()
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("auto_encrypt_failed", kind=kind, error=error[:300])
        else:
            log.debug("auto_encrypt_failed", kind=kind, error=error[:300])

    async def bootstrap(self) -> ssl.SSLContext:
        """The first certificate: dial the known servers (learned ones, then the
        -retry-join seeds) without a client certificate until one signs; returns the
        context every RPC connection uses from now on."""
        key_pem, csr_pem = await self._csr()
        bare = RPCClient(self.cfg.encrypt, ssl_context=auto_encrypt_client_context(self.cfg))
        delay = _RETRY_MIN
        try:
            while True:
                for address in self.pool.servers:
                    try:
                        reply = await bare.call(address, "AutoEncrypt.Sign", self._args(csr_pem), timeout=10)
                        return self._install(reply, key_pem)
                    except RPCError as exc:
                        self._failed(exc.kind, str(exc))
                    except MeshError as exc:
                        self._failed("bad_reply", str(exc))
                await asyncio.sleep(delay * (0.8 + 0.4 * self._rng.random()))
                delay = min(delay * 2, _RETRY_MAX)
        finally:
            await bare.close()

    async def run(self) -> None:
        """Renew at about half the lifetime, through the servers the pool knows (with
        the current certificate); a failure retries with backoff while the current
        certificate is still good, and once it has expired, as at start."""
        retry = 0.0
        while self.issued is not None:
            await asyncio.sleep(retry or renew_delay(self.issued, self._now(), self._rng))
            if self._now() >= self.issued.valid_before:
                # expired while no server answered: the servers now refuse it, so ask
                # again as at start, presenting no certificate
                log.warning("auto_encrypt_certificate_expired", valid_before=self.issued.valid_before.isoformat())
                self.pool.set_ssl_context(await self.bootstrap())
                retry = 0.0
                continue
            try:
                key_pem, csr_pem = await self._csr()
                reply = await self.pool.call("AutoEncrypt.Sign", self._args(csr_pem), timeout=10, deadline=15)
                self.pool.set_ssl_context(self._install(reply, key_pem))
                retry = 0.0
            except MeshError as exc:
                self._failed("renewal", str(exc))
                retry = min(max(retry * 2, 1.0), 30.0)
