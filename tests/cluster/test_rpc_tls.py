"""Agent-to-server RPC over mutual TLS (-ca-file, -cert-file, -key-file)."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mesh.agent.rpc import RPCClient, RPCError
from tests.harness.cluster import KEY, Cluster, retry

pytestmark = pytest.mark.cluster


def _ca(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write(tmp_path, prefix: str, key, cert) -> tuple[str, str]:
    key_path, cert_path = tmp_path / f"{prefix}.key", tmp_path / f"{prefix}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


def test_cluster_and_client_over_mutual_tls(tmp_path):
    ca_key, ca_cert = _ca("mesh test CA")
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    key_path, cert_path = _write(tmp_path, "agent", *_leaf(ca_key, ca_cert, "agent"))
    tls = ["-ca-file", str(ca_path), "-cert-file", cert_path, "-key-file", key_path]
    cluster = Cluster(tmp_path / "c", 3, extra_args=tls)
    try:
        cluster.start()
        client = cluster.start_client("c1", tls)
        client.put("/v1/agent/service/register", {"Name": "tlsweb", "Port": 443})
        retry(lambda: cluster.agents[0].get("/v1/catalog/service/tlsweb?stale"), 10, 0.1, "registered over TLS")
        server_rpc = cluster.agents[0].rpc

        async def probe(context: ssl.SSLContext | None) -> str:
            rpc = RPCClient(KEY, ssl_context=context)
            try:
                await rpc.call(server_rpc, "Status.Ping", {}, timeout=3)
                return "ok"
            except RPCError as exc:
                return str(exc)
            finally:
                await rpc.close()

        rogue_ca_key, rogue_ca = _ca("rogue")
        rogue_key, rogue_cert = _write(tmp_path, "rogue", *_leaf(rogue_ca_key, rogue_ca, "rogue"))
        rogue = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
        rogue.check_hostname = False
        rogue.load_cert_chain(rogue_cert, rogue_key)
        good = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
        good.check_hostname = False
        good.load_cert_chain(cert_path, key_path)
        assert asyncio.run(probe(good)) == "ok"
        assert asyncio.run(probe(None)) != "ok"  # plaintext to a TLS port
        assert asyncio.run(probe(rogue)) != "ok"  # a certificate from another CA
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
