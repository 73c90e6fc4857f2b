#!/usr/bin/env python3
"""Two tiny demo services for `make run` and the README tour: `api` answers, `web` calls
`api` through its sidecar's upstream listener (the mesh), and says what happened.

    python examples/demo/app.py api 127.0.0.1:9090
    python examples/demo/app.py web 127.0.0.1:8080 -upstream 127.0.0.1:9191

Standard library only; these are stand-ins for a team's own services, not part of mesh.
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import sys

log = logging.getLogger("demo")


def _reply(handler: http.server.BaseHTTPRequestHandler, status: int, text: str) -> None:
    body = (text + "\n").encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def serve(role: str, listen: str, upstream: str) -> None:
    host, _, port = listen.rpartition(":")
    instance = f"{socket.gethostname()}:{port}"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:
            log.info("%s %s", role, fmt % args)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/health":
                _reply(self, 200, "ok")
                return
            if role == "api":
                _reply(self, 200, f"hello from api ({instance})")
                return
            up_host, _, up_port = upstream.rpartition(":")
            try:
                conn = http.client.HTTPConnection(up_host, int(up_port), timeout=3)
                conn.request("GET", "/")
                answer = conn.getresponse().read().decode().strip()
                conn.close()
            except (OSError, http.client.HTTPException) as exc:
                _reply(self, 502, f"web ({instance}) could not reach api through the mesh: "
                                  f"{type(exc).__name__}: {exc or 'connection closed'}")
                return
            _reply(self, 200, f"web ({instance}) -> api: {answer}")

    server = http.server.ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    log.info("%s listening on %s (pid %d)", role, listen, os.getpid())
    server.serve_forever()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s demo %(message)s")
    if len(argv) < 2 or argv[0] not in ("api", "web"):
        sys.stderr.write("usage: app.py api|web HOST:PORT [-upstream HOST:PORT]\n")
        return 2
    upstream = argv[argv.index("-upstream") + 1] if "-upstream" in argv else "127.0.0.1:9191"
    try:
        serve(argv[0], argv[1], upstream)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        sys.stderr.write(f"demo {argv[0]}: cannot listen on {argv[1]}: {exc.strerror}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
