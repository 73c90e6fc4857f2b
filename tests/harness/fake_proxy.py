"""A stand-in for `mesh connect proxy` in the supervisor's tests.

Usage: fake_proxy.py MARKER_DIR connect proxy -sidecar-for ID

Writes MARKER_DIR/<pid>.json (its argv, the environment the supervisor set, its
session and group), prints a line to stdout (the log file), and sleeps. SIGTERM: waits
0.2 s (a drain), writes MARKER_DIR/<pid>.term and exits 0 -- unless MARKER_DIR/ignore-term
exists, in which case SIGTERM is ignored and only SIGKILL ends it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

KEYS = ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONNECT_SIDECAR_FOR", "MESH_PROXY_SUPERVISED", "MESH_HTTP_ADDR",
        "CONNECT_PROXY_ID")


def main() -> None:
    markers, args = sys.argv[1], sys.argv[2:]
    pid = os.getpid()

    def on_term(signum: int, frame: object) -> None:
        time.sleep(0.2)
        with open(os.path.join(markers, f"{pid}.term"), "w") as f:
            f.write("drained")
        sys.exit(0)

    if os.path.exists(os.path.join(markers, "ignore-term")):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, on_term)
    info = {"pid": pid, "argv": args, "env": {k: os.environ.get(k) for k in KEYS}, "sid": os.getsid(0),
            "pgid": os.getpgid(0), "stdin_tty": os.isatty(0)}
    tmp = os.path.join(markers, f".{pid}.tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(markers, f"{pid}.json"))
    print(f"fake proxy {pid} started for {args[-1]}", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
