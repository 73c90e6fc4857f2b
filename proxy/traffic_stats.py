"""Traffic management's metrics: where requests went, and what was refused on the way.

Counted per request, so kept as plain integers in dicts (an add, no lock) and turned
into metric families when scraped, as proxy/http/stats.py does for requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["TrafficStats"]

Ejected = Callable[[], Iterable[tuple[str, str, int]]]  # (upstream, target, instances ejected now)


def _counter(name: str, text: str, labels: list[str], counts: dict[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, count in sorted(counts.items()):
        family.add_metric(list(key), count)
    return family


class TrafficStats(Collector):
    def __init__(self, ejected: Ejected | None = None) -> None:
        self.targets: dict[tuple[str, str], int] = {}  # (upstream, target ID) -> requests or connections
        self.failovers: dict[tuple[str, str], int] = {}  # the same, sent to a failover target
        self.overloads: dict[tuple[str, str], int] = {}  # (upstream, limit) -> refused
        self.limited: dict[str, int] = {}  # rate limit route -> refused
        self._ejected = ejected

    def request(self, upstream: str, target: str, failover: bool) -> None:
        key = (upstream, target)
        self.targets[key] = self.targets.get(key, 0) + 1
        if failover:
            self.failovers[key] = self.failovers.get(key, 0) + 1

    def overloaded(self, upstream: str, limit: str) -> None:
        key = (upstream, limit)
        self.overloads[key] = self.overloads.get(key, 0) + 1

    def rate_limited(self, route: str) -> None:
        self.limited[route] = self.limited.get(route, 0) + 1

    def collect(self) -> Iterator[Any]:
        yield _counter("mesh_proxy_target_requests", "Requests (http) or connections (tcp) sent to each discovery "
                       "chain target (service, subset, datacenter).", ["upstream", "target"], self.targets)
        yield _counter("mesh_proxy_failover_requests", "Requests or connections sent to a failover target because "
                       "the ones before it had no healthy instance.", ["upstream", "target"], self.failovers)
        yield _counter("mesh_proxy_overloaded", "Requests or connections refused at once by a circuit breaker "
                       "limit (503, x-mesh-overloaded).", ["upstream", "limit"], self.overloads)
        yield _counter("mesh_proxy_rate_limited", "Inbound requests refused with 429 by the service's rate limits, "
                       "by the limit that applied.", ["route"], {(route,): n for route, n in self.limited.items()})
        ejected = GaugeMetricFamily("mesh_proxy_ejected_instances", "Instances set aside by outlier detection now.",
                                    labels=["upstream", "target"])
        for upstream, target, count in sorted(self._ejected() if self._ejected is not None else ()):
            ejected.add_metric([upstream, target], count)
        yield ejected
