"""Prometheus metrics of the check runners, registered once in the agent's registry.

Defined at import (a module is imported once per process) so every runner shares the
same families; labels are the check kind and the probe's raw result, never a check ID,
which would grow without bound as checks come and go.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from mesh.agent.metrics import REGISTRY

__all__ = ["CHECK_RUNS", "CHECK_SECONDS"]

CHECK_RUNS = Counter(
    "mesh_check_runs_total",
    "Health-check probes run, by check kind and the probe's result (before thresholds)",
    ["kind", "status"],
    registry=REGISTRY,
)
CHECK_SECONDS = Histogram(
    "mesh_check_seconds",
    "Time one health-check probe took, by check kind",
    ["kind"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
