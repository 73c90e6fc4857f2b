"""/v1/txn on a real dev agent, held to Consul's documented answers (api-docs/txn.mdx,
agent/txn_endpoint.go): every KV verb and its result, all-or-nothing failure with a 409
naming each failing operation, read-only transactions, and the request limits.

mesh's transactions hold KV operations only: a Node/Service/Check operation is a 400
(Consul would run it). The dev agent is shared: every test works under its own prefix.
"""

from __future__ import annotations

import base64

import pytest

from tests.harness.kvapi import b64, call, kv_path, new_session, unique

KV_RESULT_FIELDS = {"Key", "Flags", "Value", "CreateIndex", "ModifyIndex", "LockIndex"}


def txn(dev, ops: list, expect: int = 200):
    reply = call(dev, "PUT", "/v1/txn", ops)
    assert reply.status == expect, (reply.status, reply.text)
    return reply


def op(verb: str, key: str, **fields) -> dict:
    return {"KV": {"Verb": verb, "Key": key, **fields}}


def kv(dev, key: str) -> dict | None:
    reply = call(dev, "GET", kv_path(key))
    if reply.status == 404:
        return None
    return reply.json[0]


def session_of(result: dict) -> str:
    """The result's Session, "" when unlocked (whether omitted, as Consul does, or empty;
    test_results_omit_an_empty_session holds mesh to the omission)."""
    return str(result.get("Session") or "")


def results(body: dict) -> list[dict]:
    assert set(body) == {"Results", "Errors"}
    assert body["Errors"] is None
    return [r["KV"] for r in body["Results"]]


def test_every_kv_verb_and_its_result(dev):
    p = unique("txn")
    sid = new_session(dev, LockDelay="0s")

    # writes: set, cas (create-only with index 0), lock; check-not-exists adds no result
    body = txn(dev, [
        op("set", p + "a", Value=b64("1"), Flags=3),
        op("cas", p + "b", Value=b64("2"), Index=0),
        op("lock", p + "c", Value=b64("3"), Session=sid),
        op("check-not-exists", p + "d"),
        op("set", p + "sub/x", Value=b64("x")),
    ]).json
    a, b, c, sub = results(body)
    assert [r["Key"] for r in (a, b, c, sub)] == [p + "a", p + "b", p + "c", p + "sub/x"]
    assert all(r["Value"] is None for r in (a, b, c, sub)), "write results carry no value"
    assert set(a) - {"Session"} == KV_RESULT_FIELDS and a["Flags"] == 3 and a["LockIndex"] == 0
    assert c["Session"] == sid and c["LockIndex"] == 1 and set(c) == KV_RESULT_FIELDS | {"Session"}
    assert not session_of(a) and not session_of(b)
    index = a["ModifyIndex"]
    assert all(r["CreateIndex"] == r["ModifyIndex"] == index for r in (a, b, c, sub)), "one Raft index"
    assert kv(dev, p + "a")["Value"] == b64("1") and kv(dev, p + "c")["Session"] == sid

    # cas with the current index, check-index, check-session, unlock, get, get-tree
    body = txn(dev, [
        op("cas", p + "a", Value=b64("one"), Index=index, Flags=4),
        op("check-index", p + "b", Index=index),
        op("check-session", p + "c", Session=sid),
        op("unlock", p + "c", Value=b64("three"), Session=sid),
        op("get", p + "a"),
        op("get-tree", p + "sub/"),
    ]).json
    cas_a, check_b, check_c, unlock_c, get_a, tree_x = results(body)
    assert cas_a["Key"] == p + "a" and cas_a["Value"] is None and cas_a["Flags"] == 4
    assert cas_a["ModifyIndex"] > index and cas_a["CreateIndex"] == index
    assert check_b["Key"] == p + "b" and check_b["Value"] is None and check_b["ModifyIndex"] == index
    assert check_c["Key"] == p + "c" and check_c["Session"] == sid and check_c["Value"] is None
    assert unlock_c["Key"] == p + "c" and not session_of(unlock_c) and unlock_c["LockIndex"] == 1
    assert unlock_c["Value"] is None
    assert get_a["Value"] == b64("one"), "get sees the write made earlier in the same transaction"
    assert get_a["Flags"] == 4 and get_a["ModifyIndex"] == cas_a["ModifyIndex"]
    assert tree_x["Key"] == p + "sub/x" and tree_x["Value"] == b64("x")
    assert kv(dev, p + "c")["Value"] == b64("three") and "Session" not in kv(dev, p + "c")

    # deletes add no results
    b_index = kv(dev, p + "b")["ModifyIndex"]
    body = txn(dev, [
        op("delete", p + "a"),
        op("delete-tree", p + "sub/"),
        op("delete-cas", p + "b", Index=b_index),
    ]).json
    assert set(body) == {"Results", "Errors"} and body["Errors"] is None
    assert not body["Results"], body
    assert kv(dev, p + "a") is None and kv(dev, p + "b") is None and kv(dev, p + "sub/x") is None
    assert kv(dev, p + "c") is not None
    call(dev, "PUT", f"/v1/session/destroy/{sid}")


def test_results_omit_an_empty_session(dev):
    p = unique("nosess")
    (written,) = results(txn(dev, [op("set", p + "a", Value=b64("v"))]).json)
    (read,) = results(txn(dev, [op("get", p + "a")]).json)
    assert set(read) == KV_RESULT_FIELDS, read
    assert set(written) == KV_RESULT_FIELDS, written


def test_get_or_empty(dev):
    p = unique("goe")
    txn(dev, [op("set", p + "a", Value=b64("A"))])
    present, absent = results(txn(dev, [op("get-or-empty", p + "a"), op("get-or-empty", p + "nope")]).json)
    assert (present["Key"], present["Value"]) == (p + "a", b64("A"))
    assert absent["Key"] == p + "nope" and absent["Value"] is None


def test_get_tree_returns_every_key_under_the_prefix_with_values(dev):
    p = unique("tree")
    txn(dev, [op("set", p + k, Value=b64(k)) for k in ("b", "a", "c/d")])
    assert txn(dev, [op("set", p[:-1] + "-outside", Value=b64("no"))]).status == 200
    got = results(txn(dev, [op("get-tree", p)]).json)
    assert [(r["Key"], base64.b64decode(r["Value"])) for r in got] == [
        (p + "a", b"a"), (p + "b", b"b"), (p + "c/d", b"c/d")]


def test_a_failing_operation_applies_nothing(dev):
    p = unique("fail")
    sid = new_session(dev, LockDelay="0s")
    other = new_session(dev, LockDelay="0s")
    txn(dev, [op("set", p + "exists", Value=b64("old")), op("lock", p + "locked", Value=b64("l"), Session=other)])
    old = kv(dev, p + "exists")

    reply = txn(dev, [
        op("set", p + "exists", Value=b64("new")),                        # 0 fine
        op("cas", p + "exists", Value=b64("x"), Index=old["ModifyIndex"] - 1),  # 1 stale
        op("set", p + "new", Value=b64("n")),                             # 2 fine
        op("check-not-exists", p + "exists"),                             # 3 exists
        op("get", p + "missing"),                                         # 4 missing
        op("check-index", p + "exists", Index=1),                         # 5 wrong index
        op("check-session", p + "exists", Session=sid),                   # 6 not locked
        op("lock", p + "locked", Value=b64("x"), Session=sid),            # 7 held by other
        op("unlock", p + "locked", Value=b64("x"), Session=sid),          # 8 not the holder
        op("delete-cas", p + "exists", Index=1),                          # 9 stale
        op("delete", p + "exists"),                                       # 10 fine
    ], expect=409)
    assert reply.content_type == "application/json"
    body = reply.json
    assert set(body) == {"Results", "Errors"} and not body["Results"]
    errors = body["Errors"]
    assert [e["OpIndex"] for e in errors] == [1, 3, 4, 5, 6, 7, 8, 9], errors
    assert all(set(e) == {"OpIndex", "What"} and e["What"] for e in errors)
    for e in errors:
        failing_key = {4: p + "missing", 7: p + "locked", 8: p + "locked"}.get(e["OpIndex"], p + "exists")
        if e["OpIndex"] not in (5,):  # Consul's check-index text names the indexes, not the key
            assert failing_key in e["What"], e

    assert kv(dev, p + "exists") == old, "op 0 and op 10 were rolled back"
    assert kv(dev, p + "new") is None, "op 2 was rolled back"
    assert kv(dev, p + "locked")["Session"] == other
    for s in (sid, other):
        call(dev, "PUT", f"/v1/session/destroy/{s}")


def test_read_only_transaction(dev):
    p = unique("ro")
    txn(dev, [op("set", p + "a", Value=b64("A")), op("set", p + "b/c", Value=b64("C"), Flags=9)])
    reply = txn(dev, [op("get", p + "a"), op("get-tree", p + "b/"), op("check-not-exists", p + "z")])
    a, c = results(reply.json)
    assert (a["Key"], a["Value"]) == (p + "a", b64("A"))
    assert (c["Key"], c["Value"], c["Flags"]) == (p + "b/c", b64("C"), 9)
    assert reply.headers.get("X-Consul-KnownLeader") == "true", "read-only transactions report the leader"
    assert reply.headers.get("X-Consul-LastContact") is not None

    failed = txn(dev, [op("get", p + "a"), op("get", p + "nope")], expect=409).json
    assert not failed["Results"]
    assert [e["OpIndex"] for e in failed["Errors"]] == [1] and p + "nope" in failed["Errors"][0]["What"]

    for mode in ("stale", "consistent"):
        again = call(dev, "PUT", f"/v1/txn?{mode}", [op("get", p + "a")])
        assert again.status == 200 and again.json["Results"][0]["KV"]["Value"] == b64("A")


def test_sixty_four_operations_at_most(dev):
    p = unique("many")
    ok = txn(dev, [op("set", f"{p}{i:02d}", Value=b64(str(i))) for i in range(64)])
    assert len(results(ok.json)) == 64
    reply = call(dev, "PUT", "/v1/txn", [op("set", f"{p}x{i:02d}", Value=b64("v")) for i in range(65)])
    assert reply.status == 413
    assert reply.text.strip() == "Transaction contains too many operations (65 > 64)"
    assert kv(dev, p + "x00") is None


def test_bad_base64_is_400(dev):
    p = unique("b64")
    reply = call(dev, "PUT", "/v1/txn", [op("set", p + "ok", Value=b64("v")),
                                        op("set", p + "bad", Value="not base64!!")])
    assert reply.status == 400, (reply.status, reply.text)
    assert reply.text.startswith("Failed to parse body"), reply.text
    assert kv(dev, p + "ok") is None


def test_unknown_verb_is_409_naming_it(dev):
    p = unique("verb")
    reply = txn(dev, [op("set", p + "a", Value=b64("v")), op("frobnicate", p + "b")], expect=409)
    errors = reply.json["Errors"]
    assert [e["OpIndex"] for e in errors] == [1]
    assert "frobnicate" in errors[0]["What"]
    assert kv(dev, p + "a") is None


@pytest.mark.parametrize("other", [
    {"Node": {"Verb": "set", "Node": {"Node": "txn-node", "Address": "10.0.0.1"}}},
    {"Service": {"Verb": "get", "Node": "txn-node", "Service": {"ID": "web"}}},
    {"Check": {"Verb": "get", "Check": {"Node": "txn-node", "CheckID": "c"}}},
], ids=["node", "service", "check"])
def test_catalog_operations_are_refused(dev, other):
    """A mesh limitation, not Consul's: its transactions hold KV operations only."""
    p = unique("cat")
    reply = call(dev, "PUT", "/v1/txn", [op("set", p + "a", Value=b64("v")), other])
    assert reply.status == 400, (reply.status, reply.text)
    assert kv(dev, p + "a") is None


@pytest.mark.parametrize("body", [b"", b"{", b'{"KV": {}}', b"[1]"], ids=["empty", "broken", "object", "number"])
def test_malformed_bodies_are_400(dev, body):
    assert call(dev, "PUT", "/v1/txn", raw=body).status == 400


def test_a_value_over_512_kib_is_413(dev):
    p = unique("bigtxn")
    reply = call(dev, "PUT", "/v1/txn", [op("set", p + "big", Value=b64(b"x" * (512 * 1024 + 1)))])
    assert reply.status == 413, (reply.status, reply.text[:200])
    assert "too large" in reply.text
    assert kv(dev, p + "big") is None
