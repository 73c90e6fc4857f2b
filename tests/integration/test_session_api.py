"""/v1/session/* on a real dev agent, held to Consul's documented answers
(api-docs/session.mdx, agent/session_endpoint.go, ../shared/reference/consul.md §1.6).

Create with every field and its defaults, destroy, renew, info/node/list (blocking), what
a session's end does to the keys it holds (release or delete, lock delay), the TTL
clock, and a linked health check going critical. The dev agent is shared by the
integration package: tests look only at their own sessions and keys.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.harness.cluster import dev_agent, retry
from tests.harness.kvapi import Pending, call, kv_path, new_session, node_name, unique

SESSION_FIELDS = {"ID", "Name", "Node", "LockDelay", "Behavior", "TTL", "NodeChecks", "ServiceChecks",
                  "CreateIndex", "ModifyIndex"}


def info(dev, sid: str) -> list:
    reply = call(dev, "GET", f"/v1/session/info/{sid}")
    assert reply.status == 200, (reply.status, reply.text)
    assert reply.index >= 1
    return reply.json


def only(dev, sid: str) -> dict:
    (entry,) = info(dev, sid)
    return entry


def destroy(dev, sid: str) -> None:
    assert call(dev, "PUT", f"/v1/session/destroy/{sid}").json is True


def kv(dev, key: str) -> dict | None:
    reply = call(dev, "GET", kv_path(key))
    if reply.status == 404:
        return None
    assert reply.status == 200, (reply.status, reply.text)
    return reply.json[0]


def acquire(dev, key: str, sid: str, value: bytes = b"v") -> bool:
    return call(dev, "PUT", kv_path(key, f"acquire={sid}"), raw=value).json  # type: ignore[no-any-return]


# ---- create ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, {}], ids=["no-body", "empty-object"])
def test_create_defaults(dev, body):
    reply = call(dev, "PUT", "/v1/session/create", body)
    assert reply.status == 200 and reply.content_type == "application/json"
    assert set(reply.json) == {"ID"}
    sid = reply.json["ID"]
    assert str(uuid.UUID(sid)) == sid
    got = only(dev, sid)
    assert set(got) == SESSION_FIELDS, "Checks is omitted when serfHealth is the only check"
    assert got["ID"] == sid and got["Name"] == ""
    assert got["Node"] == node_name(dev), "Node defaults to the agent's node"
    assert got["LockDelay"] == 15_000_000_000, "15s by default, shown in nanoseconds"
    assert got["Behavior"] == "release" and got["TTL"] == ""
    assert got["NodeChecks"] == ["serfHealth"] and got["ServiceChecks"] is None
    assert got["CreateIndex"] == got["ModifyIndex"] >= 1
    destroy(dev, sid)


def test_create_with_every_field(dev):
    node = node_name(dev)
    sid = new_session(dev, Name="my-service-lock", Node=node, LockDelay="20s", NodeChecks=["serfHealth"],
                      Behavior="delete", TTL="30s")
    got = only(dev, sid)
    assert got["Name"] == "my-service-lock" and got["Node"] == node
    assert got["LockDelay"] == 20_000_000_000 and got["Behavior"] == "delete" and got["TTL"] == "30s"
    assert got["NodeChecks"] == ["serfHealth"]
    destroy(dev, sid)


def test_field_names_are_case_insensitive(dev):
    sid = new_session(dev, name="lower", lockdelay="3s", behavior="delete", ttl="15s")
    got = only(dev, sid)
    assert (got["Name"], got["LockDelay"], got["Behavior"], got["TTL"]) == ("lower", 3_000_000_000, "delete", "15s")
    destroy(dev, sid)


@pytest.mark.parametrize("lock_delay, nanoseconds", [
    ("15s", 15_000_000_000),
    ("0.001s", 1_000_000),
    ("1m", 60_000_000_000),
    ("0s", 0),
    (2_000_000_000, 2_000_000_000),  # a number is nanoseconds ...
    (5, 5_000_000_000),              # ... unless it is below 1000: then it means seconds
    (59, 59_000_000_000),
    (1000, 1000),
])
def test_lock_delay_forms(dev, lock_delay, nanoseconds):
    """agent/session_endpoint.go FixupLockDelay: strings are Go durations, numbers are
    nanoseconds, and a value under 1000 (ns) is taken as seconds."""
    sid = new_session(dev, LockDelay=lock_delay)
    assert only(dev, sid)["LockDelay"] == nanoseconds
    destroy(dev, sid)


@pytest.mark.parametrize("checks, node_checks", [
    (None, ["serfHealth"]),
    ([], None),
    (["serfHealth"], ["serfHealth"]),
], ids=["no-Checks-key", "empty-list", "explicit"])
def test_checks_defaults(dev, checks, node_checks):
    """No Checks key: the serfHealth default; an empty list takes it out (FixupChecks)."""
    body = {"Name": "checks"} if checks is None else {"Name": "checks", "Checks": checks}
    sid = new_session(dev, **body)
    got = only(dev, sid)
    assert (got.get("NodeChecks") or None) == node_checks
    assert not got.get("Checks") or got["Checks"] == node_checks
    assert not got.get("ServiceChecks")
    destroy(dev, sid)


def test_create_for_an_unknown_node_fails(dev):
    node = "no-such-node-" + uuid.uuid4().hex[:6]
    reply = call(dev, "PUT", "/v1/session/create", {"Node": node})
    assert reply.status in (400, 404, 500), (reply.status, reply.text)
    assert "node" in reply.text.lower(), reply.text
    assert all(s["Node"] != node for s in call(dev, "GET", "/v1/session/list").json)


def test_invalid_behavior_is_rejected(dev):
    reply = call(dev, "PUT", "/v1/session/create", {"Behavior": "explode"})
    assert reply.status == 400, (reply.status, reply.text)
    assert "explode" in reply.text


@pytest.mark.parametrize("ttl", ["10s", "1m", "90m", "24h", "86400s"])
def test_ttl_in_range(dev, ttl):
    sid = new_session(dev, TTL=ttl)
    assert only(dev, sid)["TTL"] == ttl
    destroy(dev, sid)


@pytest.mark.parametrize("ttl", ["5s", "9.999s", "25h", "86401s"])
def test_ttl_out_of_range(dev, ttl):
    reply = call(dev, "PUT", "/v1/session/create", {"TTL": ttl})
    assert reply.status in (400, 500), (reply.status, reply.text)
    assert "Invalid Session TTL" in reply.text, reply.text


@pytest.mark.parametrize("body", [{"LockDelay": "soon"}, "not an object", ["a", "list"]])
def test_malformed_create_bodies_are_400(dev, body):
    """Consul: `Request decode failed: ...` with a 400 (the body does not decode)."""
    reply = call(dev, "PUT", "/v1/session/create", body)
    assert reply.status == 400, (reply.status, reply.text)


def test_an_unparsable_ttl_is_refused(dev):
    """Consul checks the TTL on the server: `Session TTL 'ten seconds' invalid: ...`."""
    reply = call(dev, "PUT", "/v1/session/create", {"TTL": "ten seconds"})
    assert reply.status in (400, 500), (reply.status, reply.text)
    assert "ten seconds" in reply.text, reply.text


# ---- destroy, renew, info, node, list -------------------------------------------------


def test_destroy_is_idempotent_and_needs_a_uuid(dev):
    sid = new_session(dev, Name="to-destroy")
    for _ in range(2):
        reply = call(dev, "PUT", f"/v1/session/destroy/{sid}")
        assert reply.status == 200 and reply.json is True
    assert info(dev, sid) == []
    assert call(dev, "PUT", f"/v1/session/destroy/{uuid.uuid4()}").json is True, "unknown: still true"
    assert call(dev, "PUT", "/v1/session/destroy/not-a-uuid").status == 400
    assert call(dev, "PUT", "/v1/session/destroy/").status == 400, "Missing session"


def test_renew(dev):
    missing = str(uuid.uuid4())
    reply = call(dev, "PUT", f"/v1/session/renew/{missing}")
    assert reply.status == 404
    assert missing in reply.text

    sid = new_session(dev, Name="renewed", TTL="10s")
    reply = call(dev, "PUT", f"/v1/session/renew/{sid}")
    assert reply.status == 200
    (entry,) = reply.json
    assert entry["ID"] == sid and entry["Name"] == "renewed"
    assert entry["TTL"].endswith("s") and float(entry["TTL"][:-1]) >= 10, "the server may raise, never lower, the TTL"
    assert set(entry) >= SESSION_FIELDS - {"NodeChecks", "ServiceChecks"}

    plain = new_session(dev, Name="no-ttl")
    reply = call(dev, "PUT", f"/v1/session/renew/{plain}")
    assert reply.status == 200 and reply.json[0]["ID"] == plain and reply.json[0]["TTL"] == ""
    destroy(dev, sid)
    destroy(dev, plain)
    assert call(dev, "PUT", f"/v1/session/renew/{sid}").status == 404, "a destroyed session cannot be renewed"


def test_info_node_and_list(dev):
    node = node_name(dev)
    sid = new_session(dev, Name="listed")
    assert info(dev, str(uuid.uuid4())) == [], "an unknown session is an empty list, not a 404"

    listed = call(dev, "GET", "/v1/session/list")
    assert listed.status == 200 and listed.index >= 1
    mine = [s for s in listed.json if s["ID"] == sid]
    assert mine == info(dev, sid)

    by_node = call(dev, "GET", f"/v1/session/node/{node}")
    assert by_node.status == 200 and by_node.index >= 1
    assert sid in [s["ID"] for s in by_node.json]
    assert all(s["Node"] == node for s in by_node.json)

    nobody = call(dev, "GET", "/v1/session/node/no-such-node")
    assert nobody.status == 200 and nobody.json == [] and nobody.index >= 1
    destroy(dev, sid)
    assert sid not in [s["ID"] for s in call(dev, "GET", "/v1/session/list").json]


def test_blocking_list_wakes_on_a_create(dev):
    first = call(dev, "GET", "/v1/session/list")
    pending = Pending(lambda: call(dev, "GET", f"/v1/session/list?index={first.index}&wait=5s", timeout=15))
    pending.assert_pending(0.5)
    assert call(dev, "PUT", kv_path(unique("noise") + "k"), raw=b"x").status == 200
    pending.assert_pending(0.4)
    sid = new_session(dev, Name="wakes-the-list")
    reply = pending.result(timeout=3)
    assert time.monotonic() - pending.started < 4.5, "the create, not the wait, ended the read"
    assert reply.status == 200 and reply.index > first.index
    assert sid in [s["ID"] for s in reply.json]
    destroy(dev, sid)


def test_blocking_info_wakes_on_destroy(dev):
    sid = new_session(dev, Name="watched")
    first = call(dev, "GET", f"/v1/session/info/{sid}")
    pending = Pending(lambda: call(dev, "GET", f"/v1/session/info/{sid}?index={first.index}&wait=5s", timeout=15))
    pending.assert_pending(0.5)
    destroy(dev, sid)
    reply = pending.result(timeout=3)
    assert reply.status == 200 and reply.json == [] and reply.index > first.index


def test_blocking_node_sessions_wake_on_a_create(dev):
    node = node_name(dev)
    first = call(dev, "GET", f"/v1/session/node/{node}")
    pending = Pending(lambda: call(dev, "GET", f"/v1/session/node/{node}?index={first.index}&wait=5s", timeout=15))
    pending.assert_pending(0.5)
    sid = new_session(dev, Name="on-node")
    reply = pending.result(timeout=3)
    assert reply.index > first.index and sid in [s["ID"] for s in reply.json]
    destroy(dev, sid)


# ---- what a session's end does to its locks -------------------------------------------


def test_behavior_delete_deletes_held_keys_on_destroy(dev):
    prefix = unique("sdel")
    sid = new_session(dev, Behavior="delete", LockDelay="0s")
    assert acquire(dev, prefix + "held", sid) is True
    assert call(dev, "PUT", kv_path(prefix + "free"), raw=b"v").json is True
    destroy(dev, sid)
    assert kv(dev, prefix + "held") is None, "delete behaviour removes the keys the session held"
    assert kv(dev, prefix + "free") is not None, "keys it did not hold stay"


def test_behavior_release_keeps_keys_and_lock_index(dev):
    prefix = unique("srel")
    sid = new_session(dev, Behavior="release", LockDelay="0s")
    assert acquire(dev, prefix + "held", sid, b"kept") is True
    before = kv(dev, prefix + "held")
    assert before["Session"] == sid and before["LockIndex"] == 1
    destroy(dev, sid)
    after = kv(dev, prefix + "held")
    assert after is not None and "Session" not in after
    assert after["LockIndex"] == 1 and after["Value"] == before["Value"]
    assert after["ModifyIndex"] > before["ModifyIndex"]


def test_a_critical_linked_check_invalidates_the_session(dev):
    """Invalidation when a linked node check goes critical (consul.md §1.6)."""
    check_id = "sess-ttl-" + uuid.uuid4().hex[:6]
    node = node_name(dev)
    assert call(dev, "PUT", "/v1/agent/check/register", {"ID": check_id, "Name": check_id, "TTL": "60s"}).status == 200
    try:
        assert call(dev, "PUT", f"/v1/agent/check/pass/{check_id}").status == 200
        retry(lambda: any(c["CheckID"] == check_id and c["Status"] == "passing"
                          for c in call(dev, "GET", f"/v1/health/node/{node}").json), 10, 0.05,
              "the passing check in the catalog")
        sid = new_session(dev, NodeChecks=["serfHealth", check_id], LockDelay="0s")
        assert set(only(dev, sid)["NodeChecks"]) == {"serfHealth", check_id}
        key = unique("scrit") + "k"
        assert acquire(dev, key, sid) is True
        assert call(dev, "PUT", f"/v1/agent/check/fail/{check_id}").status == 200
        retry(lambda: info(dev, sid) == [], 10, 0.05, "the session invalidated by its critical check")
        assert "Session" not in kv(dev, key)
    finally:
        call(dev, "PUT", f"/v1/agent/check/deregister/{check_id}")


def test_service_checks_are_kept_and_a_critical_one_invalidates(dev):
    svc = "sess-svc-" + uuid.uuid4().hex[:6]
    check_id = f"{svc}-ttl"
    node = node_name(dev)
    assert call(dev, "PUT", "/v1/agent/service/register",
                {"Name": svc, "ID": svc, "Port": 1, "Check": {"CheckID": check_id, "TTL": "60s"}}).status == 200
    try:
        assert call(dev, "PUT", f"/v1/agent/check/pass/{check_id}").status == 200
        retry(lambda: any(c["CheckID"] == check_id and c["Status"] == "passing"
                          for c in call(dev, "GET", f"/v1/health/node/{node}").json), 10, 0.05,
              "the passing service check in the catalog")
        sid = new_session(dev, ServiceChecks=[{"ID": check_id}], LockDelay="0s")
        got = only(dev, sid)
        assert [c["ID"] for c in got["ServiceChecks"]] == [check_id]
        assert set(got["ServiceChecks"][0]) <= {"ID", "Namespace"}
        assert got["NodeChecks"] == ["serfHealth"], "ServiceChecks do not replace the serfHealth default"
        key = unique("ssvc") + "k"
        assert acquire(dev, key, sid) is True
        assert call(dev, "PUT", f"/v1/agent/check/fail/{check_id}").status == 200
        retry(lambda: info(dev, sid) == [], 10, 0.05, "the session invalidated by its critical service check")
        assert "Session" not in kv(dev, key)
    finally:
        call(dev, "PUT", f"/v1/agent/service/deregister/{svc}")


def test_a_session_cannot_be_created_on_a_critical_check(dev):
    check_id = "sess-crit-" + uuid.uuid4().hex[:6]
    node = node_name(dev)
    assert call(dev, "PUT", "/v1/agent/check/register", {"ID": check_id, "Name": check_id, "TTL": "60s"}).status == 200
    try:
        assert call(dev, "PUT", f"/v1/agent/check/fail/{check_id}").status == 200
        retry(lambda: any(c["CheckID"] == check_id and c["Status"] == "critical"
                          for c in call(dev, "GET", f"/v1/health/node/{node}").json), 10, 0.05,
              "the critical check in the catalog")
        reply = call(dev, "PUT", "/v1/session/create", {"NodeChecks": [check_id]})
        assert reply.status >= 400 and check_id in reply.text, (reply.status, reply.text)
    finally:
        call(dev, "PUT", f"/v1/agent/check/deregister/{check_id}")


def test_ttl_expiry_invalidates_the_session_and_releases_its_lock(tmp_path):
    """A TTL session that nobody renews is gone within 2xTTL (Consul's reaper may wait
    that long), not before its TTL, and the key it held is released. An agent of its
    own with -session-ttl-min 1s (Consul's session_ttl_min) keeps the wait short."""
    agent = dev_agent(tmp_path, "ttl", extra=["-session-ttl-min", "1s"])
    try:
        key = unique("sttl") + "k"
        sid = new_session(agent, TTL="2s", LockDelay="0s")
        created = time.monotonic()
        assert acquire(agent, key, sid) is True
        retry(lambda: info(agent, sid) == [], 8, 0.05, "the unrenewed TTL session to be invalidated")
        took = time.monotonic() - created
        assert 2.0 <= took <= 4.8, f"invalidated after {took:.2f}s, want between TTL and 2xTTL (+ polling)"
        released = kv(agent, key)
        assert released is not None and "Session" not in released and released["LockIndex"] == 1
        assert call(agent, "PUT", f"/v1/session/renew/{sid}").status == 404
    finally:
        agent.kill()
