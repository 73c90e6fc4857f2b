"""Agent TLS certificates (`mesh tls ca create` / `tls cert create`): Consul's profiles."""

from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

from mesh.ca.agent_certs import agent_ca, agent_cert, cert_spec, ec_key_pem, load_ca_pair, new_key
from mesh.catalog.errors import InvalidRequest

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


def _ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


@pytest.fixture(scope="module")
def ca():
    key = new_key()
    return key, agent_ca(key, 77, NOW, 1825)


def test_ca_profile(ca):
    key, cert = ca
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert cert.subject.rfc4514_string() == "CN=Consul Agent CA 77" and cert.issuer == cert.subject
    assert _ext(cert, x509.BasicConstraints).value.ca and _ext(cert, x509.BasicConstraints).critical
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and usage.digital_signature and not usage.key_encipherment
    ski = _ext(cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == ski
    assert cert.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=1825)
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.NameConstraints)


def test_ca_name_constraints_and_common_name():
    cert = agent_ca(new_key(), 5, NOW, 10, "My CA", ["example.org", "consul", "localhost"])
    assert cert.subject.rfc4514_string() == "CN=My CA"
    constraints = _ext(cert, x509.NameConstraints)
    assert constraints.critical
    assert [n.value for n in constraints.value.permitted_subtrees] == ["example.org", "consul", "localhost"]


@pytest.mark.parametrize("kind, dns, ips, ekus", [
    ("server", ["server.dc2.example", "localhost"], ["127.0.0.1"], [EKU.SERVER_AUTH, EKU.CLIENT_AUTH]),
    ("client", ["client.dc2.example", "localhost"], ["127.0.0.1"], [EKU.CLIENT_AUTH, EKU.SERVER_AUTH]),
    ("cli", ["cli.dc2.example", "localhost"], [], [EKU.CLIENT_AUTH]),
])
def test_leaf_profiles(ca, kind, dns, ips, ekus):
    ca_key, ca_cert = ca
    spec = cert_spec(kind, "dc2", "example")
    key = new_key()
    cert = agent_cert(spec, key, ca_cert, ca_key, 9, NOW, 365)
    assert cert.subject.rfc4514_string() == f"CN={kind}.dc2.example" and cert.issuer == ca_cert.subject
    sans = _ext(cert, x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == dns
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ips
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == ekus
    usage = _ext(cert, x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert _ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        _ext(ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert cert.not_valid_after_utc == NOW + datetime.timedelta(days=365)
    ca_cert.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_server_extra_names_and_node():
    spec = cert_spec("server", "dc1", "consul", node="n1", extra_dns=["a.example", " "],
                     extra_ips=["10.0.0.1", "::1"])
    assert spec.dns_names == ("a.example", "n1.server.dc1.consul", "server.dc1.consul", "localhost")
    assert spec.ip_addresses == ("10.0.0.1", "::1", "127.0.0.1")
    assert all(ipaddress.ip_address(i) for i in spec.ip_addresses)
    assert cert_spec("cli", "dc1", "consul", extra_dns=["x"]).dns_names == ("cli.dc1.consul", "localhost")


@pytest.mark.parametrize("kind, node, ips, message", [
    ("client", "n1", [], "-node requires -server"),
    ("other", "", [], "Please provide either -server, -client, or -cli"),
    ("server", "", ["nope"], "'nope' is not an IP address"),
])
def test_spec_errors(kind, node, ips, message):
    with pytest.raises(InvalidRequest, match=message):
        cert_spec(kind, "dc1", "consul", node=node, extra_ips=ips)


def test_load_ca_pair(ca):
    key, cert = ca
    from mesh.ca.agent_certs import cert_pem

    assert load_ca_pair(cert_pem(cert).encode(), ec_key_pem(key).encode())[0] == cert
    assert ec_key_pem(key).startswith("-----BEGIN EC PRIVATE KEY-----")
    with pytest.raises(InvalidRequest, match="does not belong"):
        load_ca_pair(cert_pem(cert).encode(), ec_key_pem(new_key()).encode())
    with pytest.raises(InvalidRequest, match="Error reading CA:"):
        load_ca_pair(b"garbage", ec_key_pem(key).encode())
