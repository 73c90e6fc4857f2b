"""The leader's CA functions: the first root, signing checks, the sealed key."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509

from mesh.ca import manager
from mesh.ca import x509 as certs
from mesh.ca.spiffe import ServiceID
from mesh.catalog.errors import InvalidRequest, MeshError
from tests.harness.mtls import handshake

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
    with pytest.raises(MeshError, match="different cluster key") as err:  # a server fault: 500, not 400
        manager.sign_csr(state, csr, "web", "dc1", 46, NOW, "b3RoZXI=")
    assert not isinstance(err.value, InvalidRequest)


@pytest.mark.parametrize("body, message", [
    ({"Provider": "vault"}, "unsupported CA provider"),
    ({"Config": {"PrivateKeyType": "dsa"}}, "PrivateKeyType"),
    ({"Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 1024}}, "PrivateKeyBits"),
    ({"Config": {"LeafCertTTL": "9000h"}}, "LeafCertTTL"),
    ({"Config": {"LeafCertTTL": "soon"}}, "LeafCertTTL"),
    ({"Config": {"RootCertTTL": "10h"}}, "RootCertTTL"),
    ({"Config": {"Bogus": 1}}, "unknown CA config keys"),
    ([], "JSON object"),
    ({"ForceRotation": "yes"}, "ForceRotation must be true or false"),
    # out of range (issue 10): each a 400 naming the field, never an overflow later
    ({"Config": {"RootCertTTL": "999999999999999h"}}, "Config.RootCertTTL"),
    ({"Config": {"RootCertTTL": 2**70}}, "Config.RootCertTTL"),
    ({"Config": {"LeafCertTTL": float("nan")}}, "Config.LeafCertTTL"),
    ({"Config": {"CSRMaxPerSecond": 2**70}}, "Config.CSRMaxPerSecond"),
    ({"Config": {"CSRMaxPerSecond": float("inf")}}, "Config.CSRMaxPerSecond"),
    ({"Config": {"CSRMaxPerSecond": float("nan")}}, "Config.CSRMaxPerSecond"),
    ({"Config": {"CSRMaxConcurrent": 2**70}}, "Config.CSRMaxConcurrent"),
    ({"Config": {"CSRMaxConcurrent": 1.5}}, "Config.CSRMaxConcurrent"),
    ({"Config": {"RotationPeriod": 2**70}}, "Config.RotationPeriod"),
    ({"Config": {"RotationPeriod": "999999999999999h"}}, "Config.RotationPeriod"),
    ({"Config": {"RotationPeriod": "soon"}}, "Config.RotationPeriod"),
    ({"Config": {"SkipValidate": "yes"}}, "Config.SkipValidate"),
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


def test_rotation_is_due_at_three_quarters_of_the_root_lifetime():
    config = manager.validate_config({"Config": {"LeafCertTTL": "10s", "IntermediateCertTTL": "30s",
                                                 "RootCertTTL": "40s"}})
    young = manager.initial_state(NOW, "", 1, config)
    born = manager.parse_time(young["roots"][0]["NotBefore"])  # backdated by the clock slack
    lifetime = manager.parse_time(young["roots"][0]["NotAfter"]) - born
    assert manager.rotation_due(young, born + lifetime * 0.7) == ""
    assert "expires at" in manager.rotation_due(young, born + lifetime * 0.76)
    assert manager.rotation_due({}, NOW) == ""


def test_prune_drops_a_rotated_root_once_its_leaves_can_have_expired(state):
    config = manager.validate_config({"Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
    rotated = manager.rotate(state, config, NOW, "c2VjcmV0", 60)
    assert manager.prune(rotated, NOW) is None
    leaf_ttl = datetime.timedelta(hours=72)
    assert manager.prune(rotated, NOW + leaf_ttl) is None  # a leaf signed just before may still be valid
    pruned = manager.prune(rotated, NOW + leaf_ttl + datetime.timedelta(minutes=2))
    assert [r["ID"] for r in pruned["roots"]] == [rotated["active_root_id"]]
    assert pruned["roots"][0]["IntermediateCerts"] is None  # the cross-signature from the pruned root goes too
    assert manager.prune(pruned, NOW + leaf_ttl * 2) is None


def test_a_sidecar_trusting_only_the_old_root_accepts_a_new_leaf_in_a_real_handshake(tmp_path):
    """OpenSSL's path rules (path length, key usage) through the cross-signed certificate."""
    now = datetime.datetime.now(datetime.UTC)
    old = manager.initial_state(now, "", 1)
    new = manager.rotate(old, old["config"], now, "", 2)

    def leaf(state, name, serial):
        uri = ServiceID(state["trust_domain"], "default", "dc1", name).uri()
        key, csr = certs.make_csr(uri)
        return dict(manager.sign_csr(state, csr, name, "dc1", serial, now, ""), PrivateKeyPEM=key)

    old_roots = old["roots"][0]["RootCert"]
    both = "".join(r["RootCert"] for r in new["roots"])
    web_new, api_old = leaf(new, "web", 3), leaf(old, "api", 4)
    peer = handshake(tmp_path, web_new, both, api_old, old_roots)
    assert ("URI", api_old["ServiceURI"]) in peer["subjectAltName"]
    handshake(tmp_path, api_old, old_roots, web_new, both)
    with pytest.raises(ssl.SSLError):  # a side that dropped the old root too soon refuses old leaves
        handshake(tmp_path, web_new, new["roots"][1]["RootCert"], api_old, old_roots)


def test_shortening_the_leaf_ttl_does_not_prune_a_root_before_its_longer_leaves_expire(state):
    shorter = manager.reconfigure(state, manager.validate_config({"Config": {"LeafCertTTL": "1h"}}))
    assert "LeafTTLMax" not in manager.roots_api(shorter, 1)["Roots"][0]  # bookkeeping stays private
    rotated = manager.rotate(shorter, dict(shorter["config"], PrivateKeyBits=384), NOW, "c2VjcmV0", 70)
    assert manager.prune(rotated, NOW + datetime.timedelta(hours=2)) is None  # 72 h leaves may be out
    assert manager.prune(rotated, NOW + datetime.timedelta(hours=72, minutes=2)) is not None


def test_an_unusable_old_key_refuses_rotation_unless_forced_without_cross_signing(state):
    """A snapshot restored into a cluster with another -encrypt key: the old root's key
    cannot be unsealed, so only a rotation without cross-signing gets the CA back."""
    other_secret = "b3RoZXI="
    with pytest.raises(InvalidRequest, match="ForceWithoutCrossSigning"):
        manager.rotate(state, state["config"], NOW, other_secret, 80)
    rotated = manager.rotate(state, state["config"], NOW, other_secret, 81, without_cross_signing=True)
    new_root = next(r for r in rotated["roots"] if r["ID"] == rotated["active_root_id"])
    assert new_root["IntermediateCerts"] is None
    web = ServiceID(state["trust_domain"], "default", "dc1", "web").uri()
    leaf = manager.sign_csr(rotated, certs.make_csr(web)[1], "web", "dc1", 82, NOW, other_secret)
    assert certs.verifies(certs.load_cert(leaf["CertPEM"]), certs.load_cert(new_root["RootCert"]))
    with pytest.raises(InvalidRequest, match="ForceWithoutCrossSigning must be"):
        manager.validate_config({"ForceWithoutCrossSigning": 1})


def test_longest_durations_validate_and_stay_valid():
    """2562047h (Go's longest duration) is written back as plain digits, so the
    stored config validates again (":g" made it 2.56205e+06h, past the maximum)."""
    config = manager.validate_config({"Config": {"RootCertTTL": "2562047h", "RotationPeriod": 3600}})
    assert config["RootCertTTL"] == "2562047h" and config["RotationPeriod"] == "1h0m0s"
    assert manager.validate_config({"Config": config}) == config
