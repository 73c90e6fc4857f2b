"""The Connect CA across a cluster: one root everywhere, leaves OpenSSL accepts."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.harness.cluster import Cluster, retry

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
        # bad CA config: 400 with the reason, nothing changes
        with pytest.raises(Exception) as err:
            client.request("PUT", "/v1/connect/ca/configuration", {"Provider": "consul", "Config": {"PrivateKeyType": "dsa"}})
        assert getattr(err.value, "status", None) == 400 and "PrivateKeyType" in err.value.body
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
    except BaseException:
        print(cluster.logs())
        raise
    finally:
        cluster.stop()
