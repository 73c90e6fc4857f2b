"""Config entries in the state machine: CAS, rules between entries, service-intentions
over the intention table, watch keys and snapshots."""

from __future__ import annotations

import io
from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.commands import (
    ConfigDeleteRequest,
    ConfigSetRequest,
    MessageType,
    encode,
    encode_batch,
)
from mesh.catalog.config_entries import parse_config_entry, watch_key
from mesh.catalog.config_intentions import intention_rows, intentions_entry
from mesh.catalog.fsm import FSM
from mesh.catalog.intentions import parse_intention
from mesh.catalog.structs import row_to_wire

L7 = [{"Action": "deny", "HTTP": {"PathPrefix": "/admin"}}]


class Harness:
    """An FSM driven the way the HTTP layer drives it: parsed entries, stamped IDs."""

    def __init__(self) -> None:
        self.fsm = FSM()
        self.index = 1
        self._ids = 0

    def apply(self, msg_type: int, body: object) -> object:
        self.index += 1
        raw = encode(msg_type, body, self.index.to_bytes(16, "big"))
        return self.fsm.apply_batch(self.index, encode_batch([raw]))[0]

    def put(self, body: dict, cas: int | None = None) -> object:
        entry = parse_config_entry(body)
        rows: tuple = ()
        if entry.kind == "service-intentions":
            rows = tuple(replace(r, id=self._id()) for r in intention_rows(entry))
            entry = replace(entry, body={"Meta": entry.body["Meta"]} if entry.body.get("Meta") else {})
        return self.apply(MessageType.CONFIG_SET, ConfigSetRequest(entry, cas, rows))

    def delete(self, kind: str, name: str, cas: int | None = None) -> object:
        return self.apply(MessageType.CONFIG_DELETE, ConfigDeleteRequest(kind, name, cas))

    def legacy(self, body: dict, mode: str = "upsert") -> object:
        intention = replace(parse_intention(body), id=self._id(), created_at="2026-01-01T00:00:00Z",
                            updated_at="2026-01-01T00:00:00Z")
        return self.apply(MessageType.INTENTION_UPSERT, (intention, mode))

    def _id(self) -> str:
        self._ids += 1
        return f"00000000-0000-0000-0000-{self._ids:012d}"

    @property
    def store(self):
        return self.fsm.store

    def entry(self, kind: str, name: str):
        if kind == "service-intentions":
            return intentions_entry(self.store.config_entry(kind, name), self.store.intentions_to(name))
        return self.store.config_entry(kind, name)


def test_cas_creates_only_with_zero_and_updates_only_at_the_index():
    h = Harness()
    sd = {"Kind": "service-defaults", "Name": "web", "Protocol": "http"}
    assert h.put(sd, cas=5) is False and h.entry("service-defaults", "web") is None
    assert h.put(sd, cas=0) is True
    created = h.entry("service-defaults", "web")
    assert created.create_index == created.modify_index == h.index
    assert h.put(sd, cas=0) is False
    assert h.put({**sd, "Protocol": "tcp"}, cas=created.modify_index + 7) is False
    assert h.put({**sd, "Protocol": "tcp"}, cas=created.modify_index) is True
    updated = h.entry("service-defaults", "web")
    assert updated.body["Protocol"] == "tcp" and updated.create_index == created.create_index
    assert h.delete("service-defaults", "web", cas=created.modify_index) is False
    assert h.delete("service-defaults", "web", cas=updated.modify_index) is True
    assert h.entry("service-defaults", "web") is None
    assert h.delete("service-defaults", "web", cas=updated.modify_index) is False  # gone: nothing at that index
    assert h.delete("service-defaults", "web") is True  # plain delete of nothing succeeds


def test_router_needs_http_and_the_protocol_under_a_router_cannot_drop_to_tcp():
    h = Harness()
    router = {"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"Service": "api"}}]}
    assert "uses a protocol \"tcp\" that does not permit" in h.put(router)["Error"]
    assert h.put({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}) is True
    assert 'uses inconsistent protocols; service "api" has "tcp" which is not "http"' in h.put(router)["Error"]
    assert h.put({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}) is True
    assert h.put(router) is True
    before = h.fsm.state_hash()
    # each of these would leave the router on tcp: refused, nothing changed
    assert "does not permit" in h.put({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"})["Error"]
    assert "inconsistent" in h.put({"Kind": "service-defaults", "Name": "api", "Protocol": "tcp"})["Error"]
    assert "inconsistent" in h.delete("proxy-defaults", "global")["Error"]
    assert h.fsm.state_hash() != before  # dedupe table remembers the refusals; the entries did not change
    assert h.entry("service-defaults", "web").body["Protocol"] == "http"
    assert h.entry("proxy-defaults", "global") is not None
    assert h.delete("service-router", "web") is True
    assert h.delete("proxy-defaults", "global") is True


def test_l7_intentions_need_an_http_destination_through_both_apis():
    h = Harness()
    entry = {"Kind": "service-intentions", "Name": "db", "Sources": [{"Name": "web", "Permissions": L7}]}
    message = 'service "db" has protocol "tcp", which is incompatible with L7 intentions permissions'
    assert h.put(entry)["Error"] == message
    assert h.legacy({"SourceName": "web", "DestinationName": "db", "Permissions": L7})["Error"] == message
    assert not h.store.intentions
    # L4 intentions need nothing of the protocol; a wildcard destination cannot be L7
    assert h.put({**entry, "Sources": [{"Name": "web", "Action": "allow"}]}) is True
    assert h.put({"Kind": "service-defaults", "Name": "db", "Protocol": "http"}) is True
    assert h.put(entry) is True
    assert h.legacy({"SourceName": "api", "DestinationName": "db", "Permissions": L7}) == {
        "ID": next(i.id for i in h.store.intentions.values() if i.source_name == "api")}
    assert "incompatible with L7" in h.put({"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"})["Error"]
    assert "incompatible with L7" in h.delete("service-defaults", "db")["Error"]


def test_service_intentions_are_the_intention_rows():
    h = Harness()
    assert h.legacy({"SourceName": "old", "DestinationName": "web", "Action": "deny", "Meta": {"m": "1"}}) is not None
    legacy_id = next(iter(h.store.intentions))
    entry = h.entry("service-intentions", "web")
    assert entry["Sources"] == [{"Name": "old", "Action": "deny", "Precedence": 9, "LegacyID": legacy_id,
                                 "Type": "consul", "LegacyMeta": {"m": "1"},
                                 "LegacyCreateTime": "2026-01-01T00:00:00Z",
                                 "LegacyUpdateTime": "2026-01-01T00:00:00Z"}]
    assert entry["CreateIndex"] == entry["ModifyIndex"] == h.index
    # an entry write replaces web's rows in one command; the pair that existed keeps its ID
    assert h.put({"Kind": "service-intentions", "Name": "web", "Meta": {"team": "a"},
                  "Sources": [{"Name": "old", "Action": "allow"}, {"Name": "*", "Action": "deny"},
                              {"Name": "new", "Action": "allow", "Description": "d"}]}) is True
    rows = {i.source_name: i for i in h.store.intentions_to("web")}
    assert set(rows) == {"old", "*", "new"} and rows["old"].id == legacy_id and rows["old"].action == "allow"
    assert rows["new"].meta == {"team": "a"} and rows["new"].created_at == ""
    entry = h.entry("service-intentions", "web")
    assert [s["Name"] for s in entry["Sources"]] == ["new", "old", "*"]  # precedence, then name
    assert entry["Meta"] == {"team": "a"} and "LegacyID" not in entry["Sources"][1]
    assert entry["ModifyIndex"] == h.index
    # the intentions API edits the same rows, and the entry follows
    assert h.apply(MessageType.INTENTION_DELETE, rows["new"].id) is True
    entry = h.entry("service-intentions", "web")
    assert [s["Name"] for s in entry["Sources"]] == ["old", "*"] and entry["ModifyIndex"] == h.index
    # other destinations are untouched; deleting the entry removes web's rows only
    h.legacy({"SourceName": "web", "DestinationName": "db", "Action": "allow"})
    assert h.delete("service-intentions", "web") is True
    assert [(i.source_name, i.destination_name) for i in h.store.intentions.values()] == [("web", "db")]
    assert h.entry("service-intentions", "web") is None
    assert h.store.config_entry("service-intentions", "web") is None


def test_service_intentions_cas_uses_the_entry_index():
    h = Harness()
    body = {"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "a", "Action": "allow"}]}
    assert h.put(body, cas=0) is True and h.put(body, cas=0) is False
    index = h.entry("service-intentions", "web")["ModifyIndex"]
    h.legacy({"SourceName": "b", "DestinationName": "web", "Action": "deny"})  # moves the entry's index
    assert h.put(body, cas=index) is False
    assert h.put(body, cas=h.entry("service-intentions", "web")["ModifyIndex"]) is True
    assert [i.source_name for i in h.store.intentions_to("web")] == ["a"]


def test_watch_keys_are_per_entry_and_per_kind():
    h = Harness()
    h.store.drain_touched()
    h.put({"Kind": "service-defaults", "Name": "Web", "Protocol": "http"})
    assert h.store.drain_touched() == {"config.service-defaults", "config.service-defaults.web"}
    h.legacy({"SourceName": "a", "DestinationName": "db", "Action": "allow"})
    assert h.store.drain_touched() == {"intentions", "config.service-intentions", "config.service-intentions.db"}
    assert h.store.index(watch_key("service-defaults", "WEB")) == 2
    assert h.store.index(watch_key("service-defaults", "api")) == 0


def test_snapshot_round_trip_with_config_entries_and_an_older_snapshot_restores():
    h = Harness()
    h.put({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http", "tracing": {"rate": 0.5}}})
    h.put({"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}}]})
    h.put({"Kind": "service-intentions", "Name": "web", "Meta": {"x": "y"},
           "Sources": [{"Name": "a", "Permissions": L7}]})
    restored = FSM.from_snapshot(h.fsm.snapshot())
    assert restored == h.fsm and restored.state_hash() == h.fsm.state_hash()
    assert restored.store.config == h.store.config
    # a version-2 snapshot (before config entries) still restores, its intentions as entries
    old = io.BytesIO()
    packer = msgpack.Packer(use_bin_type=True)
    old.write(packer.pack({"v": 2, "index": 9, "indexes": {"intentions": 9}}))
    for row in h.store.intentions.values():
        old.write(packer.pack(("i", row_to_wire(row))))
    old.write(packer.pack(("end", None)))
    legacy = FSM.from_snapshot(old.getvalue())
    assert legacy.store.config == {} and len(legacy.store.intentions) == 1
    entry = intentions_entry(None, legacy.store.intentions_to("web"))
    assert entry["Sources"][0]["Name"] == "a" and entry["ModifyIndex"] > 0


_names = st.sampled_from(["web", "api", "db"])
_ops = st.one_of(
    st.tuples(st.just("sd"), _names, st.sampled_from(["tcp", "http"])),
    st.tuples(st.just("pd"), st.just("global"), st.sampled_from(["tcp", "http", ""])),
    st.tuples(st.just("router"), _names, _names),
    st.tuples(st.just("l7"), _names, _names),
    st.tuples(st.just("del"), st.sampled_from(["service-defaults", "proxy-defaults", "service-router",
                                               "service-intentions"]), _names),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_ops, max_size=12))
def test_rules_hold_after_any_sequence_of_writes_and_replays_agree(ops):
    """Whatever is written, in whatever order, the rules between entries hold afterwards
    (a write that would break one is refused whole), and the state survives a snapshot."""
    from mesh.catalog.config_entries import graph_violations

    h = Harness()
    for op, name, arg in ops:
        if op == "sd":
            body = {"Kind": "service-defaults", "Name": name, "Protocol": arg}
        elif op == "pd":
            body = {"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": arg} if arg else {}}
        elif op == "router":
            body = {"Kind": "service-router", "Name": name, "Routes": [{"Destination": {"Service": arg}}]}
        elif op == "l7":
            body = {"Kind": "service-intentions", "Name": name, "Sources": [{"Name": arg, "Permissions": L7}]}
        else:
            h.delete(name, "global" if name == "proxy-defaults" else arg)
            continue
        h.put(body)
    store = h.store
    l7 = {i.destination_name for i in store.intentions.values() if i.permissions}
    assert graph_violations(store, store.config_entries_of("service-router"), l7) == []
    replay = FSM.from_snapshot(h.fsm.snapshot())
    assert replay.state_hash() == h.fsm.state_hash()


# ---- discovery chains: a write that breaks one is refused ------------------------------

SUBSETS = {"v1": {"Filter": 'Service.Meta.version == "1"'}, "v2": {}}


def test_a_write_that_breaks_a_chain_is_refused_and_changes_nothing():
    h = Harness()
    assert h.put({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}) is True
    assert h.put({"Kind": "service-resolver", "Name": "api", "Subsets": SUBSETS}) is True
    # a route, a split, a redirect, a failover naming a subset api's resolver lacks
    for body in ({"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"Service": "api",
                                                                                       "ServiceSubset": "v3"}}]},
                 {"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 100, "Service": "api",
                                                                         "ServiceSubset": "v3"}]},
                 {"Kind": "service-resolver", "Name": "web", "Redirect": {"Service": "api", "ServiceSubset": "v3"}},
                 {"Kind": "service-resolver", "Name": "web", "Failover": {"*": {"Targets": [
                     {"Service": "api", "ServiceSubset": "v3"}]}}}):
        assert h.put(body) == {"Error": 'service "api" does not have a subset named "v3"'}, body["Kind"]
    assert h.store.config_entry("service-router", "web") is None
    assert h.store.config_entry("service-splitter", "web") is None
    assert h.store.config_entry("service-resolver", "web") is None
    # the same entries naming v2 are taken; then api's resolver cannot lose v2, nor go away
    assert h.put({"Kind": "service-router", "Name": "web", "Routes": [{"Destination": {"Service": "api",
                                                                                       "ServiceSubset": "v2"}}]})
    assert h.put({"Kind": "service-splitter", "Name": "other", "Splits": [{"Weight": 100, "Service": "api",
                                                                           "ServiceSubset": "v1"}]})
    assert h.put({"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {}}}) == {
        "Error": 'service "api" does not have a subset named "v2"'}
    assert h.delete("service-resolver", "api") == {"Error": 'service "api" does not have a subset named "v1"'}
    assert h.store.config_entry("service-resolver", "api").body["Subsets"] == SUBSETS
    # removing the references first makes both possible
    assert h.delete("service-router", "web") is True and h.delete("service-splitter", "other") is True
    assert h.delete("service-resolver", "api") is True


def test_loops_are_refused_whichever_entry_closes_them():
    h = Harness()
    assert h.put({"Kind": "service-resolver", "Name": "a", "Redirect": {"Service": "b"}}) is True
    assert h.put({"Kind": "service-resolver", "Name": "b", "Redirect": {"Service": "a"}}) == {
        "Error": "detected circular resolver redirect: [a.default.default.dc1 -> b.default.default.dc1 -> "
                 "a.default.default.dc1]"}
    assert h.put({"Kind": "service-splitter", "Name": "x", "Splits": [{"Weight": 100, "Service": "y"}]}) is True
    assert h.put({"Kind": "service-splitter", "Name": "y", "Splits": [{"Weight": 50, "Service": "x"},
                                                                      {"Weight": 50, "Service": "z"}]}) == {
        "Error": "detected circular reference: [splitter:x.default.default -> splitter:y.default.default -> "
                 "splitter:x.default.default]"}
    assert h.store.config_entry("service-resolver", "b") is None
    assert h.store.config_entry("service-splitter", "y") is None


def test_protocol_changes_under_a_chain_are_checked_too():
    h = Harness()
    assert h.put({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 50, "Service": "a"},
                                                                        {"Weight": 50, "Service": "b"}]}) is True
    message = 'discovery chain "web" uses inconsistent protocols; service "b" has "http" which is not "tcp"'
    assert h.put({"Kind": "service-defaults", "Name": "b", "Protocol": "http"}) == {"Error": message}
    # both at once (through proxy-defaults) keeps them consistent
    assert h.put({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}) is True
    assert h.put({"Kind": "service-defaults", "Name": "a", "Protocol": "tcp"})["Error"].startswith(
        'discovery chain "web" uses inconsistent protocols')


def test_chains_broken_before_do_not_block_other_writes():
    """A chain broken by, say, an old snapshot is not the next write's fault."""
    h = Harness()
    broken = parse_config_entry({"Kind": "service-router", "Name": "web",
                                 "Routes": [{"Destination": {"ServiceSubset": "gone"}}]})
    h.store.set_config_entry(1, broken)
    assert h.put({"Kind": "service-resolver", "Name": "api", "Subsets": SUBSETS}) is True
    assert h.put({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}) is True


_chain_ops = st.one_of(
    st.tuples(st.just("resolver"), _names, st.sampled_from(["", "api", "db", "web"]), st.sampled_from(["", "v1"])),
    st.tuples(st.just("splitter"), _names, _names, st.sampled_from(["", "v1", "v2"])),
    st.tuples(st.just("router"), _names, _names, st.sampled_from(["", "v1"])),
    st.tuples(st.just("del"), st.sampled_from(["service-resolver", "service-splitter", "service-router"]), _names,
              st.just("")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_chain_ops, max_size=12))
def test_every_chain_compiles_after_any_sequence_of_writes(ops):
    """Whatever is written or deleted, in whatever order, every chain still compiles:
    a write that would break one is refused whole."""
    from mesh.catalog.discovery_chain import CHAIN_KINDS, chain_violations

    h = Harness()
    h.put({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}})
    for op, name, target, subset in ops:
        if op == "resolver":
            body = {"Kind": "service-resolver", "Name": name, "Subsets": {"v1": {}}}
            if target:
                body["Redirect"] = {"Service": target, **({"ServiceSubset": subset} if subset else {})}
        elif op == "splitter":
            body = {"Kind": "service-splitter", "Name": name, "Splits": [
                {"Weight": 100, "Service": target, **({"ServiceSubset": subset} if subset else {})}]}
        elif op == "router":
            body = {"Kind": "service-router", "Name": name, "Routes": [
                {"Destination": {"Service": target, **({"ServiceSubset": subset} if subset else {})}}]}
        else:
            h.delete(name, target)
            continue
        h.put(body)
    services = {e.name for kind in CHAIN_KINDS for e in h.store.config_entries_of(kind)}
    assert chain_violations(h.store, services, "dc1") == []
