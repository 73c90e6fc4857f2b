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
