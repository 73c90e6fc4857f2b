"""The aiohttp application: routes, Consul's error conventions, common headers.

Errors are text/plain with Consul's status codes: 400 bad input, 401 ACLs disabled (on
the ACL endpoints), 403 denied by ACLs (agent/http/permissions.py), 404 unknown object
or path, 405 wrong method, 413 oversized body, 500 "No cluster leader" and other
server-side failures. An unexpected exception is logged (with its traceback, rate-
limited) and answered with a 500; it never takes the listener down. Bad input is a
400 and is not logged here at all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from mesh.catalog.errors import InvalidRequest, MeshError, NotFound, PermissionDenied, RateLimited

from ..errors import NoLeader, RaftError
from ..logging import RateLimiter, get_logger, log_limited
from ..metrics import ACL_METRICS, HTTP
from . import (
    acl,
    agent_api,
    catalog,
    config,
    connect_ca,
    discovery_chain,
    health,
    intentions,
    kv,
    proxies,
    sessions,
    system,
)
from .permissions import acl_guard

__all__ = ["build_app"]

log = get_logger("http")
# tracebacks of unexpected failures: a few at once, then one a minute
_UNEXPECTED = RateLimiter(per_second=1 / 60, burst=5)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message.rstrip("\n") + "\n", content_type="text/plain")


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        resp = await handler(request)
    except InvalidRequest as exc:
        resp = _text(400, str(exc))
    except NotFound as exc:
        resp = _text(404, str(exc))
    except RateLimited as exc:
        resp = _text(429, str(exc))
    except PermissionDenied as exc:
        ACL_METRICS.denied.labels(route).inc()
        resp = _text(403, str(exc))
    except NoLeader as exc:
        resp = _text(500, str(exc))
    except RaftError as exc:
        resp = _text(500, str(exc))
    except MeshError as exc:
        resp = _text(500, str(exc))
    except web.HTTPException as exc:
        if exc.status == 405:
            resp = _text(405, f"method {request.method} not allowed")
        elif exc.status == 404:
            resp = _text(404, f"Invalid URL path: not a recognized HTTP API endpoint: {request.path}")
        elif exc.status >= 400:
            resp = _text(exc.status, exc.text or exc.reason)
        else:
            raise
    except RecursionError:
        # a structure nested past what a walk over it can take: bad input, not a bug
        # (the JSON reader and the filter parser refuse depth before it gets here)
        log_limited(log, "warning", "http_input_too_deep", method=request.method, path=request.path)
        resp = _text(400, "Request decode failed: nested too deeply")
    except Exception:
        # truly unexpected: the traceback is worth having, but never a flood of them
        log_limited(log, "error", "http_handler_failed", limiter=_UNEXPECTED, exc_info=True,
                    method=request.method, path=request.path)
        resp = _text(500, "Internal error: see the agent's log")
    # what a built-in proxy falls back to when no intention matches (Consul's proxy
    # reads it from this header): the agent's default intention policy, truly
    resp.headers.setdefault("X-Consul-Default-ACL-Policy", request.app["agent"].cfg.default_intention_policy)
    HTTP.requests.labels(route, str(resp.status)).inc()
    HTTP.seconds.labels(route).observe(time.perf_counter() - started)
    return resp


def build_app(agent: Any) -> web.Application:
    app = web.Application(middlewares=[errors, acl_guard], client_max_size=1 << 20, handler_args={"max_field_size": 16384})
    app["agent"] = agent
    app.add_routes(catalog.routes)
    app.add_routes(health.routes)
    app.add_routes(system.routes)
    app.add_routes(agent_api.routes)
    app.add_routes(intentions.routes)
    app.add_routes(connect_ca.routes)
    app.add_routes(config.routes)
    app.add_routes(discovery_chain.routes)
    app.add_routes(proxies.routes)
    app.add_routes(kv.routes)
    app.add_routes(sessions.routes)
    app.add_routes(acl.routes)
    return app
