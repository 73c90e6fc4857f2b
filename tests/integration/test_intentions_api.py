"""The intentions HTTP API on a dev agent: both forms, match, check, errors."""

from __future__ import annotations

import pytest

from tests.harness.cluster import HTTPError


def test_legacy_and_exact_forms(dev):
    created = dev.request("POST", "/v1/connect/intentions",
                          {"SourceName": "lweb", "DestinationName": "ldb", "Action": "allow", "Meta": {"team": "a"}})[0]
    iid = created["ID"]
    got = dev.get(f"/v1/connect/intentions/{iid}")
    assert got["Precedence"] == 9 and got["Meta"] == {"team": "a"} and got["CreatedAt"]
    dev.request("PUT", f"/v1/connect/intentions/{iid}",
                {"SourceName": "lweb", "DestinationName": "ldb", "Action": "deny"})
    assert dev.get(f"/v1/connect/intentions/{iid}")["Action"] == "deny"
    exact = dev.get("/v1/connect/intentions/exact?source=lweb&destination=ldb")
    assert exact["ID"] == iid
    assert dev.put("/v1/connect/intentions/exact?source=*&destination=ldb", {"Action": "allow"}) is True
    matched = dev.get("/v1/connect/intentions/match?by=destination&name=ldb")["ldb"]
    assert [(m["SourceName"], m["Precedence"]) for m in matched][:2] == [("lweb", 9), ("*", 8)]
    assert dev.get("/v1/connect/intentions/check?source=other&destination=ldb") == {"Allowed": True}
    assert dev.get("/v1/connect/intentions/check?source=lweb&destination=ldb") == {"Allowed": False}
    dev.request("DELETE", "/v1/connect/intentions/exact?source=*&destination=ldb")
    dev.request("DELETE", f"/v1/connect/intentions/{iid}")
    with pytest.raises(HTTPError) as err:
        dev.get(f"/v1/connect/intentions/{iid}")
    assert err.value.status == 404


@pytest.mark.parametrize(
    "method, path, body, status",
    [
        ("POST", "/v1/connect/intentions", {"SourceName": "a*", "DestinationName": "b", "Action": "allow"}, 400),
        ("POST", "/v1/connect/intentions", {"SourceName": "a", "DestinationName": "b", "Action": "perhaps"}, 400),
        ("GET", "/v1/connect/intentions/exact?source=a", None, 400),
        ("GET", "/v1/connect/intentions/exact?source=nope&destination=nope", None, 404),
        ("GET", "/v1/connect/intentions/match?by=sideways&name=x", None, 400),
        ("DELETE", "/v1/connect/intentions/not-an-id", None, 404),
        ("POST", "/v1/agent/connect/authorize", {"ClientCertURI": "spiffe://x/ns/default/dc/dc1/svc/a"}, 400),
        ("POST", "/v1/agent/connect/authorize", {"Target": "db", "ClientCertURI": "https://nope"}, 400),
    ],
)
def test_bad_requests(dev, method, path, body, status):
    with pytest.raises(HTTPError) as err:
        dev.request(method, path, body)
    assert err.value.status == status


def test_py_consul_connect_calls_on_the_agent(dev):
    """py-consul's whole agent-side Connect surface with a sidecar: register with
    `connect=`, the connect view, authorize (which it sends as PUT), leaf and roots."""
    import consul

    c = consul.Consul(port=dev.http_port)
    c.agent.service.register("api", service_id="api", port=19999,
                             connect={"SidecarService": {"Proxy": {"Upstreams": [
                                 {"DestinationName": "db", "LocalBindPort": 19191}]}}})
    sidecar = c.agent.services()["api-sidecar-proxy"]
    assert sidecar["Kind"] == "connect-proxy" and sidecar["Proxy"]["DestinationServiceID"] == "api"
    assert sidecar["Proxy"]["Upstreams"][0]["DestinationName"] == "db"
    from tests.harness.cluster import retry

    entries = retry(lambda: c.health.connect("api")[1], 10, 0.05, "the sidecar in the catalog (anti-entropy)")
    assert [e["Service"]["ID"] for e in entries] == ["api-sidecar-proxy"]
    td = c.agent.connect.ca.roots()["TrustDomain"]
    verdict = c.agent.connect.authorize("api", f"spiffe://{td}/ns/default/dc/dc1/svc/web", "00:01")
    assert set(verdict) >= {"Authorized", "Reason"}
    assert c.agent.connect.ca.leaf("api")["ServiceURI"].endswith("/svc/api")
    c.agent.service.deregister("api")
    assert "api-sidecar-proxy" not in c.agent.services()
