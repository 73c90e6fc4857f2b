"""ca/tls.py: contexts and SPIFFE peer checks, with real certificates from ca/x509.py
(two CAs, two trust domains, a rotation with a cross-signed root) and real handshakes
over 127.0.0.1 on the default asyncio loop and on uvloop."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.ca import manager
from mesh.ca import x509 as ca
from mesh.ca.spiffe import ServiceID, trust_domain_for
from mesh.ca.tls import (
    REASONS,
    ClientContext,
    Identity,
    PeerRejected,
    TrustBundle,
    build_contexts,
    check_client_identity,
    check_server_identity,
    client_context,
    peer_service_id,
    server_context,
    verify_leaf_against,
)
from mesh.catalog.errors import InvalidRequest

NOW = datetime.datetime.now(datetime.UTC)  # handshakes check validity against the real clock
TD_A = trust_domain_for("aaaaaaaa-1111-2222-3333-444444444444")
TD_B = trust_domain_for("bbbbbbbb-1111-2222-3333-444444444444")
DAY = datetime.timedelta(days=1)
BOTH_EKU = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


@dataclass
class CA:
    key: Any
    cert: x509.Certificate
    trust_domain: str
    chain: tuple[str, ...] = ()  # sent after leaves (the cross-signed root of a rotation)
    serial: list[int] = field(default_factory=lambda: [100])

    def _serial(self) -> int:
        self.serial[0] += 1
        return self.serial[0]

    def leaf(self, service: str, trust_domain: str | None = None, dc: str = "dc1") -> Identity:
        """A leaf as the CA signs it (ca/x509.py's profile)."""
        uri = ServiceID(trust_domain or self.trust_domain, "default", dc, service).uri()
        key_pem, csr_pem = ca.make_csr(uri)
        csr, uri = ca.csr_service_uri(csr_pem.encode())
        cert = ca.sign_leaf(csr, uri, self.key, self.cert, self._serial(), NOW, DAY)
        return Identity(ca.pem(cert) + "".join(self.chain), key_pem)

    def custom_leaf(self, uris: list[str], ekus: list[x509.ObjectIdentifier] | None = BOTH_EKU,
                    not_after: datetime.datetime | None = None, dns: tuple[str, ...] = ()) -> Identity:
        """What ca/x509.py never makes: other extended key usages, several URIs, none."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom")]))
                   .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(self._serial())
                   .not_valid_before(NOW - DAY).not_valid_after(not_after or NOW + DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        if ekus is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        return Identity(ca.pem(builder.sign(self.key, hashes.SHA256())) + "".join(self.chain), ca.key_pem(key))

    def bundle(self, *others: CA) -> TrustBundle:
        return TrustBundle(self.trust_domain, tuple(ca.pem(c.cert) for c in (self, *others)))


def _new_ca(trust_domain: str, serial: int) -> CA:
    key = ca.generate_key("ec", 256)
    return CA(key, ca.build_root(key, trust_domain, serial, NOW, 3650 * DAY), trust_domain)


@pytest.fixture(scope="module")
def ca_a() -> CA:
    return _new_ca(TD_A, 1)


@pytest.fixture(scope="module")
def ca_b() -> CA:
    return _new_ca(TD_B, 2)


@pytest.fixture(scope="module")
def rotated(ca_a: CA) -> CA:
    """A's successor: same trust domain, new key, cross-signed by A."""
    new = _new_ca(TD_A, 3)
    cross = ca.cross_sign(new.cert, ca_a.key, ca_a.cert, 4, NOW)
    new.chain = (ca.pem(cross),)
    return new


@pytest.fixture(scope="module")
def web(ca_a: CA) -> Identity:
    return ca_a.leaf("web")


@pytest.fixture(scope="module")
def api(ca_a: CA) -> Identity:
    return ca_a.leaf("api")


def _der(identity: Identity) -> bytes:
    return ca.load_certs(identity.cert_pem)[0].public_bytes(serialization.Encoding.DER)


# ---- sockets: a TLS echo server and a client, on either loop ----------------------------

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        return runner.run(asyncio.wait_for(main(), 20))


@dataclass
class Accepted:
    """The server's view of one handshake that succeeded."""
    peer_der: bytes | None
    alpn: str | None
    version: str | None
    cipher: str
    resumed: bool


class _Echo(asyncio.Protocol):
    """Echoes one line and closes; `silent` closes right after the handshake instead."""

    def __init__(self, silent: bool) -> None:
        self.silent, self.buf = silent, b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.silent:
            transport.close()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\n" in self.buf:
            self.transport.write(self.buf)
            self.transport.close()


class TLSServer:
    """Accepts sockets itself and hands each to loop.connect_accepted_socket(ssl=...),
    which raises the handshake's error (create_server(ssl=...) only logs it, at debug
    level; start_tls from connection_made loses the ClientHello on uvloop, which starts
    reading after connection_made even when it paused), so each handshake's outcome,
    an Accepted or the exception, lands in `outcomes`."""

    def __init__(self, ctx: ssl.SSLContext, silent: bool = False) -> None:
        self.ctx, self.silent = ctx, silent
        self.outcomes: asyncio.Queue[Accepted | BaseException] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TLSServer:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self._spawn(self._accept())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.sock.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self.sock)
            self._spawn(self._handshake(conn))

    async def _handshake(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: _Echo(self.silent), conn, ssl=self.ctx, ssl_handshake_timeout=5)
        except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
            conn.close()
            self.outcomes.put_nowait(exc)
            return
        obj = transport.get_extra_info("ssl_object")
        self.outcomes.put_nowait(Accepted(obj.getpeercert(binary_form=True), obj.selected_alpn_protocol(),
                                          obj.version(), obj.cipher()[0], obj.session_reused))

    async def outcome(self) -> Accepted | BaseException:
        return await asyncio.wait_for(self.outcomes.get(), 5)


@dataclass
class Call:
    """The client's view: the reply, and the ssl_object when the handshake completed."""
    reply: bytes
    ssl_object: Any = None
    error: BaseException | None = None


class _Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.reply = b""
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.reply += data

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def call(port: int, ctx: ssl.SSLContext, server_hostname: str | None = None,
               payload: bytes = b"ping\n") -> Call:
    """Connect, send `payload`, wait until the server closes. TLS 1.3 clients finish
    their handshake before the server has checked their certificate, so a refused
    client often sees the refusal only as a closed connection without a reply."""
    loop = asyncio.get_running_loop()
    try:
        transport, proto = await loop.create_connection(
            _Client, "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname or "127.0.0.1",
            ssl_handshake_timeout=5)
    except (OSError, TimeoutError) as exc:
        return Call(b"", error=exc)
    if payload:
        transport.write(payload)
    error = await asyncio.wait_for(proto.lost, 5)
    return Call(proto.reply, transport.get_extra_info("ssl_object"), error)


def _refused(outcome: Accepted | BaseException, fragment: str) -> None:
    assert isinstance(outcome, ssl.SSLError), f"handshake should fail, got {outcome!r}"
    assert fragment in str(outcome), str(outcome)


# ---- mutual TLS on both loops -----------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_mutual_tls_reads_both_identities(loop, ca_a, web, api):
    bundle = ca_a.bundle()
    server_ctx, client_ctx = build_contexts(api, bundle)[0], build_contexts(web, bundle)[1]

    async def main() -> None:
        async with TLSServer(server_ctx) as server:
            result = await call(server.port, client_ctx, ClientContext.dial_hostname(f"127.0.0.1:{server.port}"))
            accepted = await server.outcome()
        assert result.reply == b"ping\n" and result.error is None
        assert isinstance(accepted, Accepted)
        client_id = peer_service_id(accepted.peer_der)
        assert client_id == ServiceID(TD_A, "default", "dc1", "web")
        check_client_identity(client_id, TD_A)
        server_id = peer_service_id(result.ssl_object.getpeercert(binary_form=True))
        check_server_identity(server_id, "api", "dc1", TD_A)
        assert accepted.version == "TLSv1.3" and result.ssl_object.version() == "TLSv1.3"

    run(loop, main)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_client_without_a_certificate_is_refused(loop, ca_a, api):
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts the server, presents nothing
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=ca.pem(ca_a.cert))

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            result = await call(server.port, anonymous)
            _refused(await server.outcome(), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
        assert result.reply == b""

    run(loop, main)


def test_a_client_leaf_from_another_ca_is_refused(ca_a, ca_b, api):
    stranger = client_context(ca_b.leaf("web"), TrustBundle(TD_B, (ca.pem(ca_a.cert),)))

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            result = await call(server.port, stranger)
            _refused(await server.outcome(), "unable to get local issuer certificate")
        assert result.reply == b""

    run("asyncio", main)


def test_a_server_leaf_from_another_ca_is_refused(ca_a, ca_b, web):
    async def main() -> None:
        async with TLSServer(server_context(ca_b.leaf("api"), ca_b.bundle(ca_a))) as server:
            result = await call(server.port, client_context(web, ca_a.bundle()))
        assert isinstance(result.error, ssl.SSLCertVerificationError)

    run("asyncio", main)


def test_a_server_auth_only_leaf_is_refused_inbound(ca_a, api):
    """OpenSSL checks the client certificate's purpose by default (X509_PURPOSE_SSL_CLIENT):
    no need for our own EKU check. A leaf without the extension is accepted, as by Go."""
    server_only = ca_a.custom_leaf([ServiceID(TD_A, "default", "dc1", "web").uri()],
                                   ekus=[ExtendedKeyUsageOID.SERVER_AUTH])
    no_eku = ca_a.custom_leaf([ServiceID(TD_A, "default", "dc1", "web").uri()], ekus=None)

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            result = await call(server.port, client_context(server_only, ca_a.bundle()))
            _refused(await server.outcome(), "unsuitable certificate purpose")
            assert result.reply == b""
            assert (await call(server.port, client_context(no_eku, ca_a.bundle()))).reply == b"ping\n"

    run("asyncio", main)


def test_a_client_auth_only_leaf_is_refused_outbound(ca_a, web):
    client_only = ca_a.custom_leaf([ServiceID(TD_A, "default", "dc1", "api").uri()],
                                   ekus=[ExtendedKeyUsageOID.CLIENT_AUTH])

    async def main() -> None:
        async with TLSServer(server_context(client_only, ca_a.bundle())) as server:
            result = await call(server.port, client_context(web, ca_a.bundle()))
        assert isinstance(result.error, ssl.SSLCertVerificationError)
        assert "unsuitable certificate purpose" in str(result.error)

    run("asyncio", main)


def test_right_ca_but_wrong_identity_is_refused_by_the_identity_checks(ca_a, api, web):
    """The chain verifies (same CA); the SPIFFE checks refuse the other trust domain
    inbound and the wrong service outbound."""
    foreign = ca_a.leaf("web", trust_domain=TD_B)
    db = ca_a.leaf("db")

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            await call(server.port, client_context(foreign, ca_a.bundle()))
            accepted = await server.outcome()
        assert isinstance(accepted, Accepted)
        with pytest.raises(PeerRejected) as refused:
            check_client_identity(peer_service_id(accepted.peer_der), TD_A)
        assert refused.value.reason == "wrong_trust_domain"

        async with TLSServer(server_context(db, ca_a.bundle())) as server:
            result = await call(server.port, client_context(web, ca_a.bundle()))
        with pytest.raises(PeerRejected) as refused:
            check_server_identity(peer_service_id(result.ssl_object.getpeercert(True)), "api", "dc1", TD_A)
        assert refused.value.reason == "wrong_service"
        assert "got spiffe://" in refused.value.message and "/svc/api" in refused.value.message

    run("asyncio", main)


# ---- rotation: contexts are rebuilt from the current roots -------------------------------

def test_rotation_trusts_both_roots_until_the_old_one_is_pruned(ca_a, rotated, api):
    old_leaf, new_leaf = ca_a.leaf("web"), rotated.leaf("web")  # new_leaf carries the cross-signed root
    during = TrustBundle(TD_A, (ca.pem(ca_a.cert), ca.pem(rotated.cert)))
    after = TrustBundle(TD_A, (ca.pem(rotated.cert),))
    before = TrustBundle(TD_A, (ca.pem(ca_a.cert),))

    async def accepts(server_bundle: TrustBundle, client: Identity) -> Accepted | BaseException:
        async with TLSServer(server_context(api, server_bundle)) as server:
            await call(server.port, client_context(client, during))
            return await server.outcome()

    async def main() -> None:
        assert isinstance(await accepts(during, old_leaf), Accepted)
        assert isinstance(await accepts(during, new_leaf), Accepted)
        # a peer that has not fetched the new root yet: the cross-signed chain carries it
        assert isinstance(await accepts(before, new_leaf), Accepted)
        assert isinstance(await accepts(after, new_leaf), Accepted)
        # (OpenSSL sends the client's own root along when the leaf has no chain: "self-signed
        # certificate in certificate chain" rather than "unable to get local issuer")
        _refused(await accepts(after, old_leaf), "certificate verify failed")

    run("asyncio", main)


def test_a_server_on_the_new_root_is_trusted_by_a_client_that_knows_only_the_old(ca_a, rotated, web):
    async def main() -> None:
        server_ctx = server_context(rotated.leaf("api"), TrustBundle(TD_A, (ca.pem(ca_a.cert),)))
        async with TLSServer(server_ctx) as server:
            result = await call(server.port, client_context(web, TrustBundle(TD_A, (ca.pem(ca_a.cert),))))
        assert result.reply == b"ping\n"

    run("asyncio", main)


# ---- session resumption ------------------------------------------------------------------

@pytest.mark.parametrize("loop,version", [("asyncio", "1.3"), ("uvloop", "1.3"), ("asyncio", "1.2"),
                                          ("uvloop", "1.2")])
def test_sessions_resume_per_destination(loop, version, ca_a, web, api):
    client_ctx = client_context(web, ca_a.bundle())
    if version == "1.2":
        client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx = server_context(api, ca_a.bundle())
    sni = f"api.default.dc1.internal.{TD_A}"

    async def main() -> None:
        async with TLSServer(server_ctx) as server:
            name = ClientContext.dial_hostname(f"127.0.0.1:{server.port}", sni)
            first = await call(server.port, client_ctx, name)
            assert not first.ssl_object.session_reused and client_ctx.session_count() == 1
            assert first.ssl_object.server_hostname == sni  # the SNI, not the packed name
            stored = client_ctx._sessions[name]
            second = await call(server.port, client_ctx, name)
            assert second.ssl_object.session_reused and second.reply == b"ping\n"
            # TLS 1.3 servers send a new ticket on a resumed connection too: the newest is kept
            assert (client_ctx._sessions[name] != stored) == (version == "1.3")
            assert second.ssl_object.version() == f"TLSv{version}"
            full, resumed = await server.outcome(), await server.outcome()
            assert isinstance(full, Accepted) and isinstance(resumed, Accepted) and resumed.resumed
            # the server still knows who the client is on a resumed session
            assert resumed.peer_der == _der(web)
            assert peer_service_id(result_der(second)).service == "api"
            # another destination has no session of its own yet
            other = await call(server.port, client_ctx, ClientContext.dial_hostname("10.9.9.9:21000", sni))
            assert not other.ssl_object.session_reused
        # the server restarts (a new context: its tickets mean nothing any more), same address
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            third = await call(server.port, client_ctx, name)
            assert not third.ssl_object.session_reused and third.reply == b"ping\n"
            assert (await call(server.port, client_ctx, name)).ssl_object.session_reused

    run(loop, main)


def result_der(result: Call) -> bytes:
    return result.ssl_object.getpeercert(binary_form=True)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_session_is_stored_when_the_server_sends_no_data(loop, ca_a, web, api):
    """The TLS 1.3 ticket arrives after the handshake: stored when the client reads it,
    even if no application data ever follows."""
    client_ctx = client_context(web, ca_a.bundle())

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle()), silent=True) as server:
            name = ClientContext.dial_hostname(f"127.0.0.1:{server.port}")
            first = await call(server.port, client_ctx, name, payload=b"")
            assert first.reply == b"" and client_ctx.session_count() == 1
            assert (await call(server.port, client_ctx, name, payload=b"")).ssl_object.session_reused

    run(loop, main)


def test_plain_server_hostname_is_its_own_key(ca_a, web, api):
    """Without dial_hostname the name keys the session (asyncio passes the host when
    server_hostname is left out)."""
    client_ctx = client_context(web, ca_a.bundle())

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            await call(server.port, client_ctx, "127.0.0.1")
            again = await call(server.port, client_ctx, "127.0.0.1")
        assert again.ssl_object.session_reused

    run("asyncio", main)


def test_the_session_cache_is_bounded(ca_a, web):
    client_ctx = client_context(web, ca_a.bundle())
    client_ctx.max_sessions = 2
    for key in ("a", "b", "c"):
        client_ctx.store_session(key, object())  # type: ignore[arg-type]
    assert client_ctx.session_count() == 2 and set(client_ctx._sessions) == {"b", "c"}


@pytest.mark.parametrize("address,sni", [("", None), ("a@b:1", None), ("h:1", "x@y")])
def test_dial_hostname_refuses_what_it_cannot_split(address, sni):
    with pytest.raises(ValueError):
        ClientContext.dial_hostname(address, sni)


# ---- ALPN, versions, ciphers -------------------------------------------------------------

@pytest.mark.parametrize("offered,selected", [
    (("http/1.1", "mesh-mux/1"), "mesh-mux/1"),  # the server's preference wins
    (("http/1.1",), "http/1.1"),
    (("h2",), None),  # nothing in common: no ALPN, the handshake goes on
    ((), None),       # the client offers none (openssl s_client, another Connect proxy)
])
def test_alpn(ca_a, web, api, offered, selected):
    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle(), alpn=("mesh-mux/1", "http/1.1"))) as server:
            result = await call(server.port, client_context(web, ca_a.bundle(), alpn=offered))
            accepted = await server.outcome()
        assert result.reply == b"ping\n"
        assert isinstance(accepted, Accepted) and accepted.alpn == selected
        assert result.ssl_object.selected_alpn_protocol() == selected

    run("asyncio", main)


def test_tls_1_1_is_refused(ca_a, web, api):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # else OpenSSL 3 will not even send a TLS 1.1 hello
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            result = await call(server.port, old)
            _refused(await server.outcome(), "UNSUPPORTED_PROTOCOL")
        assert result.error is not None and result.reply == b""

    run("asyncio", main)


def test_tls_1_2_uses_ecdhe_with_an_aead_cipher(ca_a, web, api):
    client_ctx = client_context(web, ca_a.bundle())
    client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle())) as server:
            result = await call(server.port, client_ctx)
            accepted = await server.outcome()
        assert result.reply == b"ping\n" and isinstance(accepted, Accepted)
        assert accepted.version == "TLSv1.2" and accepted.cipher.startswith("ECDHE-ECDSA-")

    run("asyncio", main)
    for ctx in build_contexts(api, ca_a.bundle()):
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12 and all(c["kea"] == "kx-ecdhe" and c["aead"] for c in tls12)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname


# ---- openssl s_client against a public listener ------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client(tmp_path, ca_a, web, api):
    roots, cert, key = tmp_path / "roots.pem", tmp_path / "web.pem", tmp_path / "web.key"
    roots.write_text(ca.pem(ca_a.cert))
    cert.write_text(web.cert_pem)
    key.write_text(web.key_pem)

    async def s_client(port: int, *extra: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            shutil.which("openssl") or "openssl", "s_client", "-connect", f"127.0.0.1:{port}",
            "-CAfile", str(roots), "-verify_return_error", "-quiet", *extra,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(b"ping\n"), 10)
        return out.decode(errors="replace")

    async def main() -> None:
        async with TLSServer(server_context(api, ca_a.bundle(), alpn=("mesh-mux/1",))) as server:
            assert "ping" not in await s_client(server.port)
            _refused(await server.outcome(), "PEER_DID_NOT_RETURN_A_CERTIFICATE")
            assert "ping" in await s_client(server.port, "-cert", str(cert), "-key", str(key))
            accepted = await server.outcome()
        assert isinstance(accepted, Accepted) and accepted.alpn is None
        assert peer_service_id(accepted.peer_der).service == "web"

    run("asyncio", main)


# ---- peer checks, pure ---------------------------------------------------------------------

def _rejected(der: bytes | None) -> str:
    with pytest.raises(PeerRejected) as refused:
        peer_service_id(der)
    assert refused.value.reason in REASONS
    return refused.value.reason


def test_peer_service_id_reasons(ca_a):
    web_uri = ServiceID(TD_A, "default", "dc1", "web").uri()
    assert _rejected(None) == "no_certificate"
    assert _rejected(b"") == "no_certificate"
    assert _rejected(b"\x30\x03garbage") == "bad_certificate"
    assert _rejected(_der(ca_a.custom_leaf([], dns=("web.example",)))) == "no_uri_san"
    assert _rejected(_der(ca_a.custom_leaf([]))) == "no_uri_san"
    assert _rejected(ca_a.cert.public_bytes(serialization.Encoding.DER)) == "bad_spiffe_id"  # spiffe://<td>
    assert _rejected(_der(ca_a.custom_leaf([f"spiffe://{TD_A}/agent/client/dc/dc1/id/x"]))) == "bad_spiffe_id"
    # only the first URI counts, as Consul
    assert _rejected(_der(ca_a.custom_leaf(["https://example.com/", web_uri]))) == "bad_spiffe_id"
    two = _der(ca_a.custom_leaf([web_uri, ServiceID(TD_A, "default", "dc1", "admin").uri()]))
    assert peer_service_id(two).service == "web"


PEER = ServiceID(TD_A, "default", "dc1", "API")


@pytest.mark.parametrize("service,dc,td,namespace,reason", [
    ("api", "dc1", TD_A, "default", None),          # case-insensitive, as Consul
    ("Api", "DC1", TD_A, "DEFAULT", None),
    ("api", None, TD_A, "default", None),           # no datacenter given: any
    ("api", "dc2", TD_A, "default", "wrong_service"),
    ("web", "dc1", TD_A, "default", "wrong_service"),
    ("api", "dc1", TD_A, "other", "wrong_service"),
    ("api", "dc1", TD_B, "default", "wrong_trust_domain"),
])
def test_check_server_identity(service, dc, td, namespace, reason):
    if reason is None:
        check_server_identity(PEER, service, dc, td, namespace)
        return
    with pytest.raises(PeerRejected) as refused:
        check_server_identity(PEER, service, dc, td, namespace)
    assert refused.value.reason == reason


def test_check_client_identity():
    check_client_identity(PEER, TD_A)
    with pytest.raises(PeerRejected) as refused:
        check_client_identity(PEER, TD_B)
    assert refused.value.reason == "wrong_trust_domain" and TD_B in str(refused.value)


# ---- readiness and values ------------------------------------------------------------------

def test_verify_leaf_against(ca_a, ca_b, rotated, web):
    during = TrustBundle(TD_A, (ca.pem(ca_a.cert), ca.pem(rotated.cert)))
    old_only, new_only = ca_a.bundle(), rotated.bundle()
    new_leaf = rotated.leaf("web")
    assert verify_leaf_against(web, during, NOW) is None
    assert verify_leaf_against(new_leaf, old_only, NOW) is None  # through the cross-signed root
    assert verify_leaf_against(new_leaf, new_only, NOW) is None
    assert "does not chain" in verify_leaf_against(web, new_only, NOW)
    assert "does not chain" in verify_leaf_against(ca_b.leaf("web", trust_domain=TD_A), old_only, NOW)
    assert "trust domain" in verify_leaf_against(ca_a.leaf("web", trust_domain=TD_B), old_only, NOW)
    assert "not now" in verify_leaf_against(web, old_only, NOW + 2 * DAY)
    assert "private key" in verify_leaf_against(Identity(web.cert_pem, ca_a.leaf("x").key_pem), old_only, NOW)
    assert "unreadable" in verify_leaf_against(Identity("garbage", web.key_pem), old_only, NOW)
    assert "unreadable" in verify_leaf_against(Identity(web.cert_pem, "garbage"), old_only, NOW)
    assert "URI" in verify_leaf_against(ca_a.custom_leaf([]), old_only, NOW)
    bare = Identity(new_leaf.cert_pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n",
                    new_leaf.key_pem)
    assert "does not chain" in verify_leaf_against(bare, old_only, NOW)  # without its cross-signed root
    # a root that has expired chains nothing, even to a leaf that outlives it
    key = ca.generate_key("ec", 256)
    short = CA(key, ca.build_root(key, TD_A, 9, NOW, DAY), TD_A)
    outliving = short.custom_leaf([ServiceID(TD_A, "default", "dc1", "web").uri()], not_after=NOW + 5 * DAY)
    assert verify_leaf_against(outliving, short.bundle(), NOW) is None
    assert "does not chain" in verify_leaf_against(outliving, short.bundle(), NOW + 2 * DAY)


def test_bundle_from_the_roots_endpoint_after_a_rotation():
    state = manager.initial_state(NOW, "", 1)
    state = manager.rotate(state, dict(state["config"]), NOW, "", 2)
    body = manager.roots_api(state, 2)
    bundle = TrustBundle.from_roots(body)
    assert bundle.trust_domain == state["trust_domain"] and len(bundle.roots) == 2
    with pytest.raises(InvalidRequest, match="not bootstrapped"):
        TrustBundle.from_roots({"TrustDomain": "", "Roots": []})
    with pytest.raises(InvalidRequest, match="not bootstrapped"):
        TrustBundle(TD_A, ())


def test_identity_from_leaf_endpoint_and_repr_hides_the_key(web):
    identity = Identity.from_leaf({"CertPEM": web.cert_pem, "PrivateKeyPEM": web.key_pem})
    assert identity == web
    assert "PRIVATE KEY" not in repr(identity) and "key_pem" not in repr(identity)


def test_garbage_cannot_make_a_context(ca_a, web):
    with pytest.raises(InvalidRequest, match="cannot build a TLS context"):
        server_context(Identity(web.cert_pem, ca_a.leaf("x").key_pem), ca_a.bundle())
    with pytest.raises(InvalidRequest):
        client_context(web, TrustBundle(TD_A, ("not a pem",)))
