"""The proxy's blocking watches on its local agent, each feeding the ConfigBuilder.

Agent mode (`-sidecar-for`, `-proxy-id`) watches the proxy's own registration by content
hash; flags mode builds a fixed registration from the flags. Both then watch the CA roots,
the leaf of the proxy's service, the intentions that name that service as destination,
and, with upstreams, the three discovery chain entry kinds (router, splitter, resolver:
one blocking list each) and the instances of every service the upstreams' compiled
chains target (one health watch per service and datacenter, critical instances
included: whether one serves depends on the target's subset). The set of watches
follows the registration and the chains as they change.

Every watch goes through `mesh.api.watch.Watch` (back off on errors and on quick repeats,
start over when an index goes backwards). A failing watch leaves its last answer in force:
with the agent down the proxy serves on what it had, and each watch's age is a metric.

The agent going away (a watch finds nothing listening) makes the ready report try it
every second; the first report it takes (a restarted agent that has just adopted this
process knows neither its listeners nor that it is ready) also cuts short the watches'
backoff, so they pick up what changed within about a second of the agent's return
rather than after up to 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mesh.api.agent import AgentAPI
from mesh.api.errors import APIError
from mesh.api.watch import Watch

from .config import ConfigError, Registration, registration_from_service
from .endpoint import Endpoint
from .errors import StartError
from .plan import Instance

if TYPE_CHECKING:
    from .app import Proxy, ProxyOptions

__all__ = ["AgentWatches", "find_sidecar"]

CHAIN_KINDS = ("service-router", "service-splitter", "service-resolver")  # what an upstream's chain reads
REGISTER_TTL = 30.0
AGENT_RETRY = 1.0  # seconds between ready reports while the agent cannot be reached


async def find_sidecar(api: AgentAPI, target: str) -> str:
    """The ID of the one connect-proxy whose DestinationServiceID is `target` (Consul
    compares lower-cased); a one-line reason otherwise."""
    services = await api.agent_services()
    found = [s.id for s in services.values()
             if s.kind == "connect-proxy" and s.proxy is not None
             and s.proxy.destination_service_id.lower() == target.lower()]
    if not found:
        raise ConfigError(f"No sidecar proxy registered for {target}")
    if len(found) > 1:
        raise ConfigError(f"More than one sidecar proxy registered for {target}: "
                          f"{', '.join(sorted(found))}; start the proxy with -proxy-id to pick one")
    return found[0]


def instances_of(entries: Any) -> tuple[Instance, ...]:
    """Every instance a health watch returned (critical ones too: whether one serves a
    target depends on the target's subset, plan.endpoints_for)."""
    return tuple(Instance(endpoint=Endpoint(address=e.address, port=e.port, service=e.destination,
                                            datacenter=e.datacenter, node=e.node, service_id=e.service_id),
                          entry=e.entry, statuses=tuple(status for _, status in e.checks)) for e in entries)


class AgentWatches:
    def __init__(self, client: Any, proxy: Proxy, log: Any) -> None:
        self.api = AgentAPI(client)
        self.proxy = proxy
        self.log = log
        self.fatal: str | None = None
        self.proxy_id = ""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._following: tuple[str, bool] | None = None
        self._agent_lost = asyncio.Event()  # a request found no agent listening
        self._agent_back = asyncio.Event()  # set (and replaced) when a report reaches it again

    # ---- start ---------------------------------------------------------------------------
    async def start(self, options: ProxyOptions) -> None:
        try:
            await self._start(options)
        except ConfigError as exc:
            raise StartError(str(exc)) from None
        except APIError as exc:
            raise StartError(exc.message) from None

    async def _start(self, options: ProxyOptions) -> None:
        if options.sidecar_for or options.proxy_id:
            self.proxy_id = options.proxy_id or await find_sidecar(self.api, options.sidecar_for)
            await self._refuse_if_supervised(options)
            self._spawn("service", self._watch_service())
        else:
            registration = self._flags_registration(options)
            self.proxy_id = registration.proxy_id
            self.proxy.builder.datacenter = await self._datacenter()
            self.proxy.set_registration(registration)
            if options.register:
                self._spawn("register", self._register_loop(options, registration))
        self._spawn("roots", self._watch("roots", lambda **kw: self.api.roots(**kw), self._on_roots))

    async def _refuse_if_supervised(self, options: ProxyOptions) -> None:
        """A proxy the agent supervises must not get a twin started by hand."""
        if options.supervised:
            return
        try:
            proxies = await self.api.client.get("/v1/agent/mesh/proxies")
        except APIError:
            return  # an agent without supervision (or a Consul agent)
        rows = proxies if isinstance(proxies, list) else list(proxies.values()) if isinstance(proxies, dict) else []
        for row in rows:
            if isinstance(row, dict) and row.get("ProxyServiceID") == self.proxy_id and row.get("Supervised"):
                pid = row.get("PID") or "?"
                raise ConfigError(f"the agent supervises the proxy for {self.proxy_id} (pid {pid}); stop it with "
                                  "the agent's -supervise-proxies=false before running one by hand")

    async def _datacenter(self) -> str:
        try:
            info = await self.api.client.get("/v1/agent/self")
            return str((info or {}).get("Config", {}).get("Datacenter", ""))
        except APIError:
            return ""

    def _flags_registration(self, options: ProxyOptions) -> Registration:
        public_address, public_port = "", 0
        if options.listen:
            host, _, port = options.listen.rpartition(":")
            public_address, public_port = host or "0.0.0.0", int(port)
        local_address, local_port = "127.0.0.1", 0
        if options.service_addr:
            host, _, port = options.service_addr.rpartition(":")
            local_address, local_port = host or "127.0.0.1", int(port)
        proxy_id = f"{options.service}-proxy" + (f"-{options.register_id}" if options.register_id else "")
        return Registration(proxy_id=proxy_id, service=options.service, public_address=public_address,
                            public_port=public_port, local_address=local_address, local_port=local_port,
                            upstreams=options.upstreams)

    # ---- the watches ---------------------------------------------------------------------
    def _spawn(self, name: str, coro: Awaitable[None]) -> None:
        old = self._tasks.pop(name, None)
        if old is not None:
            old.cancel()
        self._tasks[name] = asyncio.get_running_loop().create_task(coro, name=f"watch-{name}")

    def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
        self.proxy.metrics.watch_ages.pop(name, None)

    def _new_watch(self, fetch: Callable[..., Awaitable[Any]], mode: str, name: str) -> Watch[Any]:
        """A Watch whose failures to reach the agent are noted and whose backoff ends
        early when the agent is back."""
        async def noting(**kw: Any) -> Any:
            try:
                return await fetch(**kw)
            except APIError as exc:
                if exc.status == 0:
                    self._agent_lost.set()
                raise

        return Watch(noting, mode=mode, name=name, sleep=self._backoff)  # type: ignore[arg-type]

    async def _backoff(self, seconds: float) -> None:
        back = self._agent_back
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await back.wait()

    async def _watch(self, name: str, fetch: Callable[..., Awaitable[Any]], apply: Callable[[Any], None],
                     mode: str = "index") -> None:
        watch = self._new_watch(fetch, mode, name)
        self.proxy.metrics.watch_ages[name] = lambda: watch.age() if watch.age() != math.inf else -1.0
        while True:
            apply(await watch.next_result())
            self.proxy.rebuild()

    async def _watch_service(self) -> None:
        watch = self._new_watch(lambda **kw: self.api.agent_service(self.proxy_id, **kw), "hash", "service")
        self.proxy.metrics.watch_ages["service"] = lambda: watch.age() if watch.age() != math.inf else -1.0
        while True:
            result = await watch.next_result()
            service = result.value
            self.proxy.builder.datacenter = service.datacenter or self.proxy.builder.datacenter
            try:
                registration = registration_from_service(service)
            except ConfigError as exc:
                self.log.warning("proxy_registration_refused", proxy_id=self.proxy_id, error=str(exc))
                if self.proxy.current is None and self.proxy.builder.registration is None:
                    self.fatal = str(exc)
                    self.proxy.changed.set()
                continue
            self.proxy.set_registration(registration)

    def follow(self, registration: Registration) -> None:
        """Keep the leaf, intention, chain entry and instance watches in line with the
        registration."""
        wanted = (registration.service, bool(registration.upstreams))
        if self._following != wanted:
            old_service, had_upstreams = self._following or ("", False)
            self._following = wanted
            service = registration.service
            if service != old_service:
                self._spawn("leaf", self._watch("leaf", lambda **kw: self.api.leaf(service, **kw), self._on_leaf))
                self._spawn("intentions", self._watch(
                    "intentions", lambda **kw: self.api.intentions_match_destination(service, **kw),
                    self._on_intentions))
            if wanted[1] and not had_upstreams:
                for kind in CHAIN_KINDS:
                    self._spawn(f"config:{kind}", self._watch(
                        f"config:{kind}", lambda k=kind, **kw: self.api.config_entries(k, **kw),
                        lambda result, k=kind: self.proxy.builder.set_chain_entries(k, result.value)))
            elif had_upstreams and not wanted[1]:
                for kind in CHAIN_KINDS:
                    self._cancel(f"config:{kind}")
                    self.proxy.builder.set_chain_entries(kind, ())

    def follow_instances(self, wanted: set[str]) -> None:
        """One health watch per service (and datacenter) that any upstream's targets
        read; called after every rebuild, as the plans decide which are needed."""
        running = {name.removeprefix("instances:") for name in self._tasks if name.startswith("instances:")}
        if running == wanted:
            return
        for key in running - wanted:
            self._cancel(f"instances:{key}")
            self.proxy.builder.instances.pop(key, None)
        for key in wanted - running:
            name, _, dc = key.partition("@")

            def apply(result: Any, key: str = key) -> None:
                self.proxy.builder.instances[key] = instances_of(result.value)

            self._spawn(f"instances:{key}", self._watch(
                f"instances:{key}",
                lambda n=name, d=dc or None, **kw: self.api.health_connect(n, passing=False, datacenter=d, **kw),
                apply))

    def _on_roots(self, result: Any) -> None:
        self.proxy.builder.roots = result.value

    def _on_leaf(self, result: Any) -> None:
        self.proxy.builder.leaf = result.value

    def _on_intentions(self, result: Any) -> None:
        intentions, default_allow = result.value
        self.proxy.builder.set_intentions(tuple(intentions), default_allow)

    # ---- telling the agent ---------------------------------------------------------------
    def report_ready_soon(self) -> None:
        self._spawn("ready", self._ready_loop())

    async def _ready_loop(self) -> None:
        """`PUT /v1/agent/mesh/proxies/<id>/ready` at once (the agent then runs the
        sidecar's checks instead of waiting 10 s) and again now and then with fresh
        figures; every AGENT_RETRY seconds while the agent cannot be reached, so a
        restarted agent hears from its adopted proxy at once. An agent that does not
        know the call (Consul's) is left alone."""
        lost = False
        while True:
            self._agent_lost.clear()
            try:
                await self.api.client.request("PUT", f"/v1/agent/mesh/proxies/{self.proxy_id}/ready",
                                              body=self.proxy.ready_report())
            except APIError as exc:
                if exc.status in (404, 405):
                    return
                self.log.debug("ready_report_failed", error=exc.message)
                if exc.status == 0:
                    lost = True
                    await asyncio.sleep(AGENT_RETRY)
                    continue
            else:
                if lost:
                    lost = False
                    self.log.info("agent_back", proxy_id=self.proxy_id)
                    back, self._agent_back = self._agent_back, asyncio.Event()
                    back.set()  # the watches sleeping off their errors ask again now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.proxy.options.ready_interval):
                    await self._agent_lost.wait()
                    lost = True

    async def _register_loop(self, options: ProxyOptions, registration: Registration) -> None:
        """Flags mode `-register`: as Consul's proxy, a service `<svc>-proxy` with a TTL
        check kept passing every TTL/3, registered again if the agent forgot it."""
        check_id = f"{registration.proxy_id}-ttl"
        body = {
            "ID": registration.proxy_id, "Name": f"{options.service}-proxy", "Kind": "connect-proxy",
            "Address": registration.public_address if registration.public_address != "0.0.0.0" else "",
            "Port": registration.public_port,
            "Proxy": {"DestinationServiceName": options.service, "LocalServiceAddress": registration.local_address,
                      "LocalServicePort": registration.local_port},
            "Check": {"CheckID": check_id, "Name": "proxy heartbeat", "TTL": f"{int(REGISTER_TTL)}s",
                      "Status": "passing"},
        }
        registered = False
        while True:
            try:
                if not registered:
                    await self.api.service_register(body)
                    registered = True
                    self.log.info("proxy_registered", service_id=registration.proxy_id)
                await self.api.check_pass(check_id)
            except APIError as exc:
                registered = registered and exc.status not in (404,)
                self.log.warning("proxy_register_failed", error=exc.message)
            await asyncio.sleep(REGISTER_TTL / 3)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.proxy.options.register and self.proxy_id:
            for _ in range(3):
                try:
                    await self.api.service_deregister(self.proxy_id)
                    break
                except APIError:
                    await asyncio.sleep(0.5)
