"""Certificates for Connect: roots, leaves signed from CSRs, cross-signed roots, and the
parsing ca/tls.py needs (certificates, keys, URI SANs).

The only module that touches `cryptography` (ca/tls.py works through the helpers
here). Deterministic apart from key generation: the caller passes the time and the
serial number (the Raft index makes serials unique across the cluster). Profiles
follow ../shared/reference/consul.md §4:

- a root is a CA certificate whose SAN is the trust domain URI (`spiffe://<td>`);
- a leaf carries exactly one SPIFFE URI SAN, key usage digital signature and key
  agreement (and key encipherment for RSA), extended key usage server and client
  auth, and a NotBefore one minute in the past so small clock skews do not matter;
- a cross-signed root is the new root's subject and key, issued by the old root, so
  leaves of the new root verify for holders of either root.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.catalog.errors import InvalidRequest

__all__ = [
    "PrivateKey",
    "KEY_TYPES",
    "generate_key",
    "build_root",
    "sign_leaf",
    "cross_sign",
    "csr_service_uri",
    "serial_hex",
    "pem",
    "key_pem",
    "load_cert",
    "verifies",
    "seal_key",
    "unseal_key",
    "fingerprint",
    "make_csr",
    "load_certs",
    "load_key",
    "key_matches",
    "uri_sans",
    "der_uri_sans",
    "valid_at",
    "make_agent_csr",
    "csr_agent_request",
    "AgentCSR",
    "MAX_CSR_SANS",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KEY_TYPES = {("ec", 256), ("ec", 384), ("rsa", 2048), ("rsa", 4096)}
_SKEW = datetime.timedelta(minutes=1)


def _common_name(uri: str) -> str:
    """The service name, cut to X.509's 64-character limit (the URI SAN is the identity)."""
    return uri.rsplit("/", 1)[-1][:64]


def generate_key(key_type: str = "ec", bits: int = 256) -> PrivateKey:
    """CPU-heavy for RSA: callers on an event loop run it in a thread."""
    if (key_type, bits) not in KEY_TYPES:
        raise InvalidRequest(f"unsupported key: {key_type} {bits} (use ec 256/384 or rsa 2048/4096)")
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1() if bits == 256 else ec.SECP384R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _hash(key: PrivateKey) -> hashes.HashAlgorithm:
    return hashes.SHA384() if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size == 384 \
        else hashes.SHA256()


@dataclass(frozen=True)
class _Validity:
    not_before: datetime.datetime
    not_after: datetime.datetime


def _validity(now: datetime.datetime, ttl: datetime.timedelta) -> _Validity:
    return _Validity(now - _SKEW, now + ttl)


def build_root(key: PrivateKey, trust_domain: str, serial: int, now: datetime.datetime,
               ttl: datetime.timedelta, common_name: str = "") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"mesh CA {serial}")])
    v = _validity(now, ttl)
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(v.not_before).not_valid_after(v.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, _hash(key))
    )


def csr_service_uri(csr_pem: bytes) -> tuple[x509.CertificateSigningRequest, str]:
    """The CSR and its single SPIFFE URI SAN; InvalidRequest for garbage, a bad
    signature, or not exactly one URI."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise InvalidRequest("CSR is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise InvalidRequest("CSR signature is not valid")
    try:
        uris = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        raise InvalidRequest("CSR has no SPIFFE URI SAN") from None
    if len(uris) != 1:
        raise InvalidRequest("CSR must carry exactly one URI SAN")
    return csr, uris[0]


def sign_leaf(csr: x509.CertificateSigningRequest, uri: str, root_key: PrivateKey, root: x509.Certificate,
              serial: int, now: datetime.datetime, ttl: datetime.timedelta,
              dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ()) -> x509.Certificate:
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
        raise InvalidRequest("CSR key must be EC or RSA")
    v = _validity(now, ttl)
    is_rsa = isinstance(public, rsa.RSAPublicKey)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(uri))]))
        .issuer_name(root.subject).public_key(public).serial_number(serial)
        .not_valid_before(v.not_before).not_valid_after(min(v.not_after, root.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=is_rsa, key_agreement=not is_rsa,
                                     content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, _hash(root_key))
    )


def cross_sign(new_root: x509.Certificate, old_key: PrivateKey, old_root: x509.Certificate, serial: int,
               now: datetime.datetime) -> x509.Certificate:
    """The new root's subject and key, issued by the old root, valid while the old
    root is: proxies that trust only the old root accept leaves of the new one."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(new_root.subject).issuer_name(old_root.subject).public_key(new_root.public_key())
        .serial_number(serial).not_valid_before(now - _SKEW)
        .not_valid_after(min(new_root.not_valid_after_utc, old_root.not_valid_after_utc))
    )
    for ext in new_root.extensions:
        builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(old_key, _hash(old_key))


def make_csr(uri: str, key_type: str = "ec", bits: int = 256) -> tuple[str, str]:
    """(private key PEM, CSR PEM) for a service identity: the agent keeps the key."""
    key = generate_key(key_type, bits)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(uri))]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(key, _hash(key))
    )
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


# DNS and IP SANs an agent may ask for in one auto_encrypt CSR (Consul's defaults plus
# the operator's dns_san/ip_san lists; far more than any real agent needs)
MAX_CSR_SANS = 64


@dataclass(frozen=True)
class AgentCSR:
    """What an agent's auto_encrypt CSR asks for: its SPIFFE URI and extra names."""

    csr: x509.CertificateSigningRequest
    uri: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def make_agent_csr(uri: str, dns_names: tuple[str, ...] = (), ip_addresses: tuple[str, ...] = ()) -> tuple[str, str]:
    """(private key PEM, CSR PEM) for an agent's RPC certificate: the SPIFFE agent URI
    plus DNS and IP SANs, so the certificate also names the host (as Consul's).
    CPU work: callers on an event loop run it in a thread."""
    key = generate_key("ec", 256)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    sans += [x509.DNSName(d) for d in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ip_addresses]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(uri))]))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, _hash(key))
    )
    return key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode()


def csr_agent_request(csr_pem: bytes) -> AgentCSR:
    """An agent CSR's URI and extra SANs; InvalidRequest for garbage, a bad signature,
    not exactly one URI, e-mail or other SAN kinds, or too many names."""
    csr, uri = csr_service_uri(csr_pem)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns_names = tuple(san.get_values_for_type(x509.DNSName))
    ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    if len(san) != 1 + len(dns_names) + len(ips):
        raise InvalidRequest("CSR SANs may be one URI, DNS names and IP addresses only")
    if len(dns_names) + len(ips) > MAX_CSR_SANS:
        raise InvalidRequest(f"CSR asks for more than {MAX_CSR_SANS} DNS and IP SANs")
    for name in dns_names:
        if not name or len(name) > 253 or not all(c.isascii() and (c.isalnum() or c in ".-_*") for c in name):
            raise InvalidRequest(f"CSR DNS SAN {name[:80]!r} is not a host name")
    return AgentCSR(csr, uri, dns_names, ips)


def serial_hex(serial: int) -> str:
    """Consul's colon-separated hex serial numbers."""
    raw = serial.to_bytes(max(1, (serial.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_cert(text: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        raise InvalidRequest("not a PEM certificate") from None


def seal_key(key_pem_text: str, secret: str) -> str:
    """The CA key as stored in the replicated state: encrypted with a key derived from
    the cluster's -encrypt secret when there is one (Fernet), else as is."""
    if not secret:
        return key_pem_text
    return "sealed:" + _fernet(secret).encrypt(key_pem_text.encode()).decode()


def unseal_key(stored: str, secret: str) -> PrivateKey:
    if stored.startswith("sealed:"):
        if not secret:
            raise InvalidRequest("the CA key is sealed with the cluster key: start servers with -encrypt")
        try:
            stored = _fernet(secret).decrypt(stored[len("sealed:"):].encode()).decode()
        except InvalidToken:
            raise InvalidRequest("the CA key is sealed with a different cluster key") from None
    key = serialization.load_pem_private_key(stored.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidRequest("unsupported CA key type")
    return key


def _fernet(secret: str) -> Fernet:
    digest = hashlib.sha256(b"mesh-ca-key-seal:" + secret.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def fingerprint(cert: x509.Certificate) -> str:
    """Consul's root ID: the SHA-1 fingerprint of the DER, colon-hex."""
    return ":".join(f"{b:02x}" for b in cert.fingerprint(hashes.SHA1()))  # noqa: S303 - an identifier, as Consul's


def verifies(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when `issuer` signed `cert` (signature and names; validity is the caller's)."""
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def load_certs(text: str) -> list[x509.Certificate]:
    """Every certificate in a PEM text (a leaf followed by its chain, or a bundle), in
    order; InvalidRequest when there is none or one is garbage."""
    try:
        return x509.load_pem_x509_certificates(text.encode())  # none at all: ValueError too
    except ValueError:
        raise InvalidRequest("not a PEM certificate") from None


def load_key(text: str) -> PrivateKey:
    """An unencrypted PEM private key (EC or RSA); InvalidRequest otherwise."""
    try:
        key = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise InvalidRequest("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidRequest("unsupported private key type (EC or RSA)")
    return key


def key_matches(cert: x509.Certificate, key: PrivateKey) -> bool:
    """True when `key` is the private half of the certificate's public key."""
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki)


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The certificate's URI SANs in the order they are written (none: [])."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def der_uri_sans(der: bytes) -> list[str]:
    """uri_sans of a DER certificate (what ssl's getpeercert(binary_form=True) gives);
    InvalidRequest when the bytes are not a certificate."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return uri_sans(cert)
    except ValueError:  # also a malformed extension, which cryptography parses lazily
        raise InvalidRequest("not a DER certificate") from None


def valid_at(cert: x509.Certificate, now: datetime.datetime) -> bool:
    return cert.not_valid_before_utc <= now < cert.not_valid_after_utc
