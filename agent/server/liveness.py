"""Node liveness, decided by the leader from agents' heartbeats.

Every agent (clients and servers) heartbeats to the servers; the leader remembers when
it last heard from each node. A node silent for longer than the liveness timeout gets
its `serfHealth` check set critical ("Agent not live or unreachable"), so its services
drop out of `?passing` and DNS; a heartbeat sets it passing again. A node failed for
longer than the reconnect timeout is reaped (deregistered).

The plan functions are pure; the leader's duties (agent/server/leader.py) apply them.
The serfHealth check itself is catalog.health's (the local side keeps it too). The
memory of heartbeats is the leader's alone: a new leader starts every node's clock at
its election, which errs on the side of not failing nodes during a failover; a node it
has never heard from (its heartbeats went to a leader that has since lost office, or
never arrived) starts its clock when the leader first notices it, so it still fails.
"""

from __future__ import annotations

from mesh.catalog.health import (
    ALIVE_OUTPUT,
    DEAD_OUTPUT,
    SERF_CHECK_ID,
    SERF_CHECK_NAME,
    serf_check,
)
from mesh.catalog.store import Store
from mesh.catalog.structs import CRITICAL, PASSING

__all__ = ["SERF_CHECK_ID", "SERF_CHECK_NAME", "ALIVE_OUTPUT", "DEAD_OUTPUT", "HEARTBEAT_BUDGET", "liveness_plan",
           "reap_plan", "unheard_nodes", "serf_check"]

# heartbeats per second the leader is willing to handle; agents slow down past it
HEARTBEAT_BUDGET = 1000.0


def unheard_nodes(store: Store, last_seen: dict[str, float]) -> list[str]:
    """Agent nodes (those with serfHealth) the leader has no heartbeat time for. Their
    clock starts when the leader first notices them: a node whose heartbeats never
    reached this leader still fails one liveness timeout later."""
    return [key for key, checks in store.checks.items() if SERF_CHECK_ID in checks and key not in last_seen]


def liveness_plan(
    store: Store, last_seen: dict[str, float], now: float, timeout: float, always_alive: str = ""
) -> list[tuple[str, str]]:
    """(node name, new serfHealth status) for every node whose status must change."""
    changes: list[tuple[str, str]] = []
    for node_key, checks in store.checks.items():
        serf = checks.get(SERF_CHECK_ID)
        node = store.nodes.get(node_key)
        if serf is None or node is None:
            continue
        seen = last_seen.get(node_key)
        if seen is None:
            continue
        alive = node_key == always_alive.lower() or now - seen <= timeout
        if alive and serf.status != PASSING:
            changes.append((node.node, PASSING))
        elif not alive and serf.status != CRITICAL:
            changes.append((node.node, CRITICAL))
    return changes


def reap_plan(store: Store, failed_since: dict[str, float], now: float, reconnect_timeout: float) -> list[str]:
    """Nodes whose serfHealth has been critical for longer than the reconnect timeout."""
    out = []
    for node_key, since in failed_since.items():
        checks = store.checks.get(node_key, {})
        serf = checks.get(SERF_CHECK_ID)
        if serf is not None and serf.status == CRITICAL and now - since > reconnect_timeout:
            node = store.nodes.get(node_key)
            if node is not None:
                out.append(node.node)
    return out
