"""The Connect CA across a cluster: one root everywhere, leaves OpenSSL accepts."""

from __future__ import annotations

import asyncio
import datetime
import shutil
import subprocess
import sys
import time

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from mesh.agent.rpc import RPCClient, RPCError
from mesh.ca.manager import parse_time
from mesh.ca.x509 import make_csr
from tests.harness.cluster import KEY, Cluster, retry
from tests.harness.mtls import handshake

pytestmark = pytest.mark.cluster


def test_roots_survive_failover_and_leaves_verify_with_openssl(tmp_path):
    cluster = Cluster(tmp_path / "c", 3)
    try:
        cluster.start()
        roots = retry(lambda: cluster.agents[0].get("/v1/connect/ca/roots")["Roots"], 15, 0.1, "CA initialized")
        root_id = roots[0]["ID"]
        for agent in cluster.agents:
            retry(lambda a=agent: a.get("/v1/connect/ca/roots?stale")["ActiveRootID"] == root_id, 10, 0.1)
        leader = cluster.wait_leader()
        leader.kill()
        survivor = cluster.wait_leader(among=cluster.live())
        assert survivor.get("/v1/connect/ca/roots")["ActiveRootID"] == root_id  # no second root after failover
        client = cluster.start_client("c1")
        client.put("/v1/agent/service/register", {"Name": "web", "Port": 8080})
        leaf = retry(lambda: client.get("/v1/agent/connect/ca/leaf/web"), 10, 0.2, "leaf for web")
        trust_domain = survivor.get("/v1/connect/ca/roots")["TrustDomain"]
        assert leaf["ServiceURI"] == f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/web"
        assert "PRIVATE KEY" in leaf["PrivateKeyPEM"]
        again = client.get("/v1/agent/connect/ca/leaf/web")
        assert again["SerialNumber"] == leaf["SerialNumber"]  # served from the agent's cache
        metrics = retry(lambda: (lambda t: t if "mesh_ca_leaf_expiry_seconds{service=\"web\"}" in t else None)(
            client.get("/v1/agent/metrics?format=prometheus").decode()), 40, 0.5, "CA expiry metrics")
        assert "mesh_ca_root_expiry_seconds{root=" in metrics
        if shutil.which("openssl"):
            (tmp_path / "leaf.pem").write_text(leaf["CertPEM"])
            pem, _ = client.request("GET", "/v1/agent/connect/ca/roots?pem=true")
            (tmp_path / "roots.pem").write_bytes(pem)
            out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem"), str(tmp_path / "leaf.pem")],
                                 capture_output=True, text=True, timeout=10)
            assert out.returncode == 0 and "OK" in out.stdout, out.stderr
            text = subprocess.run(["openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "leaf.pem")],
                                  capture_output=True, text=True, timeout=10).stdout
            assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        with pytest.raises(Exception) as err:
            client.get("/v1/agent/connect/ca/leaf/not-registered")
        assert getattr(err.value, "status", None) == 400
        # straight to a server, as a rogue agent would: garbage, and a CSR for a service c1 does not run
        db_csr = make_csr(f"spiffe://{trust_domain}/ns/default/dc/dc1/svc/db")[1]
        for args, reason in (({"csr": "garbage", "service": "web", "node": "c1"}, "PEM"),
                             ({"csr": db_csr, "service": "db", "node": "c1"}, "not registered"),
                             ({"csr": db_csr, "service": "web", "node": "c1"}, "does not match")):
            with pytest.raises(RPCError) as rpc_err:
                asyncio.run(_rpc(survivor.rpc, "ConnectCA.Sign", args))
            assert rpc_err.value.kind == "invalid" and reason in str(rpc_err.value), rpc_err.value
        # bad CA config: 400 with the reason, nothing changes
        for config, reason in (({"PrivateKeyType": "dsa"}, "PrivateKeyType"),
                               ({"LeafCertTTL": "1s"}, "LeafCertTTL must be between"),
                               ({"LeafCertTTL": "48h", "IntermediateCertTTL": "72h"}, "IntermediateCertTTL")):
            with pytest.raises(Exception) as err:
                client.request("PUT", "/v1/connect/ca/configuration", {"Provider": "consul", "Config": config})
            assert getattr(err.value, "status", None) == 400 and reason in err.value.body, err.value
        assert client.get("/v1/connect/ca/configuration")["Config"]["LeafCertTTL"] == "72h"
        assert survivor.get("/v1/connect/ca/roots")["ActiveRootID"] == root_id
        # forced rotation: both roots trusted, the old leaf still verifies, new leaves chain to the new root
        client.request("PUT", "/v1/connect/ca/configuration",
                       {"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
        after = retry(lambda: (lambda r: r if r["ActiveRootID"] != root_id else None)(
            client.get("/v1/agent/connect/ca/roots")), 10, 0.1, "rotated")
        assert len(after["Roots"]) == 2
        assert client.get("/v1/connect/ca/configuration")["Config"]["PrivateKeyBits"] == 384
        renewed = retry(lambda: (lambda lf: lf if lf["SerialNumber"] != leaf["SerialNumber"] else None)(
            client.get("/v1/agent/connect/ca/leaf/web")), 10, 0.1, "leaf re-issued after the root change")
        if shutil.which("openssl"):
            pem, _ = client.request("GET", "/v1/agent/connect/ca/roots?pem=true")
            (tmp_path / "roots2.pem").write_bytes(pem)
            for name, cert in (("old.pem", leaf["CertPEM"]), ("new.pem", renewed["CertPEM"])):
                (tmp_path / name).write_text(cert)
                out = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "roots2.pem"),
                                      str(tmp_path / name)], capture_output=True, text=True, timeout=10)
                assert out.returncode == 0, (name, out.stderr)
        assert [lf["Service"] for lf in client.get("/v1/agent/mesh/leaves")["Leaves"]] == ["web"]
        client.request("PUT", "/v1/agent/service/deregister/web")
        assert client.get("/v1/agent/mesh/leaves")["Leaves"] == []  # no longer renewed for a gone service
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


async def _rpc(address: str, method: str, args: dict) -> object:
    client = RPCClient(KEY)
    try:
        return await client.call(address, method, args, timeout=5)
    finally:
        await client.close()


def _verifies_against(leaf_pem: str, roots: list[dict]) -> bool:
    """The leaf chains to one of the roots, directly or through its cross-signed certificate."""
    blocks = [b + "-----END CERTIFICATE-----\n" for b in leaf_pem.split("-----END CERTIFICATE-----") if b.strip()]
    chain = [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    for root in roots:
        anchor = x509.load_pem_x509_certificate(root["RootCert"].encode())
        for issuer in [anchor, *chain[1:]]:
            try:
                chain[0].verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            if issuer is anchor:
                return True
            try:
                issuer.verify_directly_issued_by(anchor)
                return True
            except (ValueError, TypeError, InvalidSignature):
                continue
    return False


@pytest.mark.soak  # a minute of renewals: `make soak`
def test_short_leaves_renew_without_a_gap_through_automatic_root_rotations(tmp_path):
    """10-second leaves for a minute while the root (40 s) rotates on its own about
    every 15 s and the leader is SIGKILLed and restarted midway: every leaf a blocking
    query hands out is valid when it arrives, comes before the last one expires, and
    two sidecars holding the newest leaves (one of them trusting only the roots it saw
    a round earlier) always complete mTLS."""
    cluster = Cluster(tmp_path / "c", 3)
    try:
        cluster.start()
        client = cluster.start_client("c1")
        for name in ("web", "api"):
            client.put("/v1/agent/service/register", {"Name": name, "Port": 8080})
        retry(lambda: client.get("/v1/connect/ca/roots")["Roots"], 15, 0.2, "CA initialized")
        first_root = client.get("/v1/connect/ca/roots")["ActiveRootID"]
        client.request("PUT", "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {
            "LeafCertTTL": "10s", "IntermediateCertTTL": "30s", "RootCertTTL": "40s"}})
        roots = retry(lambda: (lambda r: r if r["ActiveRootID"] != first_root else None)(
            client.get("/v1/agent/connect/ca/roots")), 10, 0.1, "rotated to the 40 s root")
        roots_seen = {r["ID"] for r in roots["Roots"]}
        web = client.get("/v1/agent/connect/ca/leaf/web")
        api = retry(lambda: (lambda lf: lf if lf["ValidBefore"] < "2100" and
                             _verifies_against(lf["CertPEM"], roots["Roots"]) else None)(
            client.get("/v1/agent/connect/ca/leaf/api")), 10, 0.2, "api leaf from the new root")
        previous_roots_pem = "".join(r["RootCert"] for r in roots["Roots"])
        started, renewals, handshakes = time.monotonic(), 0, 0
        while time.monotonic() - started < 60:
            issued = time.time()
            new, headers = client.request(
                "GET", f"/v1/agent/connect/ca/leaf/web?index={web['ModifyIndex']}&wait=30s", timeout=40)
            arrived = time.time()
            assert int(headers["X-Consul-Index"]) == new["ModifyIndex"]
            if new["SerialNumber"] == web["SerialNumber"]:
                continue
            renewals += 1
            valid_after = parse_time(new["ValidAfter"])
            valid_before = parse_time(new["ValidBefore"])
            now = datetime.datetime.fromtimestamp(arrived, datetime.UTC)
            assert valid_after <= now < valid_before, new
            old_before = parse_time(web["ValidBefore"])
            # no gap: the next leaf is here by the previous one's 90% mark (1 s before expiry), give or take
            assert now <= old_before - datetime.timedelta(seconds=0.5), (web, new)
            current = client.get("/v1/agent/connect/ca/roots")
            roots_seen |= {r["ID"] for r in current["Roots"]}
            assert _verifies_against(new["CertPEM"], current["Roots"])
            api = client.get("/v1/agent/connect/ca/leaf/api")
            roots_pem = "".join(r["RootCert"] for r in current["Roots"])
            peer = handshake(tmp_path, new, roots_pem, api, previous_roots_pem)
            assert ("URI", api["ServiceURI"]) in peer["subjectAltName"]
            handshake(tmp_path, api, previous_roots_pem, new, roots_pem)
            handshakes += 2
            previous_roots_pem = roots_pem
            web = new
            assert arrived - issued < 31
            if renewals == 3:
                killed = cluster.wait_leader()
                killed.kill()  # SIGKILL the leader mid-run: renewals and rotations go on
            elif renewals == 5:
                killed.start()  # back on its data-dir
        assert renewals >= 6, renewals  # a 10 s leaf renews every 6-9 s
        final = client.get("/v1/agent/connect/ca/roots")
        assert len(roots_seen) >= 5, roots_seen  # the first, the 40 s root and automatic rotations after it
        assert len(final["Roots"]) < len(roots_seen)  # expired and rotated-out roots were pruned
        assert first_root in {r["ID"] for r in final["Roots"]}  # its 72 h leaves may still be out there
        rotations = 0.0
        for server in cluster.live():
            for line in server.get("/v1/agent/metrics?format=prometheus").decode().splitlines():
                if line.startswith("mesh_ca_rotations_total "):
                    rotations += float(line.split()[1])
        assert rotations >= 1  # the new leader rotated too (the old one's count died with it)
        assert all(s.get("/v1/connect/ca/roots?stale")["ActiveRootID"] == final["ActiveRootID"]
                   for s in cluster.live())
        leaves = client.get("/v1/agent/mesh/leaves")["Leaves"]
        assert {lf["Service"] for lf in leaves} == {"web", "api"} and not any(lf["LastError"] for lf in leaves)
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()


def _status(agent) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mesh.agent.cli.main", "connect", "ca", "status",
                           "-http-addr", agent.http], capture_output=True, text=True, timeout=30)


def test_with_every_server_down_the_agent_serves_its_cache_and_status_reports_expiry(tmp_path):
    """Servers SIGKILLed, then the client restarted too: its leaf and roots come from
    its data-dir; status reports the leaf's expiry; servers back, the leaf renews."""
    cluster = Cluster(tmp_path / "c", 3)
    try:
        cluster.start()
        client = cluster.start_client("c1")
        client.put("/v1/agent/service/register", {"Name": "web", "Port": 8080})
        retry(lambda: client.get("/v1/connect/ca/roots")["Roots"], 15, 0.2, "CA initialized")
        client.request("PUT", "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {"LeafCertTTL": "10s"}})
        leaf = client.get("/v1/agent/connect/ca/leaf/web")
        healthy = _status(client)
        assert healthy.returncode == 0, healthy.stderr
        assert "active" in healthy.stdout and "web" in healthy.stdout and leaf["SerialNumber"] in healthy.stdout
        for server in cluster.agents:
            server.kill()
        cached, _ = client.request("GET", "/v1/agent/connect/ca/leaf/web")
        assert cached["SerialNumber"] == leaf["SerialNumber"]  # served from the cache, no server needed
        client.kill()
        client.start()  # an agent restarted while no server answers: leaf and roots from its data-dir
        retry(lambda: client.get("/v1/agent/self"), 15, 0.1, "client back")
        cached, _ = client.request("GET", "/v1/agent/connect/ca/leaf/web")
        assert cached["SerialNumber"] == leaf["SerialNumber"] and cached["PrivateKeyPEM"] == leaf["PrivateKeyPEM"]
        roots, headers = client.request("GET", "/v1/agent/connect/ca/roots", timeout=30)
        assert headers.get("X-Cache") == "HIT" and roots["Roots"]
        expired = retry(lambda: (lambda r: r if r.returncode == 1 and "EXPIRED" in r.stderr and
                                 "last renewal failed" in r.stdout else None)(
            _status(client)), 40, 1.0, "status reports the expired leaf and the failing renewal")
        assert "WARNING: leaf for web EXPIRED" in expired.stderr and "Traceback" not in expired.stderr
        assert "last renewal failed" in expired.stdout and "Root " in expired.stdout  # roots from the agent's copy
        for server in cluster.agents:
            server.start()  # same data-dirs
        cluster.wait_leader()
        renewed = retry(lambda: (lambda lf: lf if lf["SerialNumber"] != leaf["SerialNumber"] else None)(
            client.get("/v1/agent/connect/ca/leaf/web")), 40, 0.5, "renewed once servers are back")
        assert parse_time(renewed["ValidBefore"]) > \
            datetime.datetime.now(datetime.UTC)
        retry(lambda: _status(client).returncode == 0, 20, 1.0, "status healthy again")
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
