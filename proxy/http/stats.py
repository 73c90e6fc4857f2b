"""Per-route HTTP counts: plain integers on the hot path, metric families when scraped.

Labels: direction (inbound: requests to this service; outbound: to an upstream),
upstream (empty inbound), route (the service-router route that matched, "default"
otherwise). Families: requests by status class, a latency histogram, retries, timeouts,
denials (403 by an L7 intention).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

__all__ = ["HttpStats", "RouteStats", "LATENCY_BUCKETS"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class RouteStats:
    __slots__ = ("by_class", "buckets", "latency_sum", "retries", "timeouts", "denied", "count")

    def __init__(self) -> None:
        self.by_class = [0, 0, 0, 0, 0]
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.count = 0
        self.retries = 0
        self.timeouts = 0
        self.denied = 0

    def observe(self, status: int, seconds: float) -> None:
        cls = status // 100 - 1
        if 0 <= cls < 5:
            self.by_class[cls] += 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds
        self.count += 1


class HttpStats(Collector):
    def __init__(self) -> None:
        self.routes: dict[tuple[str, str, str], RouteStats] = {}

    def route(self, direction: str, upstream: str, route: str) -> RouteStats:
        key = (direction, upstream, route)
        stats = self.routes.get(key)
        if stats is None:
            stats = self.routes[key] = RouteStats()
        return stats

    def collect(self) -> Iterator[Any]:
        labels = ["direction", "upstream", "route"]
        requests = CounterMetricFamily("mesh_proxy_http_requests", "HTTP requests answered, by status class.",
                                       labels=[*labels, "class"])
        latency = HistogramMetricFamily("mesh_proxy_http_request_seconds",
                                        "Time from a request's head to its response's end.", labels=labels)
        retries = CounterMetricFamily("mesh_proxy_http_retries", "Requests sent again.", labels=labels)
        timeouts = CounterMetricFamily("mesh_proxy_http_timeouts", "Requests ended by a timeout (504).",
                                       labels=labels)
        denied = CounterMetricFamily("mesh_proxy_http_denied", "Requests refused by an L7 intention (403).",
                                     labels=labels)
        for key, s in sorted(self.routes.items()):
            values = list(key)
            for name, count in zip(_CLASSES, s.by_class, strict=True):
                requests.add_metric([*values, name], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), s.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric(values, buckets, s.latency_sum)
            retries.add_metric(values, s.retries)
            timeouts.add_metric(values, s.timeouts)
            denied.add_metric(values, s.denied)
        yield from (requests, latency, retries, timeouts, denied)
