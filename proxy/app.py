"""One sidecar proxy: its watches feed a ConfigBuilder; each new value becomes current; the
listeners follow it.

Lifecycle: find the registration (by `-sidecar-for`, `-proxy-id`, or flags), start the
watches, wait for the first complete configuration (registration, roots, a leaf that
verifies), open the listeners, tell the agent it is ready, then keep applying changes
until asked to stop. A stop drains: the listeners close, open connections get up to
`drain_timeout` seconds to finish, the rest are cut.

With the agent or every server gone the watches fail and back off, and the proxy keeps
serving on the last configuration; `mesh_proxy_config_age_seconds` says how old it is.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .balancer import Balancer
from .config import ConfigBuilder, ConfigError, ProxyConfig, Registration, UpstreamSpec
from .errors import StartError
from .http.access import AccessLog
from .http.exchange import POOL_IDLE_SECONDS, InboundHttp, Observer, OutboundHttp
from .http.forward import ConnPool
from .http.policy import new_budget
from .http.server_conn import KEEPALIVE_IDLE, sweep_stalled
from .http.spans import SpanExporter
from .http.stats import HttpStats
from .inbound import InboundListener
from .metrics import ProxyMetrics, serve_metrics
from .outbound import Dialer, UpstreamListener
from .splice import sweep_idle
from .traffic.limits import Breaker
from .traffic_stats import TrafficStats
from .watches import AgentWatches

__all__ = ["ProxyOptions", "Proxy", "StartError"]

HTTP_SWEEP_SECONDS = 5.0
OUTLIER_SWEEP_SECONDS = 0.5  # the finest passive_health_check interval honoured


@dataclass(frozen=True)
class ProxyOptions:
    sidecar_for: str = ""
    proxy_id: str = ""
    service: str = ""  # flags mode: the identity
    listen: str = ""  # flags mode: public listener host:port
    service_addr: str = ""  # flags mode: the local app host:port
    upstreams: tuple[UpstreamSpec, ...] = ()
    register: bool = False
    register_id: str = ""
    supervised: bool = False  # started by the agent's supervisor (MESH_PROXY_SUPERVISED)
    drain_timeout: float = 5.0
    ready_interval: float = 30.0


class Proxy:
    def __init__(self, client: Any, options: ProxyOptions, *, log: Any, refused: Callable[..., None] | None = None,
                 metrics: ProxyMetrics | None = None) -> None:
        self.client = client
        self.options = options
        self.log = log
        self.refused = refused or (lambda event, **fields: log.info(event, **fields))
        self.metrics = metrics or ProxyMetrics()
        self.builder = ConfigBuilder()
        self.current: ProxyConfig | None = None
        self.changed = asyncio.Event()
        self.dialer = Dialer(self.metrics)
        self.inbound: InboundListener | None = None
        self.public_address: tuple[str, int] | None = None
        self.upstreams: dict[tuple[str, str, int], UpstreamListener] = {}
        self.balancers: dict[tuple[str, str], Balancer] = {}  # (upstream key, target ID)
        self.breakers: dict[str, tuple[Any, Breaker]] = {}  # upstream key -> (its Limits, breaker)
        self.traffic = TrafficStats(self._ejected)
        self.metrics.registry.register(self.traffic)
        self.watches: AgentWatches | None = None
        self._metrics_server: asyncio.AbstractServer | None = None
        self._problem_logged = ""
        self._chain_problems: dict[str, str] = {}
        self.http_stats = HttpStats()
        self.metrics.registry.register(self.http_stats)
        self.peer_pool = ConnPool()  # HTTP connections to other sidecars, shared by the upstreams
        self.budgets: dict[str, Any] = {}
        self.access = AccessLog(self.log)
        self.spans = SpanExporter(options.service or options.sidecar_for or "proxy", self.log)
        self.observer = Observer(self.http_stats, self._access_log, self.spans)

    def _access_log(self) -> AccessLog | None:
        """The access log when the registration turns it on (read per request)."""
        config = self.current
        return self.access if config is not None and self.access.configure(config.registration.access_logs) else None

    def _budget_for(self, key: str) -> Any:
        budget = self.budgets.get(key)
        if budget is None:
            budget = self.budgets[key] = new_budget()
        return budget

    def balancer_for(self, spec: UpstreamSpec, resolver: Any, target: Any) -> Balancer:
        """The state of one target of one upstream: kept while its load balancer and
        passive health check settings stay the same."""
        key = (spec.key, target.id)
        balancer = self.balancers.get(key)
        if balancer is None or not balancer.fits(resolver.lb, spec.passive_health_check):
            balancer = self.balancers[key] = Balancer(resolver.lb, spec.passive_health_check)
            if self.current is not None:
                balancer.outlier.set_hosts([e.key for e in self.current.endpoints.get(target.id, ())])
        return balancer

    def breaker_for(self, spec: UpstreamSpec) -> Breaker | None:
        """The upstream's circuit breaker; None when it sets no limits."""
        if not spec.limits:
            return None
        held = self.breakers.get(spec.key)
        if held is None or held[0] != spec.limits:
            held = self.breakers[spec.key] = (spec.limits, Breaker(spec.limits))
        return held[1]

    def _ejected(self) -> list[tuple[str, str, int]]:
        return [(upstream, target, b.ejected_count()) for (upstream, target), b in self.balancers.items()]

    def _inbound_listener(self) -> InboundListener:
        http = InboundHttp(self.config, self.observer, self.refused, self.traffic)
        return InboundListener(self.config, self.metrics, self.refused, http)

    def _outbound_http(self, listener: UpstreamListener) -> OutboundHttp:
        return OutboundHttp(listener, self.config, self.dialer, self.observer, self.refused,
                            self.balancer_for, self.peer_pool, self._budget_for, self.metrics, self.traffic,
                            self.breaker_for)

    def config(self) -> ProxyConfig:
        assert self.current is not None
        return self.current

    # ---- configuration -------------------------------------------------------------------
    def rebuild(self) -> None:
        """Called by the watches after each change they saw."""
        registration = self.builder.registration
        if registration is not None and self.watches is not None:
            self.builder.plan(registration)
            self.watches.follow_instances(self.builder.watch_keys())
            problems = dict(self.builder.chain_problems)
            for upstream, error in problems.items():
                if self._chain_problems.get(upstream) != error:  # once per new problem, not per rebuild
                    self.log.warning("upstream_chain_refused", upstream=upstream, error=error,
                                     keeps="the previous plan, or the default one")
            self._chain_problems = problems
        try:
            config = self.builder.build()
        except ConfigError as exc:
            self.log.warning("proxy_config_refused", error=str(exc))
            return
        if config is None:
            if self.builder.problem != self._problem_logged:
                self._problem_logged = self.builder.problem
                self.log.info("proxy_waiting", reason=self.builder.problem)
            return
        self.current = config
        self.metrics.leaf_expires = config.leaf_expires
        self.metrics.config_updates.inc()
        self.changed.set()

    def set_registration(self, registration: Registration) -> None:
        self.builder.registration = registration
        if self.watches is not None:
            self.watches.follow(registration)
        self.rebuild()

    # ---- listeners -----------------------------------------------------------------------
    async def _apply_listeners(self) -> None:
        config = self.config()
        reg = config.registration
        if reg.public_port and self.inbound is None:
            self.inbound = self._inbound_listener()
            self.public_address = await self.inbound.start(reg.public_address, reg.public_port)
            self.log.info("listener_started", listener="public listener",
                          bind_addr=f"{reg.public_address}:{self.public_address[1]}",
                          app=f"{reg.local_address}:{reg.local_port}")
        elif self.inbound is not None and self.public_address is not None and \
                (reg.public_port, reg.public_address) != (self.public_address[1], self.public_address[0]) and \
                reg.public_port:
            old = self.inbound
            self.inbound = self._inbound_listener()
            await old.stop_accepting()
            self.public_address = await self.inbound.start(reg.public_address, reg.public_port)
            self.log.info("listener_moved", listener="public listener", bind_addr=f"{reg.public_address}:{reg.public_port}")
        wanted = {(u.destination_name, u.bind_address, u.bind_port): u for u in reg.upstreams}
        for key in [k for k in self.upstreams if k not in wanted]:
            listener = self.upstreams.pop(key)
            await listener.stop_accepting()
            self.log.info("listener_stopped", listener="upstream", upstream=key[0], bind_addr=f"{key[1]}:{key[2]}")
        for key, spec in wanted.items():
            listener = self.upstreams.get(key)
            if listener is not None:
                listener.spec = spec
                continue
            listener = UpstreamListener(spec, self.config, self.dialer, self.metrics, self.refused, self,
                                        self._outbound_http)
            try:
                await listener.start()
            except OSError as exc:
                self.log.error("listener_failed", listener="upstream", upstream=spec.destination_name,
                               bind_addr=f"{spec.bind_address}:{spec.bind_port}", error=exc.strerror or str(exc))
                continue
            self.upstreams[key] = listener
            self.log.info("listener_started", listener="upstream", upstream=spec.destination_name,
                          bind_addr=f"{spec.bind_address}:{spec.bind_port}")
        live = {(plan.upstream, t.id) for plan in config.plans.values() for t in plan.targets}
        for key in [k for k in self.balancers if k not in live]:
            del self.balancers[key]  # a target no chain uses any more
        for (_, target), balancer in self.balancers.items():  # the share MaxEjectionPercent is of
            balancer.outlier.set_hosts([e.key for e in config.endpoints.get(target, ())])
        for key in [k for k in self.breakers if k not in config.plans]:
            del self.breakers[key]

    def listeners(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.public_address is not None:
            out["public"] = f"{self.public_address[0]}:{self.public_address[1]}"
        out["upstreams"] = {name: f"{addr}:{port}" for (name, addr, port) in self.upstreams}
        return out

    # ---- lifecycle -----------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; raises StartError when it cannot start."""
        self.watches = AgentWatches(self.client, self, self.log)
        await self.watches.start(self.options)
        try:
            await self._wait_first_config(stop)
            if stop.is_set():
                return
            await self._open(stop)
            sweeper = asyncio.get_running_loop().create_task(self._idle_sweeper(), name="idle-sweeper")
            http_sweeper = asyncio.get_running_loop().create_task(self._http_sweeper(), name="http-sweeper")
            outlier_sweeper = asyncio.get_running_loop().create_task(self._outlier_sweeper(), name="outlier-sweeper")
            while not stop.is_set():
                self.changed.clear()
                await self._apply_listeners()
                waiter = asyncio.ensure_future(self.changed.wait())
                stopper = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
                self.dialer.prune_idle()
                self.peer_pool.prune(POOL_IDLE_SECONDS)
                if self.inbound is not None and self.inbound.http is not None:
                    self.inbound.http.pool.prune(POOL_IDLE_SECONDS)
            sweeper.cancel()
            http_sweeper.cancel()
            outlier_sweeper.cancel()
        finally:
            await self._drain()
            await self.watches.stop()

    async def _wait_first_config(self, stop: asyncio.Event) -> None:
        while self.current is None and not stop.is_set():
            waiter = asyncio.ensure_future(self.changed.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            fatal = self.watches.fatal if self.watches is not None else None
            if fatal:
                raise StartError(fatal)

    async def _open(self, stop: asyncio.Event) -> None:
        config = self.config()
        try:
            await self._apply_listeners()
        except OSError as exc:
            reg = config.registration
            raise StartError(f"cannot bind the public listener {reg.public_address}:{reg.public_port}: "
                             f"{exc.strerror or exc}") from None
        if config.registration.prometheus_bind_addr:
            host, _, port = config.registration.prometheus_bind_addr.rpartition(":")
            try:
                self._metrics_server = await serve_metrics(self.metrics, host or "127.0.0.1", int(port))
            except (OSError, ValueError) as exc:
                self.log.error("metrics_listener_failed", addr=config.registration.prometheus_bind_addr, error=str(exc))
        self.metrics.ready.set(1)
        self.log.info("proxy_ready", proxy_id=config.registration.proxy_id, service=config.registration.service,
                      **{k: v for k, v in self.listeners().items() if k == "public"},
                      upstreams=len(self.upstreams))
        assert self.watches is not None
        self.watches.report_ready_soon()

    async def _idle_sweeper(self) -> None:
        """`idle_timeout_ms` (mesh): close connections that moved nothing for that long."""
        while True:
            timeout = self.current.registration.idle_timeout if self.current else 0.0
            if timeout <= 0:
                await asyncio.sleep(0.5)  # off; look again soon, a registration may turn it on
                continue
            await asyncio.sleep(timeout / 2)
            listeners: list[Any] = list(self.upstreams.values())
            if self.inbound is not None:
                listeners.append(self.inbound)
            closed = sum(sweep_idle(listener.spliced()) for listener in listeners)
            if closed:
                self.metrics.idle_closed.inc(closed)

    async def _http_sweeper(self) -> None:
        """http connections: a request that stopped arriving, or a keep-alive connection
        idle past `idle_timeout_ms` (an hour when unset), is closed (server_conn.py)."""
        while True:
            await asyncio.sleep(HTTP_SWEEP_SECONDS)
            idle = self.current.registration.idle_timeout if self.current else 0.0
            now = time.monotonic()
            closed = 0
            for listener in [*self.upstreams.values(), self.inbound]:
                http = getattr(listener, "http", None) if listener is not None else None
                if http is not None:
                    closed += sweep_stalled(http.conns, now, idle or KEEPALIVE_IDLE)
            if closed:
                self.metrics.idle_closed.inc(closed)

    async def _outlier_sweeper(self) -> None:
        """Every passive_health_check `interval` (per target), ejected instances whose
        time is up return (Envoy's sweep)."""
        while True:
            await asyncio.sleep(OUTLIER_SWEEP_SECONDS)
            config = self.current
            if config is None:
                continue
            now = time.monotonic()
            for (upstream, target), balancer in list(self.balancers.items()):
                if now - balancer.last_sweep >= balancer.passive.interval:
                    keys = [e.key for e in config.endpoints.get(target, ())]
                    for key in balancer.sweep(now, keys):
                        self.log.info("instance_returned", upstream=upstream, target=target, instance=key)
                        self.metrics.outlier_returned.inc()

    def ready_report(self) -> dict[str, Any]:
        config = self.current
        return {
            "Listeners": self.listeners(),
            "LeafExpires": config.leaf_expires if config else 0,
            "ConfigAge": round(self.metrics.config_age(), 3),
            "PID": os.getpid(),
        }

    async def _drain(self) -> None:
        listeners: list[Any] = list(self.upstreams.values())
        if self.inbound is not None:
            listeners.append(self.inbound)
        for listener in listeners:
            await listener.stop_accepting()
            if getattr(listener, "http", None) is not None:
                listener.http.drain()  # idle keep-alive connections need not wait out drain_timeout
        if self._metrics_server is not None:
            self._metrics_server.close()
        deadline = time.monotonic() + self.options.drain_timeout
        # the count is spread over the listeners: a 50 ms poll, bounded by drain_timeout
        while any(listener.active for listener in listeners) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = sum(listener.active for listener in listeners)
        for listener in listeners:
            listener.close_all()
        self.peer_pool.close_all()
        self.dialer.close()
        self.access.close()
        await self.spans.close()
        if listeners:
            self.log.info("proxy_drained", cut=left)
