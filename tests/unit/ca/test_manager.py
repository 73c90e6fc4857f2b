"""The leader's CA functions: the first root, signing checks, the sealed key."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509

from mesh.ca import manager
from mesh.ca import x509 as certs
from mesh.ca.spiffe import ServiceID
from mesh.catalog.errors import InvalidRequest

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def state():
    return manager.initial_state(NOW, "c2VjcmV0", 7)


def test_initial_state_and_roots_api(state):
    assert state["trust_domain"] == state["cluster_id"] + ".consul"
    assert state["roots"][0]["SigningKey"].startswith("sealed:")  # encrypted with the cluster key
    api = manager.roots_api(state, 9)
    assert api["ActiveRootID"] == state["active_root_id"] and api["Roots"][0]["Active"] is True
    assert "SigningKey" not in api["Roots"][0]
    root = certs.load_cert(api["Roots"][0]["RootCert"])
    assert root.not_valid_after_utc - NOW == datetime.timedelta(hours=87600)


def test_sign_checks_the_identity(state):
    web = ServiceID(state["trust_domain"], "default", "dc1", "web").uri()
    _, csr = certs.make_csr(web)
    leaf = manager.sign_csr(state, csr, "web", "dc1", 42, NOW, "c2VjcmV0")
    cert = certs.load_cert(leaf["CertPEM"])
    assert certs.verifies(cert, certs.load_cert(state["roots"][0]["RootCert"]))
    assert leaf["ServiceURI"] == web and leaf["SerialNumber"] == "2a"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == [web]
    with pytest.raises(InvalidRequest, match="does not match"):
        manager.sign_csr(state, csr, "db", "dc1", 43, NOW, "c2VjcmV0")  # a CSR for another service
    other_td = ServiceID("00000000-0000-0000-0000-000000000000.consul", "default", "dc1", "web").uri()
    with pytest.raises(InvalidRequest, match="does not match"):
        manager.sign_csr(state, certs.make_csr(other_td)[1], "web", "dc1", 44, NOW, "c2VjcmV0")
    with pytest.raises(InvalidRequest, match="not a PEM"):
        manager.sign_csr(state, "garbage", "web", "dc1", 45, NOW, "c2VjcmV0")
    with pytest.raises(InvalidRequest, match="different cluster key"):
        manager.sign_csr(state, csr, "web", "dc1", 46, NOW, "b3RoZXI=")


@pytest.mark.parametrize("body, message", [
    ({"Provider": "vault"}, "unsupported CA provider"),
    ({"Config": {"PrivateKeyType": "dsa"}}, "PrivateKeyType"),
    ({"Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 1024}}, "PrivateKeyBits"),
    ({"Config": {"LeafCertTTL": "9000h"}}, "LeafCertTTL"),
    ({"Config": {"LeafCertTTL": "soon"}}, "LeafCertTTL"),
    ({"Config": {"RootCertTTL": "10h"}}, "RootCertTTL"),
    ({"Config": {"Bogus": 1}}, "unknown CA config keys"),
    ([], "JSON object"),
])
def test_bad_ca_config_is_rejected(body, message):
    with pytest.raises(InvalidRequest, match=message):
        manager.validate_config(body)


def test_rotation_keeps_old_leaves_valid_and_chains_new_ones(state):
    web = ServiceID(state["trust_domain"], "default", "dc1", "web").uri()
    old_leaf = certs.load_cert(manager.sign_csr(state, certs.make_csr(web)[1], "web", "dc1", 50, NOW, "c2VjcmV0")["CertPEM"])
    config = manager.validate_config({"Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
    rotated = manager.rotate(state, config, NOW, "c2VjcmV0", 51)
    api = manager.roots_api(rotated, 52)
    assert len(api["Roots"]) == 2 and api["ActiveRootID"] != state["active_root_id"]
    old_root, new_root = (certs.load_cert(r["RootCert"]) for r in api["Roots"])
    assert certs.verifies(old_leaf, old_root)  # the old root is still trusted
    signed = manager.sign_csr(rotated, certs.make_csr(web)[1], "web", "dc1", 53, NOW, "c2VjcmV0")
    new_leaf = certs.load_cert(signed["CertPEM"])
    cross = certs.load_cert(api["Roots"][1]["IntermediateCerts"][0])
    assert certs.verifies(new_leaf, new_root)
    assert certs.verifies(new_leaf, cross) and certs.verifies(cross, old_root)  # old-root holders accept it too
    assert signed["CertPEM"].count("BEGIN CERTIFICATE") == 2  # leaf + cross-signed chain
