"""/v1/status, /v1/operator/raft, /v1/snapshot, /v1/agent/{self,members,leave,metrics}."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import zlib

from aiohttp import web

from mesh import __version__
from mesh.catalog.errors import InvalidRequest, MeshError
from mesh.catalog.fsm import FSM

from ..acl import REQUEST_TOKEN
from ..backend import ServerOperations
from ..metrics import render_json, render_prometheus
from .permissions import access_of
from .query import json_response, parse_options, read_body

__all__ = ["routes", "SNAPSHOT_MAGIC"]

routes = web.RouteTableDef()

SNAPSHOT_MAGIC = b"MESHSNAP1\n"
# Ceilings for PUT /v1/snapshot: the upload, and what it may decompress to. A restore
# travels through Raft as one entry and is held in memory several times over (body,
# decompressed, the new state), so 256 MiB of snapshot is far past any catalog mesh
# serves (10,000 nodes with 10 services each is ~50 MiB) while a gzip bomb costs at
# most that much memory, briefly, in a worker thread.
MAX_SNAPSHOT_DECOMPRESSED = 256 << 20
MAX_SNAPSHOT = MAX_SNAPSHOT_DECOMPRESSED
_CHUNK = 1 << 20


def _server(request: web.Request) -> ServerOperations:
    server: ServerOperations | None = request.app["agent"].server_ops
    if server is None:
        raise MeshError(f"{request.path} is served by servers: point -http-addr at a server agent")
    return server


@routes.get("/v1/status/leader")
async def status_leader(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    return json_response(request, await agent.status_leader())


@routes.get("/v1/status/peers")
async def status_peers(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    return json_response(request, await agent.status_peers())


@routes.get("/v1/operator/raft/configuration")
async def raft_configuration(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    opts = parse_options(request)
    agent.check_datacenter(opts.datacenter)
    conf = await agent.raft_configuration(REQUEST_TOKEN.get())
    resp = json_response(request, conf)
    agent.set_read_headers(resp, conf["Index"], "", True, 0)
    return resp


@routes.get("/v1/operator/raft/state")
async def raft_state(request: web.Request) -> web.Response:
    """mesh extension: this server's view of Raft and a digest of its replicated state,
    so operators (and tests) can check that servers agree."""
    return json_response(request, _server(request).raft_state())


@routes.delete("/v1/operator/raft/peer")
async def raft_remove_peer(request: web.Request) -> web.Response:
    server = _server(request)
    await server.remove_peer(request.query.get("address", ""), request.query.get("id", ""))
    return json_response(request, None)


@routes.get("/v1/snapshot")
async def snapshot_save(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    server = _server(request)
    opts = parse_options(request)
    index, data = await server.snapshot(opts.consistent, opts.stale)
    body = gzip.compress(SNAPSHOT_MAGIC + hashlib.sha256(data).digest() + data, compresslevel=3)
    resp = web.Response(body=body, content_type="application/octet-stream")
    agent.set_read_headers(resp, index)
    return resp


def _gunzip_bounded(body: bytes, limit: int, prefix: bytes = b"") -> bytes:
    """gzip.decompress with a ceiling: a few KB of gzip can expand to gigabytes, so
    output is produced a chunk at a time and refused once it passes `limit` (or at
    the first chunk, when it does not start with `prefix`)."""
    out = bytearray()
    data = body
    while data:
        stream = zlib.decompressobj(16 + zlib.MAX_WBITS)  # a gzip member
        while True:
            chunk = stream.decompress(data, _CHUNK)
            out += chunk
            if len(out) >= len(prefix) and not out.startswith(prefix):
                raise InvalidRequest("Snapshot is not a mesh snapshot (bad header)")
            if len(out) > limit:
                raise InvalidRequest(f"Snapshot is too large: it decompresses to more than {limit >> 20} MiB")
            data = stream.unconsumed_tail
            if stream.eof or (not data and not chunk):
                break
        if not stream.eof:
            raise InvalidRequest("Snapshot is not a mesh snapshot (truncated gzip stream)")
        data = stream.unused_data  # gzip allows several members back to back
    return bytes(out)


def decode_snapshot(body: bytes, limit: int = MAX_SNAPSHOT_DECOMPRESSED) -> bytes:
    """Check and unpack an uploaded snapshot; CPU-bound, so callers run it in a thread."""
    if not body:
        raise InvalidRequest("Snapshot is not a mesh snapshot (empty body)")
    try:
        raw = _gunzip_bounded(body, limit, SNAPSHOT_MAGIC)
    except zlib.error as exc:
        raise InvalidRequest(f"Snapshot is not a mesh snapshot (not gzip: {exc})") from None
    if not raw.startswith(SNAPSHOT_MAGIC):
        raise InvalidRequest("Snapshot is not a mesh snapshot (bad header)")
    digest, data = raw[len(SNAPSHOT_MAGIC):len(SNAPSHOT_MAGIC) + 32], raw[len(SNAPSHOT_MAGIC) + 32:]
    if hashlib.sha256(data).digest() != digest:
        raise InvalidRequest("Snapshot is corrupt (checksum mismatch)")
    FSM.from_snapshot(data)  # validates before anything is replicated
    return data


@routes.put("/v1/snapshot")
async def snapshot_restore(request: web.Request) -> web.Response:
    server = _server(request)
    body = await read_body(request, MAX_SNAPSHOT)
    data = await asyncio.to_thread(decode_snapshot, body)  # off the event loop: other requests go on
    await server.restore(data)
    return json_response(request, None)


@routes.get("/v1/agent/self")
async def agent_self(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    cfg = agent.cfg
    return json_response(request, {
        "Config": {
            "Datacenter": cfg.datacenter,
            "PrimaryDatacenter": cfg.datacenter,
            "NodeName": cfg.node_name,
            "NodeID": agent.node_id,
            "Server": cfg.server,
            "Revision": "",
            "Version": __version__,
            "BuildDate": "",
        },
        "DebugConfig": {
            "BindAddr": cfg.bind_addr,
            "AdvertiseAddrLAN": cfg.advertise(),
            "ClientAddrs": [cfg.client_addr],
            "DataDir": cfg.data_dir,
            "Datacenter": cfg.datacenter,
            "DevMode": cfg.dev,
            "NodeName": cfg.node_name,
            "HTTPPort": agent.ports["http"],
            "HTTPSPort": agent.ports["https"],
            "DNSPort": agent.ports["dns"],
            "ServerPort": agent.ports["server"],
            "RaftPort": agent.ports["raft"],
            "BootstrapExpect": cfg.bootstrap_expect,
            "RetryJoinLAN": list(cfg.retry_join),
            "ServerMode": cfg.server,
            "DNSDomain": cfg.domain,
        },
        "Coord": {"Vec": [0.0] * 8, "Error": 1.5, "Adjustment": 0.0, "Height": 1e-05},
        "Member": agent.self_member(),
        "Meta": agent.cfg.node_meta_map(),
        "Stats": {"raft": agent.server_ops.raft_stats() if agent.server_ops else {}},
    })


@routes.get("/v1/agent/members")
async def agent_members(request: web.Request) -> web.Response:
    access = access_of(request)
    members = await request.app["agent"].members()
    visible = [m for m in members if access.can("node", str(m.get("Name", "")), "read")]
    resp = json_response(request, visible)
    if len(visible) != len(members) and not access.anonymous:
        resp.headers["X-Consul-Results-Filtered-By-ACLs"] = "true"
    return resp


@routes.put("/v1/agent/leave")
async def agent_leave(request: web.Request) -> web.Response:
    await request.app["agent"].leave()
    return json_response(request, None)


@routes.get("/v1/agent/metrics")
async def agent_metrics(request: web.Request) -> web.Response:
    accept = request.headers.get("Accept", "")
    if request.query.get("format") == "prometheus" or "openmetrics" in accept or accept.startswith("text/plain"):
        return web.Response(body=render_prometheus(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
    return json_response(request, render_json())


@routes.get("/v1/agent/version")
async def agent_version(request: web.Request) -> web.Response:
    return json_response(request, {"SKU": "oss", "HumanVersion": __version__, "BuildDate": "", "FIPS": ""})


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    return web.Response(text="Consul Agent: mesh " + __version__)


def member_status(alive: bool, left: bool) -> int:
    """Serf member status codes: 1 alive, 3 left, 4 failed."""
    return 3 if left else (1 if alive else 4)

