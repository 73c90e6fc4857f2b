"""Anti-entropy's plan and node liveness's plan: pure decisions over a store."""

from __future__ import annotations

import random

from mesh.agent.local.anti_entropy import plan_sync, scaled_interval
from mesh.agent.server.liveness import SERF_CHECK_ID, liveness_plan, reap_plan, unheard_nodes
from mesh.agent.server.reconcile import servers_to_register, split_address
from mesh.catalog.commands import MessageType, encode, encode_batch
from mesh.catalog.fsm import FSM
from mesh.catalog.requests import parse_register
from mesh.catalog.structs import Check, Node, ServerInfo, Service, evolve, with_index

NODE = Node(node="web-1", address="10.0.0.5", id="", datacenter="dc1")
WEB = Service(id="web", service="web", node="web-1", port=80, tags=("v1",))
CHECK = Check(check_id="service:web", name="web check", node="web-1", status="passing", service_id="web",
              service_name="web", service_tags=("v1",), type="ttl")


def remote(services=(), checks=(), node=NODE):
    return {"node": node, "services": {s.id: s for s in services}, "checks": {c.check_id: c for c in checks}}


def test_unknown_node_registers_everything():
    plan = plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, None)
    assert plan.register_node and plan.services == ["web"] and plan.checks == ["service:web"]


def test_in_sync_is_empty_even_with_server_indexes_and_serf():
    serf = Check(check_id=SERF_CHECK_ID, name="Serf Health Status", node="web-1", status="critical")
    there = remote([with_index(WEB, 5, 9)], [with_index(CHECK, 5, 9), serf])
    assert plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, there).empty


def test_missing_changed_and_extra_entries():
    changed = Service(id="web", service="web", node="web-1", port=81, tags=("v1",))
    extra = Service(id="old", service="old", node="web-1")
    extra_check = Check(check_id="old-check", name="x", node="web-1", status="passing")
    plan = plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, remote([changed, extra], [extra_check]))
    assert plan.services == ["web"] and plan.deregister_services == ["old"]
    assert plan.checks == ["service:web"] and plan.deregister_checks == ["old-check"]


def test_status_difference_is_pushed():
    critical = evolve(CHECK, status="critical")
    plan = plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, remote([WEB], [critical]))
    assert plan.checks == ["service:web"] and not plan.services


def test_enable_tag_override_keeps_catalog_tags():
    mine = Service(id="web", service="web", node="web-1", tags=("v1",), enable_tag_override=True)
    theirs = Service(id="web", service="web", node="web-1", tags=("edited",), enable_tag_override=True)
    assert plan_sync(NODE, {"web": mine}, {}, remote([theirs])).services == []


def test_node_address_change_reregisters_the_node():
    moved = Node(node="web-1", address="10.0.0.6", datacenter="dc1")
    assert plan_sync(moved, {}, {}, remote()).register_node


def test_full_sync_period_scales_with_cluster_size():
    rng = random.Random(1)
    small = [scaled_interval(60, 100, rng) for _ in range(200)]
    big = [scaled_interval(60, 8192, rng) for _ in range(200)]
    assert 60 <= min(small) and max(small) <= 120
    assert max(big) > 120 and max(big) <= 60 + 7 * 60


def _fsm_with_nodes(*names: str) -> FSM:
    fsm = FSM()
    for i, name in enumerate(names):
        req = parse_register({"Node": name, "Address": "10.0.0.1",
                              "Check": {"CheckID": SERF_CHECK_ID, "Name": "Serf Health Status", "Status": "passing"}})
        fsm.apply_batch(i + 2, encode_batch([encode(MessageType.REGISTER, req, bytes([i]) * 16)]))
    return fsm


def test_liveness_fails_silent_nodes_and_revives_them():
    fsm = _fsm_with_nodes("a", "b", "leader")
    seen = {"a": 100.0, "b": 95.0, "leader": 0.0}
    assert liveness_plan(fsm.store, seen, now=100.0, timeout=5.0, always_alive="leader") == []
    assert liveness_plan(fsm.store, seen, now=101.0, timeout=5.0, always_alive="leader") == [("b", "critical")]
    req = parse_register({"Node": "b", "Address": "10.0.0.1", "SkipNodeUpdate": True,
                          "Check": {"CheckID": SERF_CHECK_ID, "Name": "Serf Health Status", "Status": "critical"}})
    fsm.apply_batch(10, encode_batch([encode(MessageType.REGISTER, req, b"x" * 16)]))
    seen["a"] = seen["b"] = 106.0
    assert liveness_plan(fsm.store, seen, now=106.5, timeout=5.0, always_alive="leader") == [("b", "passing")]


def test_nodes_without_a_heartbeat_record_are_left_alone_and_reaping_waits():
    fsm = _fsm_with_nodes("a")
    assert liveness_plan(fsm.store, {}, now=1000.0, timeout=5.0) == []
    assert reap_plan(fsm.store, {"a": 0.0}, now=1000.0, reconnect_timeout=10.0) == []  # still passing


def test_first_registration_carries_serf_health():
    assert plan_sync(NODE, {}, {}, None).add_serf_check
    assert plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, remote([WEB], [CHECK])).add_serf_check
    serf = Check(check_id=SERF_CHECK_ID, name="Serf Health Status", node="web-1", status="critical")
    plan = plan_sync(NODE, {"web": WEB}, {"service:web": CHECK}, remote([WEB], [CHECK, serf]))
    assert not plan.add_serf_check  # a critical serfHealth is the leader's verdict: left alone


def test_unheard_nodes_start_their_clock_and_then_fail():
    fsm = _fsm_with_nodes("a", "b")
    seen: dict[str, float] = {"a": 100.0}
    assert unheard_nodes(fsm.store, seen) == ["b"]
    for key in unheard_nodes(fsm.store, seen):
        seen[key] = 100.0
    assert liveness_plan(fsm.store, seen, now=104.0, timeout=5.0) == []
    assert sorted(liveness_plan(fsm.store, seen, now=105.5, timeout=5.0)) == [("a", "critical"), ("b", "critical")]


def test_servers_missing_from_the_catalog_are_reconciled():
    fsm = FSM()
    rows = [ServerInfo("127.0.0.1:8301", "s1", "id1", "127.0.0.1:8300"),
            ServerInfo("127.0.0.2:8301", "s2", "id2", "127.0.0.2:8300"),
            ServerInfo("127.0.0.3:8301", "s3", "id3", "")]
    for i, row in enumerate(rows):
        fsm.apply_batch(i + 1, encode_batch([encode(MessageType.SERVER_UPSERT, row, bytes([i]) * 16)]))
    req = parse_register({"Node": "s1", "Address": "127.0.0.1", "Service": {"ID": "consul", "Service": "consul", "Port": 8300},
                          "Check": {"CheckID": SERF_CHECK_ID, "Name": "Serf Health Status", "Status": "passing"}})
    fsm.apply_batch(10, encode_batch([encode(MessageType.REGISTER, req, b"r" * 16)]))
    voters = ["127.0.0.1:8301", "127.0.0.2:8301", "127.0.0.3:8301", "127.0.0.4:8301"]
    # s1 is complete, s3 has no RPC address yet, the fourth voter has no row yet
    assert [s.node for s in servers_to_register(fsm.store, voters)] == ["s2"]
    assert split_address("127.0.0.2:8300") == ("127.0.0.2", 8300)
    assert split_address("[::1]:8300") == ("::1", 8300)
