"""Agent TLS certificates as `consul tls ca create` / `consul tls cert create` make them:
the CA that signs agents' certificates for the HTTPS API and the server RPC port (not
the Connect CA, whose leaves carry SPIFFE identities, ca/x509.py).

Pure but for `new_key`: keys, serial numbers and the time are passed in, so the
profiles are testable and the CLI (agent/cli/tls_cmd.py) owns randomness and files.
Profiles, as Consul's tlsutil:

- CA: EC P-256, basic constraints CA:true, key usage cert sign + CRL sign + digital
  signature, subject and authority key IDs, common name `Consul Agent CA <serial>`
  unless given, and with name constraints only when asked (permitted DNS domains,
  critical);
- server: `server.<dc>.<domain>` (and `<node>.server.<dc>.<domain>`), `localhost`,
  127.0.0.1, server and client auth;
- client: `client.<dc>.<domain>`, `localhost`, 127.0.0.1, client and server auth;
- cli: `cli.<dc>.<domain>`, `localhost`, client auth only;
  each with key usage digital signature + key encipherment, CA:false.
Both are valid from one minute before `now` (clock skew between hosts) for `days` days.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.catalog.errors import InvalidRequest

__all__ = ["AgentCertSpec", "KINDS", "agent_ca", "agent_cert", "cert_spec", "new_key", "ec_key_pem",
           "load_ca_pair", "cert_pem"]

KINDS = ("server", "client", "cli")
_SKEW = datetime.timedelta(minutes=1)
_EKU = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
    "cli": [ExtendedKeyUsageOID.CLIENT_AUTH],
}


@dataclass(frozen=True)
class AgentCertSpec:
    """What one certificate is for: its common name, SANs and kind."""

    kind: str
    name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]


def cert_spec(kind: str, dc: str, domain: str, node: str = "", extra_dns: Sequence[str] = (),
              extra_ips: Sequence[str] = ()) -> AgentCertSpec:
    """Consul's names for a `-server`, `-client` or `-cli` certificate. InvalidRequest
    for a bad IP address or -node without -server."""
    if kind not in KINDS:
        raise InvalidRequest("Please provide either -server, -client, or -cli")
    if node and kind != "server":
        raise InvalidRequest("-node requires -server")
    name = f"{kind}.{dc}.{domain}"
    dns = [d.strip() for d in extra_dns if d.strip()]
    ips = []
    for raw in extra_ips:
        if raw.strip():
            try:
                ips.append(str(ipaddress.ip_address(raw.strip())))
            except ValueError:
                raise InvalidRequest(f"-additional-ipaddress: {raw!r} is not an IP address") from None
    if kind == "cli":  # as Consul: the additional names are not for a CLI certificate
        return AgentCertSpec(kind, name, (name, "localhost"), ())
    if node:
        dns.append(f"{node}.server.{dc}.{domain}")
    return AgentCertSpec(kind, name, (*dns, name, "localhost"), (*ips, "127.0.0.1"))


def new_key() -> ec.EllipticCurvePrivateKey:
    """EC P-256, the only key type Consul's tls commands make."""
    return ec.generate_private_key(ec.SECP256R1())


def ec_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """`EC PRIVATE KEY` PEM, the form Consul writes and reads back for -key."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption()).decode()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_encipherment=not ca, key_cert_sign=ca, crl_sign=ca,
                         content_commitment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def agent_ca(key: ec.EllipticCurvePrivateKey, serial: int, now: datetime.datetime, days: int,
             common_name: str = "", constraints: Sequence[str] = ()) -> x509.Certificate:
    """The agent CA certificate; `constraints` non-empty adds permitted DNS domains."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"Consul Agent CA {serial}")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - _SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
    )
    if constraints:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(c) for c in constraints], excluded_subtrees=None),
            critical=True)
    return builder.sign(key, hashes.SHA256())


def agent_cert(spec: AgentCertSpec, key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
               ca_key: ec.EllipticCurvePrivateKey, serial: int, now: datetime.datetime,
               days: int) -> x509.Certificate:
    """A certificate for `spec`'s names with `key`'s public half, signed by the CA."""
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in spec.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in spec.ip_addresses]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.name)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(serial)
        .not_valid_before(now - _SKEW).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKU[spec.kind]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def load_ca_pair(cert_text: bytes, key_text: bytes) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key read from -ca and -key; InvalidRequest with one line
    when either is not PEM, the key is not EC, or they do not belong together."""
    try:
        cert = x509.load_pem_x509_certificate(cert_text)
    except ValueError:
        raise InvalidRequest("Error reading CA: no PEM-encoded certificate found") from None
    try:
        key = serialization.load_pem_private_key(key_text, password=None)
    except (ValueError, TypeError):
        raise InvalidRequest("Error reading CA key: no unencrypted PEM-encoded private key found") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidRequest("Error reading CA key: the key is not an EC key")
    if key.public_key() != cert.public_key():
        raise InvalidRequest("Error reading CA key: the key does not belong to the CA certificate")
    return cert, key
