"""Intentions: precedence, validation, first-match decisions (consul.md §5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.commands import MessageType, encode, encode_batch
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.fsm import FSM
from mesh.catalog.intentions import (
    Intention,
    IntentionIndex,
    decide,
    parse_intention,
    precedence,
    sort_intentions,
)


@pytest.mark.parametrize("src, dst, expected", [("web", "db", 9), ("*", "db", 8), ("web", "*", 6), ("*", "*", 5)])
def test_precedence_table(src, dst, expected):
    assert precedence(src, dst) == expected


def make(src, dst, action="allow", **kw):
    return Intention(id=f"{src}->{dst}", source_name=src, destination_name=dst, action=action,
                     precedence=precedence(src, dst), **kw)


def test_first_match_in_precedence_order_decides():
    rules = sort_intentions([make("*", "*", "deny"), make("web", "db"), make("*", "db", "deny"), make("web", "*")])
    assert [r.precedence for r in rules] == [9, 8, 6, 5]
    assert decide(rules, "web", "db", True).allowed is True  # exact beats *->db deny
    assert decide(rules, "api", "db", True).allowed is False  # *->db deny
    assert decide(rules, "web", "cache", True).allowed is True  # web->* allow
    d = decide(rules, "api", "cache", True)
    assert d.allowed is False and d.reason == "Matched L4 intention: * => * (deny)"


def test_default_policy_when_nothing_matches():
    assert decide([], "a", "b", True).allowed is True
    assert decide([make("x", "y")], "a", "b", False).allowed is False
    assert "default" in decide([], "a", "b", False).reason.lower()


def test_l7_intentions_deny_at_l4():
    l7 = make("web", "db", action="", permissions=({"Action": "allow", "HTTP": {"PathPrefix": "/"}},))
    d = decide([l7], "web", "db", True)
    assert d.allowed is False and "L7" in d.reason


def test_ties_sort_by_names():
    rules = sort_intentions([make("zeta", "db"), make("alpha", "db")])
    assert [r.source_name for r in rules] == ["alpha", "zeta"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"SourceName": "web*", "DestinationName": "db", "Action": "allow"}, "partial"),
        ({"SourceName": "web", "DestinationName": "d*b", "Action": "allow"}, "partial"),
        ({"SourceName": "", "DestinationName": "db", "Action": "allow"}, "SourceName must be set"),
        ({"SourceName": "web", "DestinationName": "db", "Action": "maybe"}, "Action must be allow or deny"),
        ({"SourceName": "web", "DestinationName": "db"}, "Action must be allow or deny"),
        ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "Description": "x" * 513}, "512"),
        ({"SourceName": "web", "DestinationName": "db", "Action": "allow",
          "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "/a"}}]}, "empty when Permissions"),
        ({"SourceName": "web", "DestinationName": "db",
          "Permissions": [{"Action": "allow", "HTTP": {"PathRegex": "("}}]}, "PathRegex"),
        ({"SourceName": "web", "DestinationName": "db",
          "Permissions": [{"Action": "allow", "HTTP": {"PathExact": "a"}}]}, "start with /"),
        ({"SourceName": "web", "DestinationName": "db", "Action": "allow", "SourceType": "other"}, "SourceType"),
    ],
)
def test_invalid_intentions_are_rejected_with_the_reason(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_intention(body)


def test_l7_permissions_are_stored():
    i = parse_intention({"SourceName": "web", "DestinationName": "db", "Permissions": [
        {"Action": "deny", "HTTP": {"PathPrefix": "/admin", "Methods": ["post"]}}]})
    assert i.action == "" and i.permissions[0]["HTTP"] == {"PathPrefix": "/admin", "Methods": ["POST"]}


def _upsert(fsm, index, intention, mode):
    return fsm.apply_batch(index, encode_batch([encode(MessageType.INTENTION_UPSERT, (intention, mode), bytes([index]) * 16)]))[0]


def test_store_keeps_one_intention_per_pair_and_survives_snapshots():
    fsm = FSM()
    a = make("web", "db")
    assert _upsert(fsm, 2, a, "create") == {"ID": a.id}
    dup = Intention(id="other", source_name="WEB", destination_name="db", action="deny", precedence=9)
    assert "duplicate intention" in _upsert(fsm, 3, dup, "create")["Error"]
    assert _upsert(fsm, 4, dup, "upsert") == {"ID": a.id}  # by pair: replaces, keeps the ID
    assert fsm.store.intentions[a.id].action == "deny" and fsm.store.intentions[a.id].create_index == 2
    assert "non-existent" in _upsert(fsm, 5, make("x", "y"), "update")["Error"]
    restored = FSM.from_snapshot(fsm.snapshot())
    assert restored.store.intentions == fsm.store.intentions
    result = fsm.apply_batch(6, encode_batch([encode(MessageType.INTENTION_DELETE, a.id, b"d" * 16)]))[0]
    assert result is True and not fsm.store.intentions


names = st.sampled_from(["web", "db", "api", "cache", "*"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(names, names, st.sampled_from(["allow", "deny"])), max_size=12), names, names,
       st.booleans())
def test_index_decides_like_the_full_ordered_list(rules, source, destination, default):
    unique = {(s, d): a for s, d, a in rules}
    intentions = [make(s, d, a) for (s, d), a in unique.items()]
    source = "web" if source == "*" else source
    destination = "db" if destination == "*" else destination
    expected = decide(sort_intentions(intentions), source, destination, default)
    got = IntentionIndex(intentions).decide(source, destination, default)
    assert (got.allowed, got.reason) == (expected.allowed, expected.reason)
