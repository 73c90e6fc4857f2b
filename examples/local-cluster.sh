#!/usr/bin/env bash
# Three mesh servers and two client agents on 127.0.0.1, each with its own ports and
# data-dir.
#   examples/local-cluster.sh start    # servers' HTTP on 8500, 8510, 8520; clients' on 8530, 8540
#                                      # c1 runs web (and db, cache), c2 runs api, each with the
#                                      # demo app and a sidecar proxy (c1's in 21000-21099,
#                                      # c2's in 21100-21199); then try:
#     mesh intention create -http-addr 127.0.0.1:8500 web api && curl 127.0.0.1:8080
#   examples/local-cluster.sh status
#   examples/local-cluster.sh stop     # stops the processes it started (by PID)
set -euo pipefail
cd "$(dirname "$0")/.."
MESH=${MESH:-$( [ -x .venv/bin/mesh ] && echo .venv/bin/mesh || echo mesh )}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DIR=${MESH_CLUSTER_DIR:-/tmp/mesh-local-cluster}

start() {
  mkdir -p "$DIR"
  [ -f "$DIR/key" ] || "$MESH" keygen > "$DIR/key"
  local key; key=$(cat "$DIR/key")
  for i in 0 1 2; do
    local name="s$((i + 1))" http=$((8500 + 10 * i)) rpc=$((8300 + 10 * i)) raft=$((8301 + 10 * i))
    local joins=()
    for j in 0 1 2; do [ "$j" = "$i" ] || joins+=(-retry-join "127.0.0.1:$((8300 + 10 * j))"); done
    if [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
      echo "$name already running"; continue
    fi
    "$MESH" agent -server -bootstrap-expect 3 -node "$name" -data-dir "$DIR/$name" -bind 127.0.0.1 \
      -encrypt "$key" -http-port "$http" -server-port "$rpc" -raft-port "$raft" -dns-port -1 \
      -default-intention-policy deny \
      "${joins[@]}" > "$DIR/$name.log" 2>&1 &
    echo $! > "$DIR/$name.pid"
    echo "started $name (pid $!, http 127.0.0.1:$http, log $DIR/$name.log)"
  done
  for i in 0 1; do
    local name="c$((i + 1))" http=$((8530 + 10 * i))
    local extra=(-sidecar-min-port $((21000 + 100 * i)) -sidecar-max-port $((21099 + 100 * i)))
    if [ "$i" = 0 ]; then
      extra+=(-config-file examples/services/web.hcl -config-file examples/services/db.json
              -config-file examples/services/cache.json)
    else
      extra+=(-config-file examples/services/api.hcl)
    fi
    if [ -f "$DIR/$name.pid" ] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
      echo "$name already running"; continue
    fi
    "$MESH" agent -node "$name" -data-dir "$DIR/$name" -bind 127.0.0.1 -encrypt "$key" -http-port "$http" \
      -dns-port -1 -retry-join 127.0.0.1:8300 -retry-join 127.0.0.1:8310 -retry-join 127.0.0.1:8320 \
      -default-intention-policy deny \
      "${extra[@]}" > "$DIR/$name.log" 2>&1 &
    echo $! > "$DIR/$name.pid"
    echo "started $name (pid $!, http 127.0.0.1:$http, log $DIR/$name.log)"
  done
  for app in "api 127.0.0.1:9090" "web 127.0.0.1:8080 -upstream 127.0.0.1:9191"; do
    local role=${app%% *}
    if [ -f "$DIR/demo-$role.pid" ] && kill -0 "$(cat "$DIR/demo-$role.pid")" 2>/dev/null; then continue; fi
    # shellcheck disable=SC2086
    "$PYTHON" examples/demo/app.py $app > "$DIR/demo-$role.log" 2>&1 &
    echo $! > "$DIR/demo-$role.pid"
    echo "started demo $role (pid $!, log $DIR/demo-$role.log)"
  done
  for _ in $(seq 1 100); do
    leader=$(curl -sf 127.0.0.1:8500/v1/status/leader 2>/dev/null || true)
    if [ -n "$leader" ] && [ "$leader" != '""' ]; then echo "leader: $leader"; return 0; fi
    sleep 0.1
  done
  echo "no leader yet; see $DIR/*.log" >&2
  return 1
}

stop() {
  for name in demo-web demo-api c1 c2 s1 s2 s3; do
    if [ -f "$DIR/$name.pid" ]; then
      local pid; pid=$(cat "$DIR/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$DIR/$name.pid"
      echo "stopped $name"
    fi
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) "$MESH" operator raft list-peers -http-addr 127.0.0.1:8500; echo; "$MESH" members -http-addr 127.0.0.1:8500 ;;
  clean) stop; rm -rf "$DIR" ;;
  *) echo "usage: $0 start|status|stop|clean" >&2; exit 1 ;;
esac
