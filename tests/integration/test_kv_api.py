"""/v1/kv on a real dev agent, parameter by parameter, held to Consul's documented answers
(api-docs/kv.mdx, agent/kvs_endpoint.go, ../shared/reference/consul.md §1.0, §1.5, §2).

The dev agent is shared by the integration package: every test writes under a prefix of
its own (`unique`). Blocking reads run in a thread (`Pending`): each test proves the read
is still waiting before it makes the write that must wake it, so a read that returns
for any other reason (timeout, a spurious wake-up with a new index) fails the test.
"""

from __future__ import annotations

import time

import pytest

from tests.harness.cluster import retry
from tests.harness.kvapi import Pending, b64, call, datacenter, kv_path, new_session, unique

MAX_VALUE = 512 * 1024
LIMIT_DOC = "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size"
ENTRY_FIELDS = {"Key", "Flags", "Value", "CreateIndex", "ModifyIndex", "LockIndex"}


def put(dev, key: str, value: bytes | None = None, query: str = "") -> object:
    reply = call(dev, "PUT", kv_path(key, query), raw=value)
    assert reply.status == 200, (reply.status, reply.text)
    assert reply.content_type == "application/json"
    return reply.json


def entry(dev, key: str) -> dict:
    reply = call(dev, "GET", kv_path(key))
    assert reply.status == 200, (key, reply.status, reply.text)
    (only,) = reply.json
    return only


# ---- GET ------------------------------------------------------------------------------


def test_get_single_key_every_field(dev):
    key = unique("get") + "zip"
    assert put(dev, key, b"test", "flags=42") is True
    reply = call(dev, "GET", kv_path(key))
    assert reply.status == 200 and reply.content_type == "application/json"
    assert isinstance(reply.json, list) and len(reply.json) == 1
    got = reply.json[0]
    assert set(got) == ENTRY_FIELDS, "Session is omitted while the key is not locked"
    assert got["Key"] == key and got["Flags"] == 42 and got["Value"] == b64("test")
    assert got["LockIndex"] == 0
    assert got["CreateIndex"] == got["ModifyIndex"] >= 1
    assert reply.index == got["ModifyIndex"], "a single-key read is indexed by the key's ModifyIndex"
    assert reply.headers.get("X-Consul-KnownLeader") == "true"

    assert put(dev, key, b"second") is True
    again = entry(dev, key)
    assert again["CreateIndex"] == got["CreateIndex"]
    assert again["ModifyIndex"] > got["ModifyIndex"]
    assert again["Flags"] == 0, "a PUT without ?flags stores flags 0"
    assert again["Value"] == b64("second")


def test_empty_body_stores_an_empty_value_shown_as_null(dev):
    key = unique("empty") + "dir/"
    assert put(dev, key) is True
    got = entry(dev, key)
    assert got["Value"] is None and got["Key"] == key
    raw = call(dev, "GET", kv_path(key, "raw"))
    assert raw.status == 200 and raw.body == b""


def test_raw_returns_the_exact_bytes_as_text_plain_never_sniffed(dev):
    key = unique("raw") + "blob"
    value = bytes(range(256)) + b"<html><script>alert(1)</script></html>\r\n\x00"
    assert put(dev, key, value) is True
    reply = call(dev, "GET", kv_path(key, "raw"))
    assert reply.status == 200
    assert reply.body == value
    assert reply.content_type == "text/plain"
    assert reply.headers.get("X-Content-Type-Options") == "nosniff"
    assert reply.headers.get("Content-Security-Policy") == "sandbox"
    assert reply.index == entry(dev, key)["ModifyIndex"]
    missing = call(dev, "GET", kv_path(key + "-nope", "raw"))
    assert missing.status == 404 and missing.body == b""


@pytest.mark.parametrize("spelling", ["recurse", "recurse=1", "recurse=true"])
def test_recurse_in_every_spelling(dev, spelling):
    prefix = unique("rec")
    for key, value in ((prefix + "b/c", b"2"), (prefix + "a", b"1"), (prefix[:-1] + "x", b"outside")):
        assert put(dev, key, value) is True
    reply = call(dev, "GET", kv_path(prefix, spelling))
    assert reply.status == 200
    got = reply.json
    assert [e["Key"] for e in got] == [prefix + "a", prefix + "b/c"], "sorted by key, prefix only"
    assert [e["Value"] for e in got] == [b64("1"), b64("2")]
    assert all(set(e) == ENTRY_FIELDS for e in got)
    assert reply.index == max(e["ModifyIndex"] for e in got)
    everything = call(dev, "GET", "/v1/kv/?" + spelling)
    assert everything.status == 200, "the empty prefix lists the whole store"
    assert {prefix + "a", prefix + "b/c"} <= {e["Key"] for e in everything.json}


@pytest.mark.parametrize("spelling", ["recurse=false", "recurse=0"])
def test_recurse_is_true_whenever_present(dev, spelling):
    prefix = unique("recpresent")
    assert put(dev, prefix + "a", b"1") is True
    reply = call(dev, "GET", kv_path(prefix, spelling))
    assert reply.status == 200 and [e["Key"] for e in reply.json] == [prefix + "a"]


def test_keys_with_and_without_separator(dev):
    prefix = unique("keys")
    for key in ("a", "b/c", "b/d", "e/", "f", "b/deep/er"):
        assert put(dev, prefix + key, b"v") is True
    everything = sorted(prefix + k for k in ("a", "b/c", "b/d", "e/", "f", "b/deep/er"))

    reply = call(dev, "GET", kv_path(prefix, "keys"))
    assert reply.status == 200 and reply.json == everything
    assert reply.index >= 1
    # `?keys` implies recurse; an explicit recurse changes nothing
    assert call(dev, "GET", kv_path(prefix, "keys&recurse")).json == everything

    collapsed = [prefix + "a", prefix + "b/", prefix + "e/", prefix + "f"]
    assert call(dev, "GET", kv_path(prefix, "keys&separator=/")).json == collapsed
    # the historic spelling of the parameter still works (agent/kvs_endpoint.go)
    assert call(dev, "GET", kv_path(prefix, "keys&seperator=/")).json == collapsed
    # the prefix need not end at a separator: everything below collapses onto it
    assert call(dev, "GET", kv_path(prefix[:-1], "keys&separator=/")).json == [prefix]
    # a separator of several characters
    assert call(dev, "GET", kv_path(prefix + "b", "keys&separator=/d")).json == [prefix + "b/c", prefix + "b/d"]


def test_missing_key_and_empty_prefix_are_404_with_an_index(dev):
    prefix = unique("missing")
    for query in ("", "recurse", "keys", "keys&separator=/", "raw"):
        reply = call(dev, "GET", kv_path(prefix + "nothing-here", query))
        assert reply.status == 404, (query, reply.status, reply.text)
        assert reply.body == b"", query
        assert reply.index >= 1, f"X-Consul-Index on a 404 ({query!r}); py-consul needs it"


def test_get_without_a_key_and_wrong_methods(dev):
    assert call(dev, "GET", "/v1/kv/").status == 400, "Consul: 400 Missing key name"
    assert call(dev, "PUT", "/v1/kv/", raw=b"x").status == 400
    assert call(dev, "DELETE", "/v1/kv/").status == 400
    assert call(dev, "POST", kv_path(unique("m") + "k"), raw=b"x").status == 405


def test_datacenter_parameter(dev):
    key = unique("dc") + "k"
    dc = datacenter(dev)
    assert call(dev, "PUT", kv_path(key, f"dc={dc}"), raw=b"v").json is True
    assert call(dev, "GET", kv_path(key, f"dc={dc}")).json[0]["Value"] == b64("v")
    other = call(dev, "GET", kv_path(key, "dc=no-such-dc"))
    assert other.status == 500 and "No path to datacenter" in other.text


def test_consistency_modes_and_query_errors(dev):
    key = unique("modes") + "k"
    assert put(dev, key, b"v") is True
    for mode in ("stale", "consistent", "leader"):
        reply = call(dev, "GET", kv_path(key, mode))
        assert reply.status == 200 and reply.json[0]["Value"] == b64("v"), mode
    both = call(dev, "GET", kv_path(key, "stale&consistent"))
    assert both.status == 400, "?stale and ?consistent together are a 400 (consul.md §2)"
    assert call(dev, "GET", kv_path(key, "index=1&wait=5")).status == 400, "a wait without a unit"
    assert call(dev, "GET", kv_path(key, "index=abc")).status == 400


# ---- PUT ------------------------------------------------------------------------------


def test_flags_span_the_unsigned_64_bit_range(dev):
    prefix = unique("flags")
    for flags in (0, 1, 2**63, 2**64 - 1):
        assert put(dev, prefix + "k", b"v", f"flags={flags}") is True
        assert entry(dev, prefix + "k")["Flags"] == flags


def test_cas(dev):
    key = unique("cas") + "k"
    assert put(dev, key, b"first", "cas=0") is True, "cas=0 creates an absent key"
    assert put(dev, key, b"clobber", "cas=0") is False, "cas=0 never overwrites"
    first = entry(dev, key)
    assert first["Value"] == b64("first")
    assert put(dev, key, b"stale", f"cas={first['ModifyIndex'] - 1}") is False
    assert put(dev, key, b"later", f"cas={first['ModifyIndex'] + 1000}") is False
    assert entry(dev, key) == first, "a failed CAS changes nothing"
    assert put(dev, key, b"second", f"cas={first['ModifyIndex']}") is True
    second = entry(dev, key)
    assert second["Value"] == b64("second") and second["ModifyIndex"] > first["ModifyIndex"]
    assert second["CreateIndex"] == first["CreateIndex"]
    absent = unique("cas") + "absent"
    assert put(dev, absent, b"x", "cas=5") is False, "a non-zero CAS on an absent key fails"
    assert call(dev, "GET", kv_path(absent)).status == 404


def test_acquire_and_release(dev):
    key = unique("lock") + "leader"
    s1 = new_session(dev, Name="lock-one", LockDelay="0s")
    s2 = new_session(dev, Name="lock-two", LockDelay="0s")

    assert put(dev, key, b"one", f"acquire={s1}") is True, "a key need not exist to be acquired"
    held = entry(dev, key)
    assert held["Session"] == s1 and held["LockIndex"] == 1 and held["Value"] == b64("one")
    assert set(held) == ENTRY_FIELDS | {"Session"}

    assert put(dev, key, b"one-again", f"acquire={s1}") is True, "the holder may re-acquire"
    again = entry(dev, key)
    assert again["LockIndex"] == 1, "re-acquiring by the holder does not increment LockIndex"
    assert again["Session"] == s1 and again["Value"] == b64("one-again")

    assert put(dev, key, b"two", f"acquire={s2}") is False, "held by another session"
    assert put(dev, key, b"two", f"release={s2}") is False, "only the holder may release"
    assert entry(dev, key) == again

    assert put(dev, key, b"plain") is True, "a plain PUT ignores the lock"
    plain = entry(dev, key)
    assert plain["Session"] == s1 and plain["LockIndex"] == 1 and plain["Value"] == b64("plain")

    assert put(dev, key, b"released", f"release={s1}") is True
    released = entry(dev, key)
    assert "Session" not in released, "release clears Session"
    assert released["LockIndex"] == 1, "release leaves LockIndex unchanged"
    assert released["Value"] == b64("released")
    assert put(dev, key, b"released", f"release={s1}") is False, "not held any more"

    assert put(dev, key, b"two", f"acquire={s2}") is True
    taken = entry(dev, key)
    assert taken["Session"] == s2 and taken["LockIndex"] == 2, "each acquisition increments LockIndex"
    for sid in (s1, s2):
        call(dev, "PUT", f"/v1/session/destroy/{sid}")


def test_acquire_with_an_unknown_session_is_a_500(dev):
    key = unique("lock") + "k"
    reply = call(dev, "PUT", kv_path(key, "acquire=6a3c28b4-63e5-4b3e-9f3e-000000000000"), raw=b"x")
    assert reply.status == 500
    assert reply.text.startswith("invalid session"), reply.text
    assert call(dev, "GET", kv_path(key)).status == 404, "nothing was written"


def test_lock_delay_after_the_holder_is_destroyed(dev):
    key = unique("delay") + "k"
    holder = new_session(dev, LockDelay="1s")
    waiter = new_session(dev, LockDelay="0s")
    assert put(dev, key, b"held", f"acquire={holder}") is True
    destroyed_at = time.monotonic()
    assert call(dev, "PUT", f"/v1/session/destroy/{holder}").json is True
    after = entry(dev, key)
    assert "Session" not in after and after["LockIndex"] == 1
    assert put(dev, key, b"too-soon", f"acquire={waiter}") is False, "refused during the lock delay"
    retry(lambda: put(dev, key, b"mine", f"acquire={waiter}"), 5, 0.1, "the lock delay to pass")
    assert time.monotonic() - destroyed_at >= 0.9, "acquired before the 1s lock delay passed"
    got = entry(dev, key)
    assert got["Session"] == waiter and got["LockIndex"] == 2
    call(dev, "PUT", f"/v1/session/destroy/{waiter}")


@pytest.mark.parametrize("query", ["cas=0&acquire={s}", "cas=0&release={s}", "acquire={s}&release={s}"])
def test_conflicting_put_flags_are_400(dev, query):
    sid = new_session(dev, LockDelay="0s")
    key = unique("conflict") + "k"
    reply = call(dev, "PUT", kv_path(key, query.format(s=sid)), raw=b"x")
    assert reply.status == 400
    assert reply.text.startswith("Conflicting flags"), reply.text
    assert call(dev, "GET", kv_path(key)).status == 404
    call(dev, "PUT", f"/v1/session/destroy/{sid}")


def test_value_size_limit_is_512_kib(dev):
    key = unique("big") + "k"
    assert put(dev, key, b"x" * MAX_VALUE) is True
    assert len(call(dev, "GET", kv_path(key, "raw")).body) == MAX_VALUE
    reply = call(dev, "PUT", kv_path(key), raw=b"y" * (MAX_VALUE + 1))
    assert reply.status == 413
    assert reply.text.strip() == (f"Request body({MAX_VALUE + 1} bytes) too large, max size: {MAX_VALUE} bytes. "
                                  f"See {LIMIT_DOC}.")
    assert call(dev, "GET", kv_path(key, "raw")).body == b"x" * MAX_VALUE


def test_key_length_limit(dev):
    prefix = unique("long")
    longest = prefix + "k" * (2048 - len(prefix))
    assert put(dev, longest, b"v") is True
    assert entry(dev, longest)["Key"] == longest
    too_long = longest + "k"
    for method in ("PUT", "GET"):
        reply = call(dev, method, kv_path(too_long), raw=b"v" if method == "PUT" else None)
        assert reply.status == 400, (method, reply.status, reply.text)
    # the limit counts bytes, not characters: 1024 two-byte characters are 2048 bytes
    two_byte = "é" * 1025
    assert call(dev, "PUT", kv_path(two_byte), raw=b"v").status == 400


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
def test_a_key_may_not_start_with_a_slash(dev, method):
    reply = call(dev, method, "/v1/kv//" + unique("slash") + "k", raw=b"v" if method == "PUT" else None)
    assert reply.status == 400, (reply.status, reply.text)


def test_unusual_keys_are_stored_and_read_back_exactly(dev):
    prefix = unique("odd")
    keys = [prefix + "a//b", prefix + "with space", prefix + "ünïcödé/日本語", prefix + "q?mark&amp=1#frag",
            prefix + "per%cent", prefix + "trailing/", prefix + "emoji-\U0001f600"]
    for i, key in enumerate(keys):
        assert put(dev, key, f"value-{i}".encode()) is True, key
    for i, key in enumerate(keys):
        got = entry(dev, key)
        assert got["Key"] == key and got["Value"] == b64(f"value-{i}")
        assert call(dev, "GET", kv_path(key, "raw")).body == f"value-{i}".encode()
    assert call(dev, "GET", kv_path(prefix, "keys")).json == sorted(keys)
    assert [e["Key"] for e in call(dev, "GET", kv_path(prefix, "recurse")).json] == sorted(keys)
    assert call(dev, "GET", kv_path(prefix + "a/b")).status == 404, "a//b and a/b are different keys"
    for key in keys:
        assert call(dev, "DELETE", kv_path(key)).json is True
    assert call(dev, "GET", kv_path(prefix, "keys")).status == 404


# ---- DELETE ---------------------------------------------------------------------------


def test_delete_single_recurse_and_cas(dev):
    prefix = unique("del")
    for key in ("a", "sub/b", "sub/c"):
        assert put(dev, prefix + key, b"v") is True
    sibling = prefix[:-1] + "-sibling"
    assert put(dev, sibling, b"v") is True

    reply = call(dev, "DELETE", kv_path(prefix + "a"))
    assert reply.status == 200 and reply.json is True
    assert call(dev, "GET", kv_path(prefix + "a")).status == 404
    assert call(dev, "DELETE", kv_path(prefix + "a")).json is True, "deleting a missing key is true"

    assert call(dev, "DELETE", kv_path(prefix + "sub/", "recurse")).json is True
    assert call(dev, "GET", kv_path(prefix, "recurse")).status == 404
    assert call(dev, "GET", kv_path(sibling)).status == 200, "recurse deletes under the prefix only"

    key = prefix + "cas"
    assert put(dev, key, b"v") is True
    index = entry(dev, key)["ModifyIndex"]
    assert call(dev, "DELETE", kv_path(key, "cas=0")).json is False, "a 0 index never deletes"
    assert call(dev, "DELETE", kv_path(key, f"cas={index - 1}")).json is False
    assert entry(dev, key)["ModifyIndex"] == index
    assert call(dev, "DELETE", kv_path(key, f"cas={index}")).json is True
    assert call(dev, "GET", kv_path(key)).status == 404

    conflict = call(dev, "DELETE", kv_path(sibling, "recurse&cas=1"))
    assert conflict.status == 400 and conflict.text.startswith("Conflicting flags")
    assert call(dev, "GET", kv_path(sibling)).status == 200


# ---- blocking -------------------------------------------------------------------------


def test_single_key_blocking_read_wakes_only_for_its_key(dev):
    prefix = unique("block")
    key = prefix + "watched"
    assert put(dev, key, b"v1") is True
    first = call(dev, "GET", kv_path(key))
    index = first.json[0]["ModifyIndex"]
    assert first.index == index

    pending = Pending(lambda: call(dev, "GET", kv_path(key, f"index={index}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    for other in (prefix + "other", prefix + "watched-not", prefix[:-1]):
        assert put(dev, other, b"noise") is True
    assert call(dev, "DELETE", kv_path(prefix + "other")).json is True
    pending.assert_pending(0.5)

    written_at = time.monotonic()
    assert put(dev, key, b"v2") is True
    reply = pending.result(timeout=3)
    assert time.monotonic() - written_at < 2, "the write, not the wait, ended the read"
    assert time.monotonic() - pending.started < 4.5, "returned before wait=5s expired"
    assert reply.status == 200
    assert reply.json[0]["Value"] == b64("v2")
    assert reply.index == reply.json[0]["ModifyIndex"] > index


def test_blocking_read_of_a_missing_key_wakes_when_it_is_created(dev):
    key = unique("block") + "later"
    miss = call(dev, "GET", kv_path(key))
    assert miss.status == 404
    pending = Pending(lambda: call(dev, "GET", kv_path(key, f"index={miss.index}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    assert put(dev, key, b"here") is True
    reply = pending.result(timeout=3)
    assert reply.status == 200 and reply.json[0]["Value"] == b64("here")
    assert reply.index > miss.index


def test_blocking_timeout_returns_the_current_data(dev):
    key = unique("block") + "still"
    assert put(dev, key, b"v") is True
    index = entry(dev, key)["ModifyIndex"]
    started = time.monotonic()
    reply = call(dev, "GET", kv_path(key, f"index={index}&wait=300ms"), timeout=10)
    took = time.monotonic() - started
    assert reply.status == 200 and reply.json[0]["Value"] == b64("v") and reply.index == index
    assert 0.25 <= took < 3, took


def test_prefix_blocking_read_wakes_for_a_write_under_the_prefix_only(dev):
    prefix = unique("pblock")
    assert put(dev, prefix + "a", b"1") is True
    first = call(dev, "GET", kv_path(prefix, "recurse"))
    index = first.index

    pending = Pending(lambda: call(dev, "GET", kv_path(prefix, f"recurse&index={index}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    assert put(dev, prefix[:-1] + "-outside", b"x") is True
    assert put(dev, unique("elsewhere") + "k", b"x") is True
    pending.assert_pending(0.5)

    assert put(dev, prefix + "deep/b", b"2") is True
    reply = pending.result(timeout=3)
    assert time.monotonic() - pending.started < 4.5
    assert reply.status == 200
    assert [e["Key"] for e in reply.json] == [prefix + "a", prefix + "deep/b"]
    assert reply.index > index


def test_keys_blocking_read_wakes_for_a_new_key(dev):
    prefix = unique("kblock")
    assert put(dev, prefix + "a", b"1") is True
    first = call(dev, "GET", kv_path(prefix, "keys"))
    pending = Pending(lambda: call(dev, "GET", kv_path(prefix, f"keys&index={first.index}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    assert put(dev, prefix + "b", b"2") is True
    reply = pending.result(timeout=3)
    assert reply.json == [prefix + "a", prefix + "b"] and reply.index > first.index


def test_blocking_recurse_read_sees_a_delete(dev):
    prefix = unique("tomb")
    assert put(dev, prefix + "a", b"1") is True
    assert put(dev, prefix + "b", b"2") is True
    first = call(dev, "GET", kv_path(prefix, "recurse"))
    assert len(first.json) == 2

    pending = Pending(lambda: call(dev, "GET", kv_path(prefix, f"recurse&index={first.index}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    assert call(dev, "DELETE", kv_path(prefix + "a")).json is True, "delete the older key: only a tombstone moves"
    reply = pending.result(timeout=3)
    assert time.monotonic() - pending.started < 4.5, "the delete woke the read"
    assert [e["Key"] for e in reply.json] == [prefix + "b"]
    assert reply.index > first.index, "the tombstone moves the prefix's index forward"


def test_index_never_goes_backwards_across_deletes(dev):
    prefix = unique("mono")
    assert put(dev, prefix + "a", b"1") is True
    assert put(dev, prefix + "b", b"2") is True
    seen = [call(dev, "GET", kv_path(prefix, "recurse")).index]
    assert call(dev, "DELETE", kv_path(prefix + "b")).json is True  # the newest key
    after_newest = call(dev, "GET", kv_path(prefix, "recurse"))
    assert after_newest.status == 200 and after_newest.index > seen[-1]
    seen.append(after_newest.index)
    assert call(dev, "DELETE", kv_path(prefix, "recurse")).json is True
    for query in ("recurse", "keys"):
        gone = call(dev, "GET", kv_path(prefix, query))
        assert gone.status == 404 and gone.index >= seen[-1], (query, gone.index, seen)
    seen.append(call(dev, "GET", kv_path(prefix, "recurse")).index)
    single = call(dev, "GET", kv_path(prefix + "b"))
    assert single.status == 404 and single.index >= 1
    assert seen == sorted(seen) and all(i >= 1 for i in seen)

    # a blocking read at the post-delete index waits (nothing newer), then wakes on a write
    pending = Pending(lambda: call(dev, "GET", kv_path(prefix, f"recurse&index={seen[-1]}&wait=5s"), timeout=15))
    pending.assert_pending(0.5)
    assert put(dev, prefix + "c", b"3") is True
    reply = pending.result(timeout=3)
    assert reply.status == 200 and reply.index > seen[-1]
