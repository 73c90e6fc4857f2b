"""/v1/config: central config entries, as Consul serves them.

`PUT /v1/config` (`?cas`) answers `true` or `false`; `GET /v1/config/:kind/:name` and
`GET /v1/config/:kind` are blocking reads (the named reads `config.get` and
`config.list`, so a client agent forwards them like any other read); `DELETE
/v1/config/:kind/:name` answers `{}`, or `true`/`false` with `?cas`. Validation
happens here (mesh.catalog.config_entries) and the rules between entries in the state
machine, so a refused write changes nothing. A service-intentions write becomes one
command that replaces the destination's intention rows, their IDs stamped here (the
state machine keeps the ID of a pair that already has a row).
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from aiohttp import web

from mesh.catalog.commands import ConfigDeleteRequest, ConfigSetRequest, MessageType
from mesh.catalog.config_entries import (
    GLOBAL,
    PROXY_DEFAULTS,
    SERVICE_INTENTIONS,
    check_kind,
    parse_config_entry,
)
from mesh.catalog.config_intentions import intention_rows
from mesh.catalog.errors import InvalidRequest
from mesh.proxy.http.access_log import AccessLogConfigError, parse_access_logs
from mesh.proxy.http.tracing import TracingConfigError, parse_tracing_config

from .query import json_response, read, read_json, read_response

__all__ = ["routes"]

routes = web.RouteTableDef()
_UINT64 = (1 << 64) - 1


def _cas(request: web.Request) -> int | None:
    """`?cas=N` as Consul parses it (an unsigned integer), None when absent or empty."""
    raw = request.query.get("cas", "")
    if raw == "":
        return None
    if not raw.isdigit() or int(raw) > _UINT64:
        raise InvalidRequest(f"Invalid cas value {raw!r}: must be an unsigned integer")
    return int(raw)


def _check_proxy_settings(body: dict[str, Any]) -> None:
    """What the sidecars will make of proxy-defaults, checked by their own parsers now, so
    a typo in an access log format or the tracing block is this write's 400 rather than
    a sidecar quietly logging nothing."""
    try:
        parse_tracing_config((body.get("Config") or {}).get("tracing"))
        parse_access_logs(body.get("AccessLogs") or None)
    except (TracingConfigError, AccessLogConfigError) as exc:
        raise InvalidRequest(f"proxy-defaults: {exc}") from None


@routes.put("/v1/config")
async def apply(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    cas = _cas(request)
    entry = parse_config_entry(await read_json(request))
    if entry.kind == PROXY_DEFAULTS:
        _check_proxy_settings(entry.body)
    rows: tuple[Any, ...] = ()
    if entry.kind == SERVICE_INTENTIONS:
        rows = tuple(replace(row, id=str(uuid.uuid4())) for row in intention_rows(entry))
        meta = entry.body.get("Meta")
        entry = replace(entry, body={"Meta": meta} if meta else {})
    result = await agent.apply(MessageType.CONFIG_SET, ConfigSetRequest(entry, cas, rows))
    return json_response(request, bool(result))


@routes.get("/v1/config/{kind}")
async def list_entries(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    check_kind(kind)
    return read_response(request, await read(request, "config.list", {"kind": kind}))


@routes.get("/v1/config/{kind}/{name:.+}")
async def get_entry(request: web.Request) -> web.Response:
    kind, name = request.match_info["kind"], request.match_info["name"]
    check_kind(kind)
    result = await read(request, "config.get", {"kind": kind, "name": name})
    if result.value is None:
        resp = web.Response(status=404, text=f'Config entry not found for "{kind}" / "{name}"\n',
                            content_type="text/plain")
        request.app["agent"].set_read_headers(resp, result.index, "", result.known_leader, result.last_contact_ms)
        return resp
    return read_response(request, result)


@routes.delete("/v1/config/{kind}/{name:.+}")
async def delete_entry(request: web.Request) -> web.Response:
    agent = request.app["agent"]
    agent.check_datacenter(request.query.get("dc", ""))
    kind, name = request.match_info["kind"], request.match_info["name"]
    check_kind(kind)
    if kind == PROXY_DEFAULTS and name != GLOBAL:
        raise InvalidRequest(f'invalid name ("{name}"), only "{GLOBAL}" is supported')
    cas = _cas(request)
    deleted = await agent.apply(MessageType.CONFIG_DELETE, ConfigDeleteRequest(kind, name, cas))
    # Consul answers the outcome only to a CAS delete, `{}` otherwise
    return json_response(request, bool(deleted) if cas is not None else {})
