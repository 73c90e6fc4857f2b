"""`mesh connect proxy`: run one sidecar proxy, configured from the local agent's HTTP API.

Consul's flags (consul.md §6.1): `-sidecar-for ID` (or CONNECT_SIDECAR_FOR), `-proxy-id ID`
(or CONNECT_PROXY_ID), or flags mode with `-service NAME -listen HOST:PORT -service-addr
HOST:PORT [-register [-register-id SUFFIX]]`; `-upstream name:[host:]port` (repeatable);
`-log-level`, `-log-json`; the HTTP client flags. Mesh adds `-drain-timeout` (seconds a stop
waits for open connections).

The proxy runs on uvloop when it is installed (1.5x the relay throughput of the default
loop, ../shared/reference/perf-baselines.md). SIGTERM and SIGINT drain and stop it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from typing import Any

from mesh.api.client import Client
from mesh.api.config import ConfigError, resolve, resolve_tls
from mesh.api.errors import APIError
from mesh.proxy.app import Proxy, ProxyOptions, StartError
from mesh.proxy.config import ConfigError as ProxyConfigError
from mesh.proxy.config import parse_upstream_flag

from ..logging import configure, get_logger, log_limited, per_peer_limiter

__all__ = ["run_proxy", "parse_proxy_flags"]

_SPEC = {
    "sidecar-for": "str", "proxy-id": "str", "service": "str", "upstream": "list", "listen": "str",
    "service-addr": "str", "register": "bool", "register-id": "str", "log-level": "str", "log-json": "bool",
    "http-addr": "str", "token": "str", "token-file": "str", "datacenter": "str", "drain-timeout": "str",
    "pprof-addr": "str", "ca-file": "str", "ca-path": "str", "client-cert": "str", "client-key": "str",
    "tls-server-name": "str",
}


class UsageError(Exception):
    pass


def _flags(argv: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or len(arg) < 2:
            raise UsageError(f"unexpected argument {arg!r}")
        name, eq, inline = arg.lstrip("-").partition("=")
        kind = _SPEC.get(name)
        if kind is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        if kind == "bool":
            values[name] = inline.lower() not in ("false", "0") if eq else True
        else:
            if not eq:
                if i + 1 >= len(argv):
                    raise UsageError(f"flag needs an argument: -{name}")
                i += 1
                inline = argv[i]
            if kind == "list":
                values.setdefault(name, []).append(inline)
            else:
                values[name] = inline
        i += 1
    return values


def parse_proxy_flags(argv: list[str], env: dict[str, str]) -> tuple[ProxyOptions, dict[str, Any]]:
    """Options and the raw flags; UsageError with Consul's wording for bad combinations."""
    flags = _flags(argv)
    sidecar_for = flags.get("sidecar-for") or env.get("CONNECT_SIDECAR_FOR", "")
    proxy_id = flags.get("proxy-id") or env.get("CONNECT_PROXY_ID", "")
    service = flags.get("service", "")
    if sidecar_for and proxy_id:
        raise UsageError("-sidecar-for and -proxy-id are mutually exclusive")
    if not (sidecar_for or proxy_id or service):
        raise UsageError("one of -sidecar-for, -proxy-id or -service is required")
    if (sidecar_for or proxy_id) and (flags.get("listen") or flags.get("service-addr") or flags.get("register")):
        raise UsageError("-listen, -service-addr and -register are for flags mode (-service), not with "
                         "-sidecar-for or -proxy-id")
    if flags.get("listen") and not flags.get("service-addr"):
        raise UsageError("-listen requires -service-addr")
    if flags.get("register") and not (service and flags.get("listen")):
        raise UsageError("-register requires -service and -listen")
    try:
        upstreams = tuple(parse_upstream_flag(u) for u in flags.get("upstream", []))
    except ProxyConfigError as exc:
        raise UsageError(str(exc)) from None
    drain = flags.get("drain-timeout", "5")
    try:
        drain_timeout = float(drain.removesuffix("s"))
    except ValueError:
        raise UsageError(f"-drain-timeout: expected seconds, got {drain!r}") from None
    for name in ("listen", "service-addr"):
        value = flags.get(name, "")
        if value and (":" not in value or not value.rpartition(":")[2].isdigit()):
            raise UsageError(f"-{name}: expected host:port, got {value!r}")
    options = ProxyOptions(
        sidecar_for=sidecar_for, proxy_id=proxy_id, service=service if not (sidecar_for or proxy_id) else "",
        listen=flags.get("listen", ""), service_addr=flags.get("service-addr", ""), upstreams=upstreams,
        register=bool(flags.get("register")), register_id=flags.get("register-id", ""),
        supervised=env.get("MESH_PROXY_SUPERVISED") == "1", drain_timeout=max(0.0, drain_timeout),
    )
    return options, flags


def _tune_gc() -> None:
    """The objects made at start (modules, config) are frozen out of collection, and the
    young generation is collected every 50,000 allocations instead of 700: an http
    sidecar allocates a few dozen short-lived objects per request, and the default
    threshold spent about 5% of its CPU in collections that found nothing (py-spy)."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _install_loop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run on
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(options: ProxyOptions, client: Client, log: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    limiter = per_peer_limiter()

    def refused(event: str, **fields: Any) -> None:
        log_limited(log, "info", event, key=(event, fields.get("reason"), fields.get("peer")), limiter=limiter,
                    **fields)

    async with client:
        proxy = Proxy(client, options, log=log, refused=refused)
        try:
            await proxy.run(stop)
        except StartError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    log.info("proxy_stopped")
    return 0


def run_proxy(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        options, flags = parse_proxy_flags(argv, env)
        address, token = resolve(flags.get("http-addr"), flags.get("token"), env,
                                 flags_token_file=flags.get("token-file"))
        # an https:// agent: Consul's client TLS flags and CONSUL_CACERT ... apply
        client = Client(address, token, tls=resolve_tls(flags, env))
    except (UsageError, ConfigError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    configure(flags.get("log-level", "info"), bool(flags.get("log-json")))
    log = get_logger("proxy")
    log.info("proxy_starting", mode="agent" if (options.sidecar_for or options.proxy_id) else "flags",
             sidecar_for=options.sidecar_for, proxy_id=options.proxy_id, service=options.service, agent=address)
    _install_loop()
    _tune_gc()
    try:
        return asyncio.run(_serve(options, client, log))
    except APIError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
