"""auto_encrypt: a client with only the CA file gets its RPC certificate from the server."""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import time

import pytest

from mesh.agent.rpc import RPCClient, RPCError
from mesh.ca import agent_certs
from mesh.ca import x509 as certs
from tests.harness.cluster import KEY, Cluster, retry

pytestmark = pytest.mark.cluster


def _files(tmp_path) -> dict[str, str]:
    """An agent CA and a server certificate, as `mesh tls ca/cert create` make them."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = agent_certs.new_key()
    ca = agent_certs.agent_ca(ca_key, 1, now, 1)
    key = agent_certs.new_key()
    cert = agent_certs.agent_cert(agent_certs.cert_spec("server", "dc1", "consul"), key, ca, ca_key, 2, now, 1)
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "server.pem", "key": tmp_path / "server-key.pem"}
    out["ca"].write_text(agent_certs.cert_pem(ca))
    out["cert"].write_text(agent_certs.cert_pem(cert))
    out["key"].write_text(agent_certs.ec_key_pem(key))
    return {k: str(v) for k, v in out.items()}


def _json(tmp_path, name: str, body: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return str(path)


def _bare(ca_file: str) -> ssl.SSLContext:
    """TLS that verifies the server and presents no certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.check_hostname = False
    return ctx


async def _call(server: str, context: ssl.SSLContext, method: str, args: dict) -> tuple[str, str]:
    rpc = RPCClient(KEY, ssl_context=context)
    try:
        await rpc.call(server, method, args, timeout=3)
        return "ok", ""
    except RPCError as exc:
        return exc.kind, str(exc)
    finally:
        await rpc.close()


def test_auto_encrypt(tmp_path):
    files = _files(tmp_path)
    # short leaves, so the client's certificate renews (at about half of 10 s) during the test
    server_cfg = _json(tmp_path, "server.json", {"auto_encrypt": {"allow_tls": True},
                                                  "tls": {"internal_rpc": {"verify_incoming": True}},
                                                  "connect": {"ca_config": {"leaf_cert_ttl": "10s"}}})
    cluster = Cluster(tmp_path / "c", 1, extra_args=["-ca-file", files["ca"], "-cert-file", files["cert"],
                                                      "-key-file", files["key"], "-config-file", server_cfg])
    try:
        cluster.start()
        server = cluster.agents[0]
        client_cfg = _json(tmp_path, "client.json", {"auto_encrypt": {"tls": True, "dns_san": ["ae1.example"],
                                                                      "ip_san": ["127.0.0.2"]}})
        started = time.monotonic()
        client = cluster.start_client("ae1", ["-ca-file", files["ca"], "-config-file", client_cfg])
        client.put("/v1/agent/service/register", {"Name": "aeweb", "Port": 80})
        retry(lambda: server.get("/v1/catalog/service/aeweb"), 15, 0.1, "registration over auto_encrypt TLS")
        assert "auto_encrypt_certificate" in client.log_tail(200)
        assert time.monotonic() - started < 20

        # a client with neither a certificate nor auto_encrypt never reaches the catalog
        plain = cluster.start_client("plain")
        plain.put("/v1/agent/service/register", {"Name": "plainweb", "Port": 80})
        retry(lambda: "heartbeat_failed" in plain.log_tail(200), 10, 0.2, "the plain client's calls failing")
        assert server.get("/v1/catalog/service/plainweb") == []

        # TLS without a client certificate: AutoEncrypt.Sign and Status.Ping only
        bare = _bare(files["ca"])
        assert asyncio.run(_call(server.rpc, bare, "Status.Ping", {}))[0] == "ok"
        for method in ("Catalog.Apply", "Read", "ACL.Resolve", "No.Such"):
            kind, text = asyncio.run(_call(server.rpc, bare, method, {}))
            assert kind == "denied" and "no client certificate" in text, (method, kind, text)
        # another node's identity is not signed
        _, csr = certs.make_agent_csr("spiffe://unknown.consul/agent/client/dc/dc1/id/someone-else")
        kind, text = asyncio.run(_call(server.rpc, bare, "AutoEncrypt.Sign",
                                       {"csr": csr, "node": "ae1", "dc": "dc1", "token": ""}))
        assert kind == "invalid" and "not the agent identity" in text, text
        kind, text = asyncio.run(_call(server.rpc, bare, "AutoEncrypt.Sign",
                                       {"csr": "x" * 100_000, "node": "ae1", "dc": "dc1"}))
        assert kind == "invalid" and "larger than" in text

        # the certificate a client gets works for RPC; a service's Connect leaf (same
        # roots) does not open the RPC port
        key_pem, csr = certs.make_agent_csr("spiffe://unknown.consul/agent/client/dc/dc1/id/probe")
        reply = asyncio.run(_sign(server.rpc, bare, csr, "probe"))
        assert reply["agent_uri"].endswith("/agent/client/dc/dc1/id/probe")
        assert reply["roots"] and reply["manual_ca_pems"]
        agent_ctx = _bare(files["ca"])
        (tmp_path / "probe.pem").write_text(reply["cert_pem"])
        (tmp_path / "probe.key").write_text(key_pem)
        agent_ctx.load_cert_chain(tmp_path / "probe.pem", tmp_path / "probe.key")
        kind, text = asyncio.run(_call(server.rpc, agent_ctx, "Read", {"q": "ca.roots", "p": {}, "o": {}}))
        assert kind == "ok", text
        leaf = client.get("/v1/agent/connect/ca/leaf/aeweb")
        (tmp_path / "leaf.pem").write_text(leaf["CertPEM"])
        (tmp_path / "leaf.key").write_text(leaf["PrivateKeyPEM"])
        leaf_ctx = _bare(files["ca"])
        leaf_ctx.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
        kind, _ = asyncio.run(_call(server.rpc, leaf_ctx, "Status.Ping", {}))
        assert kind == "transport"

        # renewed at about half its life; new connections use the new certificate
        retry(lambda: client.log_tail(400).count("auto_encrypt_certificate") >= 2, 15, 0.2, "a renewal")
        client.put("/v1/agent/service/register", {"Name": "aeweb2", "Port": 81})
        retry(lambda: server.get("/v1/catalog/service/aeweb2"), 15, 0.1, "registration after the renewal")
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


async def _sign(server: str, context: ssl.SSLContext, csr: str, node: str) -> dict:
    rpc = RPCClient(KEY, ssl_context=context)
    try:
        return await rpc.call(server, "AutoEncrypt.Sign", {"csr": csr, "node": node, "dc": "dc1", "token": ""},
                              timeout=5)
    finally:
        await rpc.close()
