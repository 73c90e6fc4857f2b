"""The leader's reconciliation of servers into the catalog (Consul's reconcileMember).

Every server must appear in the catalog as a node with the `consul` service on its RPC
port and a `serfHealth` check, as soon as it is a voter with a row in the servers
table, whether or not its own agent has synced yet (anti-entropy may be waiting out a
retry while the cluster forms). The plan is pure: it reads the store and the voter set
and says which servers need registering; the leader's loop applies it.
"""

from __future__ import annotations

from collections.abc import Iterable

from mesh.catalog.health import SERF_CHECK_ID
from mesh.catalog.store import Store
from mesh.catalog.structs import ServerInfo

__all__ = ["CONSUL_SERVICE", "servers_to_register", "split_address"]

CONSUL_SERVICE = "consul"


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port); port 0 when it cannot be read."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port) if port.isdigit() else 0


def servers_to_register(store: Store, voters: Iterable[str]) -> list[ServerInfo]:
    """Voters whose catalog entry lacks the node, the consul service or serfHealth."""
    out = []
    for raft_address in sorted(voters):
        info = store.servers.get(raft_address)
        if info is None or not info.node or not info.rpc_address:
            continue  # its row is not replicated yet: nothing to register it with
        key = info.node.lower()
        services = store.node_services(info.node)
        has_consul = any(s.service == CONSUL_SERVICE for s in services.values())
        has_serf = SERF_CHECK_ID in store.checks.get(key, {})
        if key not in store.nodes or not has_consul or not has_serf:
            out.append(info)
    return out
