"""Agent SPIFFE identities and auto_encrypt signing (ca.spiffe, ca.manager.sign_agent_csr)."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from mesh.ca import manager
from mesh.ca import x509 as certs
from mesh.ca.spiffe import UNKNOWN_TRUST_DOMAIN, AgentID, parse_agent_id
from mesh.ca.tls import rpc_peer_problem
from mesh.catalog.errors import InvalidRequest

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def state():
    return manager.initial_state(NOW, "", 10)


def test_agent_id_round_trip():
    agent = AgentID("abc.consul", "dc1", "node-1")
    assert agent.uri() == "spiffe://abc.consul/agent/client/dc/dc1/id/node-1"
    assert parse_agent_id(agent.uri()) == agent


@pytest.mark.parametrize("uri", [
    "spiffe://abc.consul/ns/default/dc/dc1/svc/web",  # a service, not an agent
    "spiffe://abc.consul/agent/server/dc/dc1/id/n",
    "spiffe://abc.consul/agent/client/dc/dc1/id/n/extra",
    "spiffe://abc.consul/agent/client/dc/dc1/id/",
    "spiffe://abc.consul/agent/client/dc/dc1/id/n?x=1",
    "spiffe://ABC!/agent/client/dc/dc1/id/n",
    "http://abc.consul/agent/client/dc/dc1/id/n",
])
def test_not_agent_ids(uri):
    with pytest.raises(InvalidRequest):
        parse_agent_id(uri)


def _sign(state, uri: str, node: str = "n1", dc: str = "dc1", dns=(), ips=()):
    key_pem, csr = certs.make_agent_csr(uri, dns, ips)
    return key_pem, manager.sign_agent_csr(state, csr, node, dc, 77, NOW, "")


def test_signs_with_the_cluster_trust_domain_and_the_csr_sans(state):
    _, signed = _sign(state, AgentID(UNKNOWN_TRUST_DOMAIN, "dc1", "n1").uri(), dns=("localhost", "n1.example"),
                      ips=("127.0.0.1", "10.0.0.5"))
    expected = AgentID(state["trust_domain"], "dc1", "n1").uri()
    assert signed["AgentURI"] == expected and signed["Agent"] == "n1"
    cert = x509.load_pem_x509_certificate(signed["CertPEM"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [expected]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "n1.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "10.0.0.5"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    root = certs.load_cert(state["roots"][0]["RootCert"])
    assert certs.verifies(cert, root)
    assert rpc_peer_problem(cert.public_bytes(certs.serialization.Encoding.DER)) is None


@pytest.mark.parametrize("uri, node, dc, message", [
    ("spiffe://unknown.consul/agent/client/dc/dc1/id/other", "n1", "dc1", "not the agent identity"),
    ("spiffe://unknown.consul/agent/client/dc/dc2/id/n1", "n1", "dc1", "not the agent identity"),
    ("spiffe://unknown.consul/ns/default/dc/dc1/svc/web", "n1", "dc1", "not a SPIFFE agent identity"),
])
def test_refuses_other_identities(state, uri, node, dc, message):
    with pytest.raises(InvalidRequest, match=message):
        _sign(state, uri, node, dc)


def test_refuses_garbage_and_too_many_names(state):
    with pytest.raises(InvalidRequest):
        manager.sign_agent_csr(state, "not a csr", "n1", "dc1", 1, NOW, "")
    many = tuple(f"h{i}.example" for i in range(certs.MAX_CSR_SANS + 1))
    with pytest.raises(InvalidRequest, match="more than"):
        _sign(state, AgentID(UNKNOWN_TRUST_DOMAIN, "dc1", "n1").uri(), dns=many)


def test_service_leaf_is_not_an_rpc_client(state):
    uri = f"spiffe://{state['trust_domain']}/ns/default/dc/dc1/svc/web"
    _, csr = certs.make_csr(uri)
    leaf = manager.sign_csr(state, csr, "web", "dc1", 5, NOW, "")
    der = x509.load_pem_x509_certificate(leaf["CertPEM"].encode()).public_bytes(certs.serialization.Encoding.DER)
    assert "not an agent's" in (rpc_peer_problem(der) or "")
    assert rpc_peer_problem(b"junk") == "not a DER certificate"
