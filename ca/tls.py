"""TLS for the sidecar proxies: SSL contexts from a leaf and a roots bundle, and the
SPIFFE checks of the peer (../shared/reference/consul.md §6.3-6.5).

- `server_context` (inbound, the public listener) and `client_context` (outbound, the
  dial to another sidecar) are built whole from one (Identity, TrustBundle): OpenSSL
  can add a root to a context but never remove one, so a pruned root stays trusted by
  any context it was loaded into. A new leaf or new roots means new contexts; open
  connections keep the context they were made with. Building one costs a few ms of CPU
  (about 2 ms on the project VM: key, chain and roots parsed by OpenSSL): once per
  configuration, never per connection.
- Chain verification (signatures, validity, extended key usage) is OpenSSL's, at the
  handshake. The identity checks run after it, as pure functions over the peer's DER
  certificate: `peer_service_id`, then `check_client_identity` (inbound) or
  `check_server_identity` (outbound). Each refusal is a `PeerRejected` whose `reason` is
  one of REASONS, stable enough for a metric label.
- `ClientContext` resumes TLS sessions per destination: see its docstring.

Errors: `PeerRejected` (a MeshError) for a peer refused by identity; InvalidRequest
for an identity or bundle that cannot make a context. Loop-agnostic, no I/O beyond
handing PEM text to OpenSSL (through an anonymous memory file: the key never touches
a disk). Contexts are used from one event loop; the session cache is not thread-safe.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mesh.catalog.errors import InvalidRequest, MeshError

from . import x509 as certs
from .spiffe import ServiceID, parse_agent_id, parse_service_id

__all__ = [
    "Identity",
    "TrustBundle",
    "PeerRejected",
    "REASONS",
    "ClientContext",
    "server_context",
    "client_context",
    "build_contexts",
    "peer_service_id",
    "check_client_identity",
    "check_server_identity",
    "verify_leaf_against",
    "load_pem_chain",
    "rpc_peer_problem",
]

# TLS 1.2 only: ECDHE key exchange (forward secrecy) with an AEAD cipher, as Consul's
# proxy. TLS 1.3 suites are all AEAD with ephemeral key exchange and are left as they are.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

REASONS = ("no_certificate", "bad_certificate", "no_uri_san", "bad_spiffe_id", "wrong_trust_domain",
           "wrong_service")


class PeerRejected(MeshError):
    """The peer completed a verified handshake but is not who may talk to us. `reason`
    is one of REASONS (a metric label); the message is for the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Identity:
    """Our leaf: `cert_pem` is the leaf followed by any chain certificates (the leaf
    endpoint's CertPEM carries the cross-signed root after a rotation, for peers that
    know only the old root), `chain` more PEMs to send after it, `key_pem` the private
    key (left out of repr so a logged config never shows it)."""

    cert_pem: str
    key_pem: str = field(repr=False)
    chain: tuple[str, ...] = ()

    @classmethod
    def from_leaf(cls, body: Mapping[str, Any]) -> Identity:
        """From /v1/agent/connect/ca/leaf/:service (CertPEM, PrivateKeyPEM)."""
        return cls(str(body["CertPEM"]), str(body["PrivateKeyPEM"]))

    def chain_pem(self) -> str:
        return "".join(_pem_block(p) for p in (self.cert_pem, *self.chain))


@dataclass(frozen=True)
class TrustBundle:
    """The trust domain and every root certificate to trust. During a rotation that is
    the old root and the new one (both listed by the roots endpoint), so leaves of
    either verify; once the old root is pruned it leaves the list, and contexts built
    from the new bundle stop trusting it."""

    trust_domain: str
    roots: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.trust_domain:
            raise InvalidRequest("cluster trust domain empty, connect not bootstrapped")
        if not self.roots:
            raise InvalidRequest("no CA roots to trust, connect not bootstrapped")

    @classmethod
    def from_roots(cls, body: Mapping[str, Any]) -> TrustBundle:
        """From /v1/agent/connect/ca/roots: TrustDomain and every Roots[].RootCert (the
        cross-signed IntermediateCerts travel in the new leaves' chains instead)."""
        return cls(str(body.get("TrustDomain") or ""),
                   tuple(str(r["RootCert"]) for r in body.get("Roots") or ()))


def _pem_block(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


@contextlib.contextmanager
def _pem_path(text: str) -> Iterator[str]:
    """A path OpenSSL can read `text` from: load_cert_chain takes only files. An
    anonymous memory file where the OS has them, else a private temporary file."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("mesh-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, text.encode())
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:  # pragma: no cover - not Linux
        f.write(text)
        f.flush()
        yield f.name


def load_pem_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """ctx.load_cert_chain from PEM text held in memory (an agent's auto_encrypt
    certificate and key never touch a disk); InvalidRequest when they do not load."""
    try:
        with _pem_path(cert_pem) as cert_path, _pem_path(key_pem) as key_path:
            ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise InvalidRequest(f"cannot load the certificate and key: {exc.reason or exc}") from None


def rpc_peer_problem(der: bytes) -> str | None:
    """Why a verified client certificate must not call the server RPC port, or None.
    A server with auto_encrypt.allow_tls trusts the Connect roots for client
    certificates, and those roots also sign every service's leaf: a certificate that
    carries a SPIFFE identity must be an agent's (agent certificates from ca_file carry
    no SPIFFE URI and pass)."""
    try:
        uris = certs.der_uri_sans(der)
    except InvalidRequest:
        return "not a DER certificate"
    for uri in uris:
        if uri.startswith("spiffe://"):
            try:
                parse_agent_id(uri)
            except InvalidRequest:
                return f"certificate identity {uri[:200]!r} is not an agent's"
    return None


def _configure(ctx: ssl.SSLContext, identity: Identity, bundle: TrustBundle, alpn: Sequence[str]) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # TLS 1.2 renegotiation: a CPU lever for a client
    # SPIFFE identities, not host names: the URI SAN is checked after the handshake
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata="".join(_pem_block(r) for r in bundle.roots))
        with _pem_path(identity.chain_pem()) as cert_path, _pem_path(identity.key_pem) as key_path:
            ctx.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise InvalidRequest(f"cannot build a TLS context from this leaf and roots: {exc.reason or exc}") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))


def server_context(identity: Identity, bundle: TrustBundle, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """The inbound context: presents our leaf, requires a client certificate that chains
    to the bundle and is fit for client authentication (OpenSSL checks the extended key
    usage; a serverAuth-only leaf is refused, a leaf without the extension is accepted,
    as Go's), any SNI, TLS 1.2 at least. ALPN: the first of `alpn` the client also
    offers, none when the client offers none or nothing in common (the handshake goes
    on). Costs a few ms to build: one per (identity, bundle), see the module docstring.

    Session tickets are on (stateless, keyed by this context, so a new context refuses
    tickets from an old one and the client pays a full handshake once); one ticket per
    handshake, as a ClientContext keeps only the newest."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _configure(ctx, identity, bundle, alpn)
    ctx.num_tickets = 1
    return ctx


class _ResumingSSLObject(ssl.SSLObject):
    """Hands the connection's session to its ClientContext once a resumable one exists.
    Both asyncio's and uvloop's TLS transports call read() whenever records arrive,
    including the TLS 1.3 NewSessionTicket that comes after the handshake (read then
    raises SSLWantReadError with the ticket processed), so no caller has to remember."""

    _resume_key: str | None = None
    _offered: ssl.SSLSession | None = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if self._resume_key is None:
            return super().read(len, buffer)
        try:
            data = super().read(len, buffer)
        except ssl.SSLWantReadError:
            self._remember(final=False)
            raise
        except ssl.SSLError:
            self._remember(final=True)
            raise
        self._remember(final=True)
        return data

    def _remember(self, final: bool) -> None:
        key, session = self._resume_key, self.session
        if key is not None and session is not None and session.has_ticket and session != self._offered:
            context = self.context
            if isinstance(context, ClientContext):
                context.store_session(key, session)
            final = True
        if final:  # tickets come before the server's first data: later reads need not look
            self._resume_key = None


class ClientContext(ssl.SSLContext):
    """A client context that resumes TLS sessions, per destination (a resumed mutual
    handshake costs about half a full one: ../shared/reference/perf-baselines.md).

    asyncio and uvloop have no `session=` argument, but both create each connection's
    SSLObject through `wrap_bio(..., server_hostname=...)`, so the destination travels
    in server_hostname: pass `server_hostname=ctx.dial_hostname(address, sni)`. That
    name is `<sni>@<address>`; wrap_bio splits it, sends `sni` as the SNI (none when
    empty), offers the newest session stored for that name, and the connection stores
    its own session once the server's ticket has arrived. Sessions are per address
    because a ticket only resumes on the server process that issued it. A plain
    server_hostname without "@" is its own key (and SNI, unless it is an IP address).
    Only wrap_bio knows dial names: wrap_socket (blocking sockets) would send one as is.

    The cache lives in the context, so a new context (new leaf or roots) starts empty:
    a resumed session would present the identity of the old leaf. At most
    `max_sessions` destinations are kept, the least recently stored dropped first."""

    sslobject_class = _ResumingSSLObject
    max_sessions = 4096

    def __new__(cls, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> ClientContext:
        return super().__new__(cls, protocol)

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        self._sessions: dict[str, ssl.SSLSession] = {}

    @staticmethod
    def dial_hostname(address: str, sni: str | None = None) -> str:
        """The server_hostname for loop.create_connection: `address` ("host:port") keys
        the session; `sni` is sent as the server name (Envoy sidecars route on
        `<service>.default.<dc>.internal.<trust-domain>`; ours accept any)."""
        if not address or "@" in address or (sni and "@" in sni):
            raise ValueError(f"bad destination {address!r} / SNI {sni!r}")
        return f"{sni or ''}@{address}"

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
                 server_hostname: str | None = None, session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        key = None
        if server_hostname and not server_side:
            key = server_hostname
            sni, sep, _address = server_hostname.rpartition("@")
            if sep:
                server_hostname = sni or None
        if session is None and key is not None:
            session = self._sessions.get(key)
        obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        if isinstance(obj, _ResumingSSLObject) and key is not None:
            obj._resume_key, obj._offered = key, session
        return obj

    def store_session(self, key: str, session: ssl.SSLSession) -> None:
        self._sessions.pop(key, None)
        self._sessions[key] = session
        while len(self._sessions) > self.max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def session_count(self) -> int:
        return len(self._sessions)


def client_context(identity: Identity, bundle: TrustBundle, alpn: Sequence[str] = ()) -> ClientContext:
    """The outbound context: presents our leaf, verifies the server's chain against the
    bundle (and that its leaf is fit for server authentication), no host name check
    (check the SPIFFE ID with check_server_identity), offers `alpn`, resumes sessions
    per destination (see ClientContext). Costs a few ms to build, like server_context."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    _configure(ctx, identity, bundle, alpn)
    return ctx


def build_contexts(identity: Identity, bundle: TrustBundle,
                   alpn: Sequence[str] = ()) -> tuple[ssl.SSLContext, ClientContext]:
    """(server, client) for one proxy configuration: build once per new leaf or roots."""
    return server_context(identity, bundle, alpn), client_context(identity, bundle, alpn)


@functools.lru_cache(maxsize=1024)
def _peer(der: bytes) -> ServiceID | tuple[str, str]:
    """Parsing costs ~25 µs and peers reconnect with the same leaf: cached per DER."""
    try:
        uris = certs.der_uri_sans(der)
    except InvalidRequest:
        return "bad_certificate", "peer certificate cannot be parsed"
    if not uris:
        return "no_uri_san", "peer certificate has no URI SAN"
    try:
        return parse_service_id(uris[0])  # the first URI only, as Consul
    except InvalidRequest as exc:
        return "bad_spiffe_id", f"peer certificate URI {uris[0]!r} is not a service identity: {exc}"


def peer_service_id(der: bytes | None) -> ServiceID:
    """The service identity in the peer's certificate, from
    `ssl_object.getpeercert(binary_form=True)` after a verified handshake (this does not
    verify the chain: OpenSSL has). PeerRejected: no_certificate, bad_certificate,
    no_uri_san, bad_spiffe_id."""
    if not der:
        raise PeerRejected("no_certificate", "peer presented no certificate")
    found = _peer(bytes(der))
    if isinstance(found, ServiceID):
        return found
    raise PeerRejected(*found)


def _check_trust_domain(peer: ServiceID, trust_domain: str) -> None:
    if peer.trust_domain.lower() != trust_domain.lower():
        raise PeerRejected("wrong_trust_domain",
                           f"peer {peer.uri()} is from trust domain {peer.trust_domain}, not {trust_domain}")


def check_client_identity(peer: ServiceID, trust_domain: str) -> None:
    """Inbound: a service of our trust domain (whether it may call us is the intentions'
    decision). Consul's authorize refuses other trust domains the same way."""
    _check_trust_domain(peer, trust_domain)


def check_server_identity(peer: ServiceID, service: str, datacenter: str | None, trust_domain: str,
                          namespace: str = "default") -> None:
    """Outbound: the server is the service we meant to reach. As Consul, namespace,
    datacenter (when given) and service compare case-insensitively. Consul ignores the
    trust domain here and relies on the chain; we require ours too, because the chain
    only proves some trusted root signed the leaf, and a bundle may hold roots that do
    not belong to this trust domain (an imported root, a restored snapshot of another
    cluster): the trust domain is part of the identity, and it costs one comparison."""
    _check_trust_domain(peer, trust_domain)
    want = (namespace.lower(), (datacenter or peer.datacenter).lower(), service.lower())
    got = (peer.namespace.lower(), peer.datacenter.lower(), peer.service.lower())
    if got != want:
        expected = ServiceID(trust_domain, namespace, datacenter or "*", service).uri()
        raise PeerRejected("wrong_service", f"peer certificate mismatch got {peer.uri()}, want {expected}")


def verify_leaf_against(identity: Identity, bundle: TrustBundle, now: datetime.datetime) -> str | None:
    """None when our leaf is ready to serve: it parses, its key matches, it is valid at
    `now`, it names a service of the bundle's trust domain, and it chains to a root of
    the bundle directly or through a certificate of its chain (a cross-signed root).
    Otherwise the reason, for the log. The proxy opens no listener before this is None
    (Consul's "ready": leaf parsed and verified against the current roots)."""
    try:
        leaf, *chain = certs.load_certs(identity.chain_pem())
        key = certs.load_key(identity.key_pem)
        roots = [c for pem in bundle.roots for c in certs.load_certs(pem)]
    except InvalidRequest as exc:
        return f"leaf or roots unreadable: {exc}"
    if not certs.key_matches(leaf, key):
        return "the private key does not belong to the leaf certificate"
    if not certs.valid_at(leaf, now):
        return (f"the leaf certificate is valid from {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} "
                f"to {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not now")
    uris = certs.uri_sans(leaf)
    if not uris:
        return "the leaf certificate has no URI SAN"
    try:
        sid = parse_service_id(uris[0])
    except InvalidRequest as exc:
        return f"the leaf certificate's URI is not a service identity: {exc}"
    if sid.trust_domain != bundle.trust_domain:
        return f"the leaf is for trust domain {sid.trust_domain}, the roots for {bundle.trust_domain}"
    live_roots = [r for r in roots if certs.valid_at(r, now)]
    if any(certs.verifies(leaf, r) for r in live_roots):
        return None
    for middle in chain:
        if certs.valid_at(middle, now) and certs.verifies(leaf, middle) and \
                any(certs.verifies(middle, r) for r in live_roots):
            return None
    return "the leaf certificate does not chain to any current root"
