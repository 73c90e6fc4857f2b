"""`mesh`: one command with Consul's subcommands and single-dash flags.

Every subcommand but `agent`, `tls`, `keygen` and `version` talks to an agent's HTTP API at
-http-addr (default 127.0.0.1:8500, or CONSUL_HTTP_ADDR / MESH_HTTP_ADDR) with -token or
-token-file (or MESH_HTTP_TOKEN / CONSUL_HTTP_TOKEN / CONSUL_HTTP_TOKEN_FILE), resolved
by mesh.api.config, over HTTPS with Consul's TLS flags (-ca-file, -ca-path,
-client-cert, -client-key, -tls-server-name) and variables (CONSUL_HTTP_SSL, ...).
Exit 0 on success, 1 on error with one line on stderr.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import gc
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from mesh import __version__
from mesh.api.client import APIError, Client

from .flags import UsageError
from .flags import client_for as _client
from .flags import parse_flags as _parse

__all__ = ["main"]

USAGE = """Usage: mesh <command> [args]

Commands:
  agent                      run a mesh agent (-dev, or -server -bootstrap-expect N ...)
  members                    list the cluster's members
  leave                      gracefully leave the cluster and stop the agent
  operator raft list-peers   show the Raft configuration
  operator raft remove-peer  remove a server from the Raft configuration (-address or -id)
  snapshot save FILE         save a snapshot of the replicated state
  snapshot restore FILE      restore a snapshot into the cluster
  catalog datacenters|nodes|services
  services register FILE     register the services in a definition file with the agent
  services deregister -id=ID deregister a service from the agent
  reload                     reload the agent's config files (service and check definitions)
  maint -enable|-disable     node (or -service=ID) maintenance mode
  intention create|get|delete|list|check|match   service-to-service access rules
  config write|read|list|delete                  central config entries (/v1/config)
  kv put|get|delete|export|import                the key/value store (/v1/kv)
  acl bootstrap|set-agent-token|token|policy|role  ACL tokens, policies and roles (/v1/acl)
  lock [-n N] [-timeout D] PREFIX COMMAND...     run a command while holding a lock or semaphore
  connect ca get-config|set-config|status        the Connect CA
  connect proxy -sidecar-for ID                  run a sidecar proxy (mTLS, intentions)
  connect proxies                                this agent's sidecar proxy processes
  tls ca create              create the agent TLS CA (consul-agent-ca.pem and its key)
  tls cert create -server|-client|-cli           a certificate signed by that CA
  keygen                     print a new cluster key for -encrypt
  version                    print the version
"""


async def _members(argv: list[str]) -> int:
    flags, _ = _parse(argv, {"detailed": "bool", "wan": "bool"})
    async with _client(flags) as c:
        members = await c.get("/v1/agent/members")
    rows = [("Node", "Address", "Status", "Type", "Build", "Protocol", "DC")]
    status = {1: "alive", 2: "leaving", 3: "left", 4: "failed"}
    for m in members:
        tags = m.get("Tags", {})
        address = f"{m['Addr']}:{m['Port']}" if m.get("Port") else m["Addr"]
        rows.append((m["Name"], address, status.get(m.get("Status"), "none"),
                     "server" if tags.get("role") == "consul" else "client", tags.get("build", ""),
                     str(m.get("ProtocolCur", 2)), tags.get("dc", "")))
    _table(rows)
    return 0


async def _put_and_say(argv: list[str], path: str, message: str) -> int:
    """Commands that are one PUT to the agent and one line of output."""
    flags, _ = _parse(argv, {})
    async with _client(flags) as c:
        await c.put(path)
    print(message)
    return 0


async def _leave(argv: list[str]) -> int:
    return await _put_and_say(argv, "/v1/agent/leave", "Graceful leave complete")


async def _operator(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "raft" or argv[1] not in ("list-peers", "remove-peer"):
        raise UsageError("usage: mesh operator raft list-peers | remove-peer -address=IP:PORT")
    if argv[1] == "list-peers":
        flags, _ = _parse(argv[2:], {"stale": "bool"})
        params = {"stale": ""} if flags.get("stale") else {}
        async with _client(flags) as c:
            conf = await c.get("/v1/operator/raft/configuration", **params)
        rows = [("Node", "ID", "Address", "State", "Voter", "RaftProtocol")]
        for s in conf["Servers"]:
            rows.append((s["Node"], s["ID"], s["Address"], "leader" if s["Leader"] else "follower",
                         str(s["Voter"]).lower(), s["ProtocolVersion"]))
        _table(rows)
        return 0
    flags, _ = _parse(argv[2:], {"address": "str", "id": "str"})
    if not flags.get("address") and not flags.get("id"):
        raise UsageError("remove-peer needs -address=IP:PORT or -id=ID")
    params = {"address": flags["address"]} if flags.get("address") else {"id": flags["id"]}
    async with _client(flags) as c:
        await c.request("DELETE", "/v1/operator/raft/peer", params=params)
    what = flags.get("address") or flags.get("id")
    print(f'Removed peer with address "{what}"')
    return 0


_SNAPSHOT_LIMIT = 256 << 20  # agent/http/system.py MAX_SNAPSHOT


async def _snapshot(argv: list[str]) -> int:
    if not argv or argv[0] not in ("save", "restore"):
        raise UsageError("usage: mesh snapshot save FILE | restore FILE")
    flags, rest = _parse(argv[1:], {"stale": "bool"})
    if len(rest) != 1:
        raise UsageError(f"usage: mesh snapshot {argv[0]} FILE")
    path = rest[0]
    async with _client(flags) as c:
        if argv[0] == "save":
            # past the client's usual 64 MiB: as large as the agent takes back on restore
            data, headers = await c.request("GET", "/v1/snapshot", params={"stale": ""} if flags.get("stale") else {},
                                            limit=_SNAPSHOT_LIMIT)
            tmp = path + ".tmp"
            # a snapshot holds the CA's private key: owner-only, like the data-dir
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            print(f"Saved and verified snapshot to index {headers.get('X-Consul-Index', '0')}")
        else:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from None
            await c.request("PUT", "/v1/snapshot", data=data)
            print("Restored snapshot")
    return 0


async def _catalog(argv: list[str]) -> int:
    if not argv or argv[0] not in ("datacenters", "nodes", "services"):
        raise UsageError("usage: mesh catalog datacenters | nodes | services")
    flags, _ = _parse(argv[1:], {"tags": "bool", "service": "str", "detailed": "bool"})
    async with _client(flags) as c:
        if argv[0] == "datacenters":
            for dc in await c.get("/v1/catalog/datacenters"):
                print(dc)
        elif argv[0] == "services":
            for name, tags in (await c.get("/v1/catalog/services")).items():
                print(f"{name}  {','.join(tags)}" if flags.get("tags") else name)
        else:
            path = f"/v1/catalog/service/{flags['service']}" if flags.get("service") else "/v1/catalog/nodes"
            rows = [("Node", "ID", "Address", "DC")]
            for n in await c.get(path):
                rows.append((n["Node"], (n.get("ID") or "")[:8], n["Address"], n.get("Datacenter", "")))
            _table(rows)
    return 0


async def _services(argv: list[str]) -> int:
    if not argv or argv[0] not in ("register", "deregister"):
        raise UsageError("usage: mesh services register FILE | deregister -id=ID")
    flags, rest = _parse(argv[1:], {"id": "str", "name": "str", "port": "str", "address": "str", "tag": "str"})
    async with _client(flags) as c:
        if argv[0] == "deregister":
            ids = [flags["id"]] if flags.get("id") else []
            if not ids and rest:
                ids = [d.get("ID") or d.get("id") or d.get("Name") or d.get("name") for d in _definitions(rest)]
            if not ids:
                raise UsageError("deregister needs -id=ID or a definition file")
            for sid in ids:
                await c.put(f"/v1/agent/service/deregister/{sid}")
                print(f"Deregistered service: {sid}")
            return 0
        if flags.get("name"):
            body: dict[str, Any] = {"Name": flags["name"]}
            if flags.get("port"):
                body["Port"] = int(flags["port"]) if flags["port"].isdigit() else flags["port"]
            if flags.get("address"):
                body["Address"] = flags["address"]
            if flags.get("id"):
                body["ID"] = flags["id"]
            definitions = [body]
        else:
            if not rest:
                raise UsageError("register needs a definition file (JSON or HCL) or -name")
            definitions = _definitions(rest)
        for d in definitions:
            await c.put("/v1/agent/service/register", d)
            print(f"Registered service: {d.get('Name') or d.get('name')}")
    return 0


def _definitions(paths: list[str]) -> list[dict[str, Any]]:
    """Service blocks from definition files, as the agent's config files hold them (HCL
    blocks such as `connect { sidecar_service { proxy {} } }` made objects again, as the
    agent reads them from its own config files)."""
    from mesh.agent.config import ConfigError, load_file
    from mesh.agent.local.definitions import unblock

    out: list[dict[str, Any]] = []
    for path in paths:
        try:
            data = load_file(path)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        single = data.get("service")
        if isinstance(single, list):
            out.extend(single)
        elif isinstance(single, dict):
            out.append(single)
        many = data.get("services")
        if isinstance(many, list):
            out.extend(many)
        if not single and not many:
            raise UsageError(f"{path}: no service or services block")
    return [unblock(d) for d in out]


async def _reload(argv: list[str]) -> int:
    return await _put_and_say(argv, "/v1/agent/reload", "Configuration reload triggered")


async def _maint(argv: list[str]) -> int:
    flags, _ = _parse(argv, {"enable": "bool", "disable": "bool", "service": "str", "reason": "str"})
    if flags.get("enable") == flags.get("disable"):
        raise UsageError("use one of -enable or -disable")
    params = {"enable": "true" if flags.get("enable") else "false", "reason": flags.get("reason", "")}
    path = f"/v1/agent/service/maintenance/{flags['service']}" if flags.get("service") else "/v1/agent/maintenance"
    async with _client(flags) as c:
        await c.request("PUT", path, params=params)
    what = f"service {flags['service']}" if flags.get("service") else "node"
    print(f"{'Maintenance mode enabled' if flags.get('enable') else 'Maintenance mode disabled'} for {what}")
    return 0


async def _intention(argv: list[str]) -> int:
    """`mesh intention create|get|delete|list|check|match`."""
    if not argv or argv[0] not in ("create", "get", "delete", "list", "check", "match"):
        raise UsageError("usage: mesh intention create|get|delete|list|check|match ...")
    sub, rest = argv[0], argv[1:]
    flags, args = _parse(rest, {"allow": "bool", "deny": "bool", "replace": "bool", "file": "bool",
                                "description": "str", "source": "bool", "destination": "bool"})
    async with _client(flags) as c:
        if sub == "create":
            if flags.get("file"):
                if len(args) != 1:
                    raise UsageError("usage: mesh intention create -file FILE")
                bodies = _intention_files(args)
            else:
                if len(args) != 2:
                    raise UsageError("usage: mesh intention create [-allow|-deny] [-replace] SRC DST")
                if flags.get("allow") and flags.get("deny"):
                    raise UsageError("use only one of -allow and -deny")
                action = "deny" if flags.get("deny") else "allow"
                bodies = [{"SourceName": args[0], "DestinationName": args[1], "Action": action,
                           "Description": flags.get("description", "")}]
            for body in bodies:
                src, dst = body["SourceName"], body["DestinationName"]
                if flags.get("replace"):
                    await c.request("PUT", "/v1/connect/intentions/exact", params={"source": src, "destination": dst},
                                    body={k: v for k, v in body.items() if k not in ("SourceName", "DestinationName")})
                else:
                    await c.request("POST", "/v1/connect/intentions", body=body)
                print(f"Created: {src} => {dst} ({body.get('Action') or 'L7'})")
            return 0
        if sub == "list":
            rows = [("ID", "Source", "Action", "Destination", "Precedence")]
            for i in await c.get("/v1/connect/intentions"):
                rows.append((i["ID"], i["SourceName"], i["Action"] or "L7", i["DestinationName"], str(i["Precedence"])))
            _table(rows)
            return 0
        if sub == "match":
            if len(args) != 1:
                raise UsageError("usage: mesh intention match [-source|-destination] NAME")
            by = "source" if flags.get("source") else "destination"
            found = await c.get("/v1/connect/intentions/match", by=by, name=args[0])
            for i in found.get(args[0], []):
                print(f"{i['SourceName']} => {i['DestinationName']} ({i['Action'] or 'L7'})")
            return 0
        if sub == "check":
            if len(args) != 2:
                raise UsageError("usage: mesh intention check SRC DST")
            result = await c.get("/v1/connect/intentions/check", source=args[0], destination=args[1], explain="")
            print(f"{'Allowed' if result['Allowed'] else 'Denied'}: {result.get('Reason', '')}".rstrip(": "))
            return 0 if result["Allowed"] else 2
        # get / delete: SRC DST or ID
        if len(args) == 2:
            intention = await c.get("/v1/connect/intentions/exact", source=args[0], destination=args[1])
        elif len(args) == 1:
            intention = await c.get(f"/v1/connect/intentions/{args[0]}")
        else:
            raise UsageError(f"usage: mesh intention {sub} SRC DST | ID")
        if sub == "get":
            for key in ("ID", "SourceName", "DestinationName", "Action", "Description", "Precedence", "CreatedAt",
                        "UpdatedAt"):
                print(f"{key + ':':<17}{intention.get(key, '')}")
            return 0
        await c.request("DELETE", f"/v1/connect/intentions/{intention['ID']}")
        print(f"Intention deleted: {intention['SourceName']} => {intention['DestinationName']}")
        return 0


async def _config(argv: list[str]) -> int:
    from .config_cmd import run_config

    return await run_config(argv)


async def _kv(argv: list[str]) -> int:
    from .kv_cmd import run_kv

    return await run_kv(argv)


async def _acl(argv: list[str]) -> int:
    from .acl_cmd import run_acl

    return await run_acl(argv)


async def _lock(argv: list[str]) -> int:
    from .lock_cmd import run_lock

    return await run_lock(argv)


async def _connect(argv: list[str]) -> int:
    """`mesh connect ca get-config | set-config -config-file F | status`, `mesh connect proxies`."""
    if argv[:1] == ["proxies"]:
        return await _proxies(argv[1:])
    if len(argv) < 2 or argv[0] != "ca" or argv[1] not in ("get-config", "set-config", "status"):
        raise UsageError("usage: mesh connect ca get-config | set-config -config-file FILE | status")
    flags, _ = _parse(argv[2:], {"config-file": "str"})
    async with _client(flags) as c:
        if argv[1] == "get-config":
            print(json.dumps(await c.get("/v1/connect/ca/configuration"), indent=4))
            return 0
        if argv[1] == "set-config":
            path = flags.get("config-file")
            if not path:
                raise UsageError("set-config needs -config-file FILE (JSON: {\"Provider\": \"consul\", \"Config\": {...}})")
            try:
                with open(path) as f:
                    body = json.load(f)
            except (OSError, ValueError, RecursionError) as exc:
                raise UsageError(f"cannot read {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
            await c.put("/v1/connect/ca/configuration", body)
            print("Configuration updated!")
            return 0
        return await _ca_status(c)


async def _proxies(argv: list[str]) -> int:
    from mesh.agent.cli.proxies import show_proxies

    flags, rest = _parse(argv, {})
    if rest:
        raise UsageError("usage: mesh connect proxies [-http-addr ADDR]")
    async with _client(flags) as c:
        rows = await show_proxies(c)
    if len(rows) == 1:
        print("No sidecar proxies on this agent")
        return 0
    _table(rows)
    return 0


def _left(until: datetime.datetime, now: datetime.datetime) -> str:
    """"in 3649 days", "in 5h 12m", "EXPIRED 3m ago": whole units a reader can act on."""
    seconds = int((until - now).total_seconds())
    span = abs(seconds)
    text = f"{span // 86400}d {span % 86400 // 3600}h" if span >= 86400 else \
        f"{span // 3600}h {span % 3600 // 60}m" if span >= 3600 else f"{span // 60}m {span % 60}s"
    return f"in {text}" if seconds > 0 else f"EXPIRED {text} ago"


async def _ca_status(c: Client) -> int:
    """Roots, cross-signing and this agent's cached leaves, read from data only (never
    a TLS handshake), so it works when certificates have already expired. Exit 1 with
    a WARNING line on stderr when a root expires within 24h, a leaf has expired, or a
    leaf is late for renewal and expires within 24h. A leaf merely having less than 24h
    left is normal (short leaves renew all the time) and is not warned about."""
    from mesh.ca.manager import parse_time

    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(hours=24)
    warnings: list[str] = []
    try:
        roots = await c.get("/v1/agent/connect/ca/roots")
    except APIError as exc:
        if exc.status == 0:
            raise  # no agent to ask at all
        roots = None
        warnings.append(f"roots unavailable: {exc}")
    if roots is not None:
        print(f"Trust domain: {roots['TrustDomain'] or '(the CA is not initialized yet)'}")
        for root in roots["Roots"]:
            not_after = parse_time(root["NotAfter"])
            if root["Active"]:
                state = "active, cross-signed by the previous root" if root.get("IntermediateCerts") else "active"
            else:
                state = f"rotated out {root['RotatedOutAt']}, kept until its leaves have expired"
            print(f"Root {root['ID'][:23]}...  {state}  expires {root['NotAfter']} ({_left(not_after, now)})")
            if not_after - now < day:
                warnings.append(f"root {root['ID'][:23]}... expires {_left(not_after, now)}")
    cache = await c.get("/v1/agent/mesh/leaves")
    leaves = cache["Leaves"]
    print(f"Leaves cached on this agent: {len(leaves)}")
    for leaf in leaves:
        before, renew_at = parse_time(leaf["ValidBefore"]), parse_time(leaf["RenewAt"])
        note = f"  last renewal failed: {leaf['LastError']}" if leaf["LastError"] else ""
        print(f"  {leaf['Service']:<24} serial {leaf['SerialNumber']:<12} expires {leaf['ValidBefore']} "
              f"({_left(before, now)}), renews {leaf['RenewAt']}{note}")
        if before <= now:
            warnings.append(f"leaf for {leaf['Service']} {_left(before, now)}")
        elif before - now < day and (now > renew_at + datetime.timedelta(minutes=1) or leaf["LastError"]):
            warnings.append(f"leaf for {leaf['Service']} expires {_left(before, now)} and has not been renewed")
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)
    return 1 if warnings else 0


def _intention_files(paths: list[str]) -> list[dict[str, Any]]:
    from mesh.agent.config import ConfigError, load_file

    out = []
    for path in paths:
        try:
            data = load_file(path)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        items = data.get("intentions") or [data]
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, dict) or "SourceName" not in item or "DestinationName" not in item:
                raise UsageError(f"{path}: an intention needs SourceName and DestinationName")
            out.append(item)
    return out


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


def _run_agent(argv: list[str]) -> int:
    from mesh.agent.config import ConfigError, parse_args
    from mesh.agent.data_dir import PRIVATE_UMASK

    # before anything is created: the data-dir holds tokens and keys, and some of its
    # files are created by libraries (pysyncobj's journal) that take no mode
    os.umask(PRIVATE_UMASK)

    try:
        cfg = parse_args(argv)
    except ConfigError as exc:
        print(f"==> {exc}", file=sys.stderr)
        return 1
    # imported once the config is known to be good: a typo is reported in a third of
    # the time, without loading the whole agent
    from mesh.agent.agent import Agent, StartupError
    from mesh.agent.logging import configure, get_logger
    from mesh.catalog.errors import MeshError
    configure(cfg.log_level, cfg.log_json)
    log = get_logger("cli")

    async def run() -> int:
        try:
            agent = Agent(cfg)
            await agent.start()
        except (StartupError, ConfigError, OSError) as exc:
            log.error("agent_start_failed", error=str(exc))
            print(f"==> {exc}", file=sys.stderr)
            return 1
        # The catalog is many long-lived objects: keep the start-up ones out of the
        # cyclic GC and collect less often, so full collections do not stall DNS and
        # HTTP answers for tens of milliseconds.
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.request_stop)

        def reload() -> None:
            try:
                agent.reload()
            except MeshError as exc:
                log.error("reload_failed", error=str(exc))

        loop.add_signal_handler(signal.SIGHUP, reload)
        await agent.stopped.wait()
        log.info("agent_stopping")
        await agent.shutdown()
        return 0

    try:
        import uvloop

        return uvloop.run(run())
    except ImportError:
        return asyncio.run(run())


def _tls(argv: list[str]) -> int:
    from .tls_cmd import run_tls

    return run_tls(argv)


def _keygen(argv: list[str]) -> int:
    print(base64.b64encode(os.urandom(32)).decode())
    return 0


def _version(argv: list[str]) -> int:
    print(f"mesh v{__version__}\nConsul-compatible API (protocol 2, raft protocol 3)")
    return 0


_ASYNC: dict[str, Callable[[list[str]], Awaitable[int]]] = {
    "members": _members,
    "leave": _leave,
    "operator": _operator,
    "snapshot": _snapshot,
    "catalog": _catalog,
    "services": _services,
    "reload": _reload,
    "maint": _maint,
    "intention": _intention,
    "config": _config,
    "connect": _connect,
    "kv": _kv,
    "lock": _lock,
    "acl": _acl,
}
_SYNC: dict[str, Callable[[list[str]], int]] = {"agent": _run_agent, "tls": _tls, "keygen": _keygen,
                                                "version": _version}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "-help", "--help", "help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 1 if not argv else 0
    command, rest = argv[0], argv[1:]
    if command == "connect" and rest[:1] == ["proxy"]:  # its own event loop (uvloop) and signals
        from .proxy_cmd import run_proxy

        return run_proxy(rest[1:])
    try:
        if command in _SYNC:
            return _SYNC[command](rest)
        if command in _ASYNC:
            return asyncio.run(_ASYNC[command](rest))
        raise UsageError(f"unknown command {command!r} (see 'mesh help')")
    except UsageError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except APIError as exc:
        print(f"Error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
