"""Connect certificate building: SPIFFE IDs, root and leaf profiles, CSR checks, cross-signing."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.ca import x509 as ca
from mesh.ca.spiffe import ServiceID, check_service_name, parse_service_id, trust_domain_for
from mesh.catalog.errors import InvalidRequest

TD = trust_domain_for("11111111-2222-3333-4444-555555555555")
NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)
WEB = ServiceID(TD, "default", "dc1", "web").uri()


def test_spiffe_round_trip():
    sid = parse_service_id(WEB)
    assert sid == ServiceID(TD, "default", "dc1", "web") and sid.uri() == WEB


@pytest.mark.parametrize("uri", [
    "https://x/ns/default/dc/dc1/svc/web", "spiffe://", "spiffe:///ns/default/dc/dc1/svc/web",
    f"spiffe://{TD}/ns/default/dc/dc1", f"spiffe://{TD}/ns/default/dc/dc1/svc/", f"spiffe://{TD}/ns/default/dc/dc1/svc/we b",
    f"spiffe://{TD}/ns/default/dc/dc1/svc/web/extra", f"spiffe://{TD}/ns/default/dc/dc1/svc/web?x=1",
    f"spiffe://{TD}/agent/client/dc/dc1/id/x", "spiffe://UPPER.consul/ns/default/dc/dc1/svc/web",
])
def test_malformed_ids_are_rejected(uri):
    with pytest.raises(InvalidRequest):
        parse_service_id(uri)


def _csr(uri: str, key=None):
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web")]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def root():
    key = ca.generate_key("ec", 256)
    return key, ca.build_root(key, TD, 1, NOW, datetime.timedelta(days=3650))


def test_root_profile(root):
    _, cert = root
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == [f"spiffe://{TD}"]


def test_leaf_profile(root):
    key, cert = root
    csr, uri = ca.csr_service_uri(_csr(WEB))
    assert uri == WEB
    leaf = ca.sign_leaf(csr, uri, key, cert, 12345, NOW, datetime.timedelta(hours=72))
    assert ca.verifies(leaf, cert)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [WEB]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement and not usage.key_cert_sign
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert leaf.not_valid_after_utc == NOW + datetime.timedelta(hours=72)
    assert ca.serial_hex(leaf.serial_number) == "30:39"


@pytest.mark.parametrize("data, message", [
    (b"garbage", "not a PEM"),
    (b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "not a PEM"),
])
def test_garbage_csrs_are_rejected(data, message):
    with pytest.raises(InvalidRequest, match=message):
        ca.csr_service_uri(data)


def test_csr_without_uri_is_rejected():
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidRequest, match="no SPIFFE URI"):
        ca.csr_service_uri(csr)


def test_cross_signed_root_lets_either_root_verify_new_leaves(root):
    old_key, old_root = root
    new_key = ca.generate_key("ec", 256)
    new_root = ca.build_root(new_key, TD, 2, NOW, datetime.timedelta(days=3650))
    cross = ca.cross_sign(new_root, old_key, old_root, 3, NOW)
    csr, uri = ca.csr_service_uri(_csr(WEB))
    leaf = ca.sign_leaf(csr, uri, new_key, new_root, 4, NOW, datetime.timedelta(hours=72))
    assert ca.verifies(leaf, new_root)  # holders of the new root
    assert ca.verifies(leaf, cross) and ca.verifies(cross, old_root)  # holders of the old root, via the cross-signed cert
    assert not ca.verifies(leaf, old_root)


def test_unsupported_key_types():
    with pytest.raises(InvalidRequest):
        ca.generate_key("rsa", 1024)
    with pytest.raises(InvalidRequest):
        ca.generate_key("dsa", 2048)


def test_service_names_that_cannot_be_identities_are_refused_and_long_ones_fit():
    for bad in ("my svc", "", "-web", "web/x"):
        with pytest.raises(InvalidRequest, match="cannot be part of a SPIFFE identity"):
            check_service_name(bad)
    long_name = "a" * 200
    check_service_name(long_name)
    _, csr_pem = ca.make_csr(ServiceID(TD, "default", "dc1", long_name).uri())
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert len(csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value) == 64  # X.509's limit
