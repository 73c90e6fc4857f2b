"""The proxy's metrics: one registry per proxy, served as Prometheus text on its own address.

Per-chunk counts (bytes, connections) are plain integers kept by the splices
(`splice.Traffic`) and turned into metric families when scraped, so the hot path pays an
integer add instead of a locked counter increment. Rare events (handshakes, denials,
dial failures, ejections) use ordinary prometheus-client counters and histograms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .splice import Traffic

__all__ = ["ProxyMetrics", "serve_metrics"]

_HANDSHAKE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _TrafficCollector(Collector):
    def __init__(self, metrics: ProxyMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        opened = CounterMetricFamily("mesh_proxy_connections_opened", "Connections opened, by listener.",
                                     labels=["direction", "upstream"])
        closed = CounterMetricFamily("mesh_proxy_connections_closed", "Connections closed, by listener.",
                                     labels=["direction", "upstream"])
        active = GaugeMetricFamily("mesh_proxy_connections_active", "Connections open now, by listener.",
                                   labels=["direction", "upstream"])
        bytes_ = CounterMetricFamily("mesh_proxy_bytes", "Bytes moved; rx from the side that opened the "
                                     "connection, tx towards it.", labels=["direction", "upstream", "flow"])
        for (direction, upstream), t in sorted(self._metrics.traffic.items()):
            opened.add_metric([direction, upstream], t.opened)
            closed.add_metric([direction, upstream], t.closed)
            active.add_metric([direction, upstream], t.active)
            bytes_.add_metric([direction, upstream, "rx"], t.rx)
            bytes_.add_metric([direction, upstream, "tx"], t.tx)
        yield from (opened, closed, active, bytes_)
        ages = GaugeMetricFamily("mesh_proxy_config_age_seconds",
                                 "Seconds since each watch last heard from the agent.", labels=["watch"])
        for watch, age in sorted(self._metrics.watch_ages.items()):
            ages.add_metric([watch], age())
        yield ages
        now = time.time()
        expiry = GaugeMetricFamily("mesh_proxy_leaf_expiry_seconds", "Seconds until the leaf certificate expires.")
        expiry.add_metric([], self._metrics.leaf_expires - now if self._metrics.leaf_expires else 0.0)
        yield expiry
        streams = GaugeMetricFamily("mesh_proxy_mux_streams_active",
                                    "Streams open on pooled sidecar connections.", labels=["side"])
        pooled = GaugeMetricFamily("mesh_proxy_mux_connections", "Multiplexed sidecar connections open.",
                                   labels=["side"])
        for side, source in sorted(self._metrics.mux_sources.items()):
            conns, active_streams = source()
            pooled.add_metric([side], conns)
            streams.add_metric([side], active_streams)
        yield from (pooled, streams)


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.traffic: dict[tuple[str, str], Traffic] = {}
        self.watch_ages: dict[str, Callable[[], float]] = {}  # watch name -> seconds since its last answer
        self.leaf_expires = 0.0
        self.mux_sources: dict[str, Callable[[], tuple[int, int]]] = {}
        r = self.registry
        self.handshake_seconds = Histogram("mesh_proxy_handshake_seconds", "TLS handshake time.", ["side"],
                                           buckets=_HANDSHAKE_BUCKETS, registry=r)
        self.handshake_failures = Counter("mesh_proxy_handshake_failures", "Refused or failed TLS handshakes.",
                                          ["side", "reason"], registry=r)
        self.authz = Counter("mesh_proxy_authz", "Intention decisions on inbound connections.",
                             ["result"], registry=r)
        self.dial_failures = Counter("mesh_proxy_dial_failures", "Failed attempts to reach an instance.",
                                     ["upstream", "reason"], registry=r)
        self.ejections = Counter("mesh_proxy_ejections", "Instances set aside after repeated failures.",
                                 ["upstream"], registry=r)
        self.refused = Counter("mesh_proxy_refused_connections", "Connections refused before any byte moved.",
                               ["direction", "reason"], registry=r)
        self.streams_per_connection = Histogram(
            "mesh_proxy_mux_streams_per_connection", "Streams carried by a pooled connection over its life.",
            buckets=(1, 2, 5, 10, 50, 100, 1000, 10000, 100000), registry=r)
        self.config_updates = Counter("mesh_proxy_config_updates", "New configuration values applied.",
                                      registry=r)
        self.outlier_returned = Counter("mesh_proxy_outlier_returned", "Ejected instances returned to service "
                                        "by the outlier detection sweep.", registry=r)
        self.idle_closed = Counter("mesh_proxy_idle_closed", "Connections closed by idle_timeout_ms.", registry=r)
        self.ready = Gauge("mesh_proxy_ready", "1 once the listeners are open.", registry=r)
        self.registry.register(_TrafficCollector(self))

    def traffic_for(self, direction: str, upstream: str) -> Traffic:
        key = (direction, upstream)
        traffic = self.traffic.get(key)
        if traffic is None:
            traffic = self.traffic[key] = Traffic()
        return traffic

    def config_age(self) -> float:
        """The oldest watch's age: how stale the configuration may be."""
        return max((age() for age in self.watch_ages.values()), default=0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_metrics(metrics: ProxyMetrics, host: str, port: int) -> asyncio.Server:
    """`Config.prometheus_bind_addr`: Prometheus text for any GET on its own address.

    A few lines of asyncio instead of a web framework: it answers one request per
    connection, reads at most 8 KiB of request for at most 5 s, and only aiohttp's
    server in agent/http/ is the agent's HTTP API."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"GET "):
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            else:
                body = metrics.render()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=8192, backlog=16)
