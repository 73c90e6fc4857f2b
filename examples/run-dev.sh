#!/usr/bin/env bash
# `make run`: the two demo apps (examples/demo/app.py) and a dev agent that registers them
# with sidecar proxies (examples/services/*.hcl) and starts those proxies.
#   web  127.0.0.1:8080  calls api through its sidecar's upstream listener 127.0.0.1:9191
#   api  127.0.0.1:9090  behind its sidecar's public mTLS listener (21000-21255), Meta version v1
#   api  127.0.0.1:9092  the canary (api-2), Meta version v2, behind its own sidecar
# Ctrl-C stops the agent (which drains and stops the proxies) and the demo apps.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
"$BIN/python" examples/demo/app.py api 127.0.0.1:9090 &
pids+=($!)
"$BIN/python" examples/demo/app.py api 127.0.0.1:9092 &
pids+=($!)
"$BIN/python" examples/demo/app.py web 127.0.0.1:8080 -upstream 127.0.0.1:9191 &
pids+=($!)
"$BIN/mesh" agent -dev -config-dir examples/services "$@"
