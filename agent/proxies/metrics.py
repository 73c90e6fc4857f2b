"""Prometheus metrics of the proxy supervisor, in the agent's registry.

Labels are states and causes, never a proxy ID (IDs come and go without bound).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from mesh.agent.metrics import REGISTRY

__all__ = ["PROXIES", "STARTS", "RESTARTS", "ADOPTIONS", "EXITS", "KILLS", "LOOPS"]

PROXIES = Gauge("mesh_supervisor_proxies", "Supervised sidecar proxies by state", ["state"], registry=REGISTRY)
STARTS = Counter("mesh_supervisor_starts_total", "Proxy processes launched (first starts and restarts)",
                 registry=REGISTRY)
RESTARTS = Counter("mesh_supervisor_restarts_total", "Proxy processes launched again after an exit",
                   registry=REGISTRY)
ADOPTIONS = Counter("mesh_supervisor_adoptions_total",
                    "Live proxies of a previous agent taken over through their pidfiles", registry=REGISTRY)
EXITS = Counter("mesh_supervisor_exits_total",
                "Proxy processes that ended, by how: stopped (asked to), crashed (while wanted), "
                "spawn_failed (could not be launched)", ["how"], registry=REGISTRY)
KILLS = Counter("mesh_supervisor_kills_total", "Proxies sent SIGKILL after outstaying their drain timeout",
                registry=REGISTRY)
LOOPS = Counter("mesh_supervisor_loop_runs_total", "Supervisor loop iterations", registry=REGISTRY)
