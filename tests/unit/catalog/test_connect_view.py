"""The catalog's connect view: `connect.<name>` moves exactly when
/v1/health/connect/<name> would answer differently, so a sidecar watching its
upstream's endpoints wakes for that upstream's proxies and native instances, their
checks and their nodes' checks, and for nothing else in the datacenter."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.fsm import FSM
from mesh.catalog.health import health_connect, health_connect_watch_keys

from .test_fsm import apply, dereg, reg

N1 = {"Node": "n1", "Address": "10.0.0.1"}
N2 = {"Node": "n2", "Address": "10.0.0.2"}


def sidecar(node: dict, dest: str, sid: str = "", status: str = "passing") -> dict:
    sid = sid or f"{dest}-sidecar-proxy"
    return {**node, "Service": {"ID": sid, "Service": f"{dest}-sidecar-proxy", "Kind": "connect-proxy",
                                "Port": 21000, "Proxy": {"DestinationServiceName": dest}},
            "Check": {"CheckID": f"{sid}:listening", "ServiceID": sid, "Status": status}}


def plain(node: dict, name: str, status: str = "passing") -> dict:
    return {**node, "Service": {"Service": name, "Port": 80},
            "Check": {"CheckID": f"{name}:check", "ServiceID": name, "Status": status}}


def connect_index(fsm: FSM, name: str) -> int:
    return fsm.store.index(*health_connect_watch_keys(name))


def setup() -> FSM:
    fsm = FSM()
    apply(fsm, 2, reg(plain(N1, "api")), reg(sidecar(N1, "api")))
    apply(fsm, 3, reg(plain(N2, "web")), reg(sidecar(N2, "web")))
    return fsm


def test_a_check_change_on_an_unrelated_service_does_not_move_connect_api():
    fsm = setup()
    before = connect_index(fsm, "api")
    apply(fsm, 4, reg(plain(N2, "web", "critical")))
    apply(fsm, 5, reg(sidecar(N2, "web", status="critical")))
    # ... not even api's own (non-proxy) check: its connect view lists its proxies
    apply(fsm, 6, reg(plain(N1, "api", "critical")))
    assert connect_index(fsm, "api") == before == 2
    assert connect_index(fsm, "web") == 5


def test_a_check_change_on_apis_sidecar_moves_connect_api():
    fsm = setup()
    apply(fsm, 4, reg(sidecar(N1, "api", status="critical")))
    assert connect_index(fsm, "api") == 4
    index, entries = health_connect(fsm.store, "api", True, {}, None)
    assert index == 4 and entries == []


def test_a_node_level_check_on_a_node_hosting_apis_sidecar_moves_connect_api():
    fsm = setup()
    apply(fsm, 4, reg({**N1, "Check": {"CheckID": "serfHealth", "Status": "critical"}}))
    assert connect_index(fsm, "api") == 4 and connect_index(fsm, "web") == 3
    apply(fsm, 5, reg({**N2, "Check": {"CheckID": "serfHealth", "Status": "critical"}}))
    assert connect_index(fsm, "api") == 4 and connect_index(fsm, "web") == 5
    apply(fsm, 6, dereg({"Node": "n1", "CheckID": "serfHealth"}))
    assert connect_index(fsm, "api") == 6


def test_a_proxy_that_changes_destination_moves_both_views():
    fsm = setup()
    apply(fsm, 4, reg(sidecar(N1, "web", sid="api-sidecar-proxy")))
    assert connect_index(fsm, "api") == 4 and connect_index(fsm, "web") == 4
    assert health_connect(fsm.store, "api", False, {}, None)[1] == []
    assert [e["Service"]["ID"] for e in health_connect(fsm.store, "web", False, {}, None)[1]] == [
        "api-sidecar-proxy", "web-sidecar-proxy"]


def test_native_instances_removal_and_node_deregistration():
    fsm = setup()
    apply(fsm, 4, reg({**N2, "Service": {"Service": "api", "ID": "api-native", "Port": 9,
                                         "Connect": {"Native": True}}}))
    assert connect_index(fsm, "api") == 4
    assert [e["Service"]["ID"] for e in health_connect(fsm.store, "api", False, {}, None)[1]] == [
        "api-sidecar-proxy", "api-native"]
    apply(fsm, 5, dereg({"Node": "n1", "ServiceID": "api-sidecar-proxy"}))
    assert connect_index(fsm, "api") == 5
    apply(fsm, 6, dereg({"Node": "n2"}))
    assert connect_index(fsm, "api") == 6 and connect_index(fsm, "web") == 6
    assert health_connect(fsm.store, "api", False, {}, None)[1] == []
    assert fsm.store.connect_names == {}


def test_the_index_falls_back_to_the_services_table_for_a_name_without_a_view():
    fsm = setup()
    assert health_connect(fsm.store, "nothing", False, {}, None)[0] == fsm.store.index("services") == 3


def test_snapshot_restore_rebuilds_the_connect_view():
    fsm = setup()
    restored = FSM.from_snapshot(fsm.snapshot())
    for name in ("api", "web"):
        assert health_connect(restored.store, name, False, {}, None) == health_connect(fsm.store, name, False, {}, None)
    assert restored.store.connect_names == fsm.store.connect_names


# ---- property: connect.<name> moves exactly when the view changes ----------------------

NAMES = ("api", "web")
nodes = st.sampled_from([N1, N2])
statuses = st.sampled_from(["passing", "critical"])
ops = st.one_of(
    st.builds(lambda n, d, sid, s: reg(sidecar(n, d, sid, s)), nodes, st.sampled_from(NAMES),
              st.sampled_from(["p1", "p2"]), statuses),
    st.builds(lambda n, name, s: reg(plain(n, name, s)), nodes, st.sampled_from(NAMES + ("db",)), statuses),
    st.builds(lambda n, name, native: reg({**n, "Service": {"Service": name, "ID": name + "-n", "Port": 1,
                                                               "Connect": {"Native": native}}}),
              nodes, st.sampled_from(NAMES), st.booleans()),
    st.builds(lambda n, s: reg({**n, "Check": {"CheckID": "serfHealth", "Status": s}}), nodes, statuses),
    st.builds(lambda n, sid: dereg({"Node": n["Node"], "ServiceID": sid}), nodes,
              st.sampled_from(["p1", "p2", "api", "web-n"])),
    st.builds(lambda n: dereg({"Node": n["Node"], "CheckID": "serfHealth"}), nodes),
    st.builds(lambda n: dereg({"Node": n["Node"]}), nodes),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=25))
def test_connect_key_moves_exactly_when_the_connect_view_changes(sequence):
    fsm = FSM()
    for i, op in enumerate(sequence):
        views = {n: health_connect(fsm.store, n, False, {}, None)[1] for n in NAMES}
        keys = {n: connect_index(fsm, n) for n in NAMES}
        apply(fsm, i + 2, op)
        for n in NAMES:
            changed = health_connect(fsm.store, n, False, {}, None)[1] != views[n]
            moved = connect_index(fsm, n) != keys[n]
            assert changed == moved, (n, i)
