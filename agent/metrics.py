"""Prometheus metrics of the agent, and their JSON rendering for /v1/agent/metrics.

One registry per process (an agent is one process). Names are `mesh_<subsystem>_*`;
the JSON form mirrors Consul's `{Timestamp, Gauges, Counters, Samples}` with dotted names.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["REGISTRY", "ACL_METRICS", "RAFT", "HTTP", "RPC", "AGENT", "AE", "LEADER", "DNS", "INTENTIONS", "CENTRAL", "CA", "render_prometheus", "render_json"]

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Raft:
    def __init__(self) -> None:
        self.apply_seconds = Histogram(
            "mesh_raft_apply_seconds", "Time from submitting a command to its commit and local apply",
            registry=REGISTRY, buckets=_LATENCY_BUCKETS,
        )
        self.applies = Counter("mesh_raft_apply_total", "Commands applied through Raft, by result", ["result"], registry=REGISTRY)
        self.batch_size = Histogram(
            "mesh_raft_batch_commands", "Commands per group-committed Raft entry",
            registry=REGISTRY, buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000),
        )
        self.fsm_apply_seconds = Histogram(
            "mesh_fsm_apply_seconds", "FSM apply time per command type", ["type"],
            registry=REGISTRY, buckets=_LATENCY_BUCKETS,
        )
        self.commit_index = Gauge("mesh_raft_commit_index", "Raft commit index", registry=REGISTRY)
        self.applied_index = Gauge("mesh_raft_applied_index", "Last Raft index applied to the FSM", registry=REGISTRY)
        self.term = Gauge("mesh_raft_term", "Raft term", registry=REGISTRY)
        self.is_leader = Gauge("mesh_raft_leader", "1 when this server is the Raft leader", registry=REGISTRY)
        self.peers = Gauge("mesh_raft_peers", "Voters in the Raft configuration", registry=REGISTRY)
        self.last_contact = Gauge("mesh_raft_last_contact_seconds", "Seconds since the leader was last heard from", registry=REGISTRY)
        self.leader_changes = Counter("mesh_raft_leader_changes_total", "Leadership changes seen", registry=REGISTRY)
        self.tick_errors = Counter("mesh_raft_tick_errors_total", "Exceptions raised in pysyncobj's tick thread", registry=REGISTRY)
        self.truncations = Counter(
            "mesh_raft_unsafe_truncations_total", "Already-applied entries pysyncobj reported truncating", registry=REGISTRY
        )
        self.recoveries = Counter("mesh_raft_watchdog_recoveries_total", "Times the watchdog moved broken Raft data aside", registry=REGISTRY)
        self.snapshots = Counter("mesh_raft_snapshots_total", "Snapshots written, by result", ["result"], registry=REGISTRY)
        self.snapshot_seconds = Gauge("mesh_raft_last_snapshot_seconds", "Time to encode and write the last snapshot", registry=REGISTRY)
        self.watchdog_runs = Counter("mesh_raft_watchdog_runs_total", "Watchdog loop iterations", registry=REGISTRY)
        self.wire_rejects = Counter(
            "mesh_raft_wire_rejects_total", "Raft-port connections dropped or refused, by reason", ["reason"], registry=REGISTRY
        )
        self.wire_authenticated = Counter(
            "mesh_raft_wire_authenticated_total", "Raft-port connections whose first frame authenticated", registry=REGISTRY
        )


class _Http:
    def __init__(self) -> None:
        self.requests = Counter("mesh_http_requests_total", "HTTP API requests by route and status code", ["route", "code"], registry=REGISTRY)
        self.seconds = Histogram("mesh_http_request_seconds", "HTTP API request time (blocking waits included)", ["route"], registry=REGISTRY, buckets=_LATENCY_BUCKETS)
        self.blocking = Gauge("mesh_http_blocking_queries", "Blocking queries waiting", registry=REGISTRY)
        self.connections = Gauge("mesh_http_connections", "Open connections to the HTTP API", registry=REGISTRY)
        self.rejected = Counter("mesh_http_connections_rejected_total",
                                "HTTP connections closed by the agent's limits, by reason (per_client_limit, header_timeout)",
                                ["reason"], registry=REGISTRY)


class _Rpc:
    def __init__(self) -> None:
        self.requests = Counter("mesh_rpc_requests_total", "Server RPC requests by method and result", ["method", "result"], registry=REGISTRY)
        self.join_attempts = Counter("mesh_join_attempts_total", "Attempts to contact -retry-join addresses", registry=REGISTRY)
        self.connections = Gauge("mesh_rpc_connections", "Open connections to the server RPC port", registry=REGISTRY)
        self.inflight = Gauge("mesh_rpc_inflight_requests", "RPC requests being served (blocking reads included)", registry=REGISTRY)
        self.rejected = Counter("mesh_rpc_connections_rejected_total",
                                "RPC connections closed by the server's limits, by reason (per_client_limit, "
                                "handshake_timeout, handshake_failed, frame_timeout, bad_frame, peer_identity)",
                                ["reason"], registry=REGISTRY)
        self.uncertified_denied = Counter(
            "mesh_rpc_uncertified_denied_total", "Calls refused on TLS connections without a client certificate "
            "(auto_encrypt.allow_tls lets those call AutoEncrypt.Sign only)", registry=REGISTRY)
        self.auto_encrypt = Counter("mesh_auto_encrypt_sign_total",
                                    "This client's auto_encrypt certificate requests, by result (ok, failed)",
                                    ["result"], registry=REGISTRY)
        self.auto_encrypt_expiry = Gauge("mesh_auto_encrypt_cert_expiry_seconds",
                                         "Seconds until this client's auto_encrypt certificate expires",
                                         registry=REGISTRY)


class _Agent:
    def __init__(self) -> None:
        self.heartbeats = Counter("mesh_agent_heartbeats_total", "Heartbeats sent to the servers, by result", ["result"], registry=REGISTRY)
        self.services = Gauge("mesh_agent_local_services", "Services defined on this agent", registry=REGISTRY)
        self.checks = Gauge("mesh_agent_local_checks", "Checks defined on this agent", registry=REGISTRY)


class _AntiEntropy:
    def __init__(self) -> None:
        self.runs = Counter("mesh_anti_entropy_runs_total", "Anti-entropy sync rounds", registry=REGISTRY)
        self.failures = Counter("mesh_anti_entropy_failures_total", "Anti-entropy rounds that failed", registry=REGISTRY)
        self.writes = Counter("mesh_anti_entropy_writes_total", "Catalog writes anti-entropy made", registry=REGISTRY)


class _Leader:
    def __init__(self) -> None:
        self.liveness_runs = Counter("mesh_leader_liveness_runs_total", "Leader liveness loop iterations", registry=REGISTRY)
        self.nodes_failed = Counter("mesh_leader_nodes_failed_total", "Nodes marked failed (serfHealth critical)", registry=REGISTRY)
        self.ca_errors = Counter("mesh_leader_ca_errors_total", "Failed CA maintenance runs (creation, rotation, pruning)", registry=REGISTRY)
        self.reads_forwarded = Counter(
            "mesh_server_reads_forwarded_total", "Default reads a follower behind the leader passed to the leader", registry=REGISTRY
        )
        self.session_runs = Counter("mesh_leader_session_runs_total", "Leader session upkeep iterations", registry=REGISTRY)
        self.session_renewals = Counter("mesh_leader_session_renewals_total", "Session TTL renewals the leader took",
                                        registry=REGISTRY)
        self.sessions_invalidated = Counter(
            "mesh_leader_sessions_invalidated_total", "Sessions the leader invalidated (TTL, node or checks)", registry=REGISTRY
        )


class _DNS:
    def __init__(self) -> None:
        self.queries = Counter("mesh_dns_queries_total", "DNS queries by qtype and rcode", ["qtype", "rcode"], registry=REGISTRY)
        self.seconds = Histogram("mesh_dns_query_seconds", "Time to answer a DNS query (a first lookup includes loading the name)",
                                 registry=REGISTRY, buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1, 2.5))
        self.view_age = Gauge("mesh_dns_view_age_seconds", "Age of the oldest name in the DNS view since a server confirmed it", registry=REGISTRY)
        self.view_names = Gauge("mesh_dns_view_names", "Names the DNS view watches", registry=REGISTRY)
        self.cache_hits = Counter("mesh_dns_cache_hits_total", "DNS queries answered from precomputed wire answers",
                                  registry=REGISTRY)


class _Intentions:
    def __init__(self) -> None:
        self.decisions = Counter("mesh_intentions_decisions_total", "Authorize decisions by result", ["result"],
                                 registry=REGISTRY)
        self.cache_age = Gauge("mesh_intentions_cache_age_seconds", "Seconds since a server last confirmed the agent's intentions",
                               registry=REGISTRY)
        self.cached = Gauge("mesh_intentions_cached", "Intentions in the agent's cache", registry=REGISTRY)


class _Central:
    def __init__(self) -> None:
        self.age = Gauge("mesh_central_config_age_seconds",
                         "Seconds since a server last confirmed the config entries merged into proxy registrations",
                         registry=REGISTRY)
        self.refreshes = Counter("mesh_central_config_refreshes_total", "Answers of the config entry watches",
                                 ["kind"], registry=REGISTRY)


class _CA:
    def __init__(self) -> None:
        self.root_expiry = Gauge("mesh_ca_root_expiry_seconds", "Seconds until each trusted root expires", ["root"],
                                 registry=REGISTRY)
        self.leaf_expiry = Gauge("mesh_ca_leaf_expiry_seconds", "Seconds until each cached leaf expires", ["service"],
                                 registry=REGISTRY)
        self.sign_seconds = Histogram("mesh_ca_sign_seconds", "Time for a server to sign a leaf (serial included)",
                                      registry=REGISTRY, buckets=_LATENCY_BUCKETS)
        self.sign_rate_limited = Counter("mesh_ca_sign_rate_limited_total",
                                         "Signings refused by CSRMaxPerSecond/CSRMaxConcurrent (agents retry)",
                                         registry=REGISTRY)
        self.sign_errors = Counter("mesh_ca_sign_errors_total", "Leaf signing requests refused or failed", registry=REGISTRY)
        self.rotations = Counter("mesh_ca_rotations_total", "Root rotations this server carried out", registry=REGISTRY)
        self.leaf_renewals = Counter("mesh_ca_leaf_renewals_total", "Leaves this agent renewed (expiry or root change)",
                                     registry=REGISTRY)
        self.leaf_renewed_at = Histogram(
            "mesh_ca_leaf_renewed_at_fraction", "How far into the old leaf's lifetime its successor arrived "
            "(due between 0.6 and 0.9; above 0.9 is late)", registry=REGISTRY,
            buckets=(0.1, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0))
        self.leaf_renewal_errors = Counter("mesh_ca_leaf_renewal_errors_total",
                                           "Failed leaf renewals (the cached leaf kept serving)", registry=REGISTRY)
        self.checks = Counter("mesh_ca_metrics_runs_total", "Roots watch results (CA expiry metrics refreshed)", registry=REGISTRY)


class _ACL:
    def __init__(self) -> None:
        self.cache = Counter("mesh_acl_token_cache_total",
                             "Token resolutions on this agent: hit, miss, not_found, down (servers unreachable)",
                             ["result"], registry=REGISTRY)
        self.denied = Counter("mesh_acl_denied_total", "Requests answered 403 by ACLs, by route", ["route"],
                              registry=REGISTRY)


ACL_METRICS = _ACL()
AGENT = _Agent()
CA = _CA()
INTENTIONS = _Intentions()
CENTRAL = _Central()
DNS = _DNS()
AE = _AntiEntropy()
LEADER = _Leader()
RAFT = _Raft()
HTTP = _Http()
RPC = _Rpc()


def render_prometheus() -> bytes:
    return generate_latest(REGISTRY)


def render_json() -> dict[str, Any]:
    """Consul's /v1/agent/metrics shape built from the same registry."""
    gauges: list[dict[str, Any]] = []
    counters: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    for family in REGISTRY.collect():
        name = family.name.replace("_", ".")
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            if family.type == "gauge":
                gauges.append({"Name": name, "Value": sample.value, "Labels": labels})
            elif family.type == "counter" and sample.name.endswith("_total"):
                counters.append({"Name": name, "Count": int(sample.value), "Sum": sample.value, "Labels": labels})
            elif family.type == "histogram" and sample.name.endswith("_count"):
                samples.append({"Name": name, "Count": int(sample.value), "Labels": labels})
            elif family.type == "histogram" and sample.name.endswith("_sum"):
                for s in samples:
                    if s["Name"] == name and s["Labels"] == labels:
                        s["Sum"] = sample.value
                        s["Mean"] = sample.value / s["Count"] if s["Count"] else 0
    stamp = time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime())
    return {"Timestamp": stamp, "Gauges": gauges, "Points": [], "Counters": counters, "Samples": samples}
