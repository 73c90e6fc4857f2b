"""A small HTTP app for the L7 tests: echoes what it got, fails or stalls on demand.

Run in-process (`start_app`) or as its own process (`python -m tests.harness.httpapp
-port N -name api`). Endpoints:

- any path not below: 200 JSON {name, method, path, query, headers, body_size}
- `/fail/<key>?times=N&status=503`: the first N calls with that key answer `status`
- `/slow?ms=N`: answers after N ms
- `/stream?chunks=N`: a chunked answer of N pieces
- `/ws`: a WebSocket echo
- `/calls`: how many requests this instance answered, by path
- `/bytes?n=N`: a body of N bytes (Content-Length)
- `PUT /admin/sick?status=500` (on the app's own port): every request but `/admin/*`
  answers `status` until `PUT /admin/well`: an instance that turned bad
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web


def make_app(name: str) -> web.Application:
    failures: dict[str, int] = collections.Counter()
    calls: dict[str, int] = collections.Counter()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "name": name, "method": request.method, "path": request.path, "raw_path": request.raw_path,
            "query": request.query_string, "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_size": len(body), "body": body.decode("utf-8", "replace")[:200],
        })

    async def fail(request: web.Request) -> web.Response:
        key = request.match_info["key"]
        times = int(request.query.get("times", "1"))
        status = int(request.query.get("status", "503"))
        await request.read()
        if failures[key] < times:
            failures[key] += 1
            return web.Response(status=status, text=f"{name} failing {key}")
        return web.json_response({"name": name, "key": key, "failed_before": failures[key]})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
        return web.json_response({"name": name, "slow": True})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(int(request.query.get("chunks", "3"))):
            await response.write(f"piece-{i};".encode())
            await asyncio.sleep(0.01)
        await response.write_eof()
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        async for msg in socket:
            if msg.type == WSMsgType.TEXT:
                await socket.send_str(f"{name}:{msg.data}")
            elif msg.type == WSMsgType.BINARY:
                await socket.send_bytes(msg.data)
        return socket

    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query.get("n", "1048576")))

    async def counts(request: web.Request) -> web.Response:
        return web.json_response(dict(calls))

    sick: list[int] = []

    async def make_sick(request: web.Request) -> web.Response:
        sick[:] = [int(request.query.get("status", "500"))]
        return web.json_response({"name": name, "sick": sick[0]})

    async def make_well(request: web.Request) -> web.Response:
        sick.clear()
        return web.json_response({"name": name, "sick": 0})

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        calls[request.path] += 1
        if sick and not request.path.startswith("/admin/"):
            await request.read()
            return web.Response(status=sick[0], text=f"{name} is sick")
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.router.add_route("*", "/fail/{key}", fail)
    app.router.add_get("/slow", slow)
    app.router.add_get("/stream", stream)
    app.router.add_get("/ws", ws)
    app.router.add_get("/calls", counts)
    app.router.add_get("/bytes", sized)
    app.router.add_put("/admin/sick", make_sick)
    app.router.add_put("/admin/well", make_well)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_app(name: str, port: int = 0) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # noqa: SLF001


def spawn_app(name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The app as its own process (its output appended to `log`), once its port accepts
    connections (at most 15 s). Stop it with `stop_apps`."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tests.harness.httpapp", "-port", str(port), "-name", name],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=str(Path(__file__).resolve().parents[2]), start_new_session=True)
    deadline = time.monotonic() + 15
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{name} app on {port} did not start (see {log})")
        time.sleep(0.05)


def stop_apps(apps: list[subprocess.Popen[bytes]]) -> None:
    """Kill the apps `spawn_app` started (by PID) and reap them."""
    for app in apps:
        if app.poll() is None:
            app.kill()
            app.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-port", type=int, required=True)
    parser.add_argument("-name", default="app")
    args = parser.parse_args()
    web.run_app(make_app(args.name), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()

