"""`mesh connect proxies`: a table of this agent's sidecar proxy processes.

Reads GET /v1/agent/mesh/proxies (agent/http/proxies.py). One row per sidecar: pid,
state, restarts, public listener, leaf expiry, config age, last exit. Exit 0; errors
reach the CLI's one-line handler.
"""

from __future__ import annotations

import datetime
from typing import Any

from mesh.api.client import Client

__all__ = ["show_proxies", "proxy_rows"]

HEADER = ("Proxy", "Service", "PID", "State", "Restarts", "Public", "Leaf expires", "Config age", "Last exit")


def _until(text: str | None, now: datetime.datetime) -> str:
    if not text:
        return "-"
    try:
        when = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return text
    seconds = int((when - now).total_seconds())
    span = abs(seconds)
    short = f"{span // 3600}h{span % 3600 // 60:02d}m" if span >= 3600 else f"{span // 60}m{span % 60:02d}s"
    return f"in {short}" if seconds > 0 else f"EXPIRED {short} ago"


def _last_exit(last: dict[str, Any] | None) -> str:
    if not last:
        return "-"
    if last.get("Signal"):
        return str(last["Signal"])
    if last.get("Code") is not None:
        return f"exit {last['Code']}"
    return str(last.get("Reason") or "gone")


def proxy_rows(body: dict[str, dict[str, Any]], now: datetime.datetime) -> list[tuple[str, ...]]:
    """The table, header first; pure so it is tested without an agent."""
    rows = [HEADER]
    for proxy_id, p in sorted(body.items()):
        state = str(p.get("State", ""))
        if p.get("Adopted"):
            state += " (adopted)"
        if p.get("RestartIn") is not None:
            state += f" (restart in {p['RestartIn']:.1f}s)"
        age = p.get("ConfigAge")
        rows.append((proxy_id, str(p.get("DestinationServiceID", "")), str(p.get("PID") or "-"), state,
                     str(p.get("Restarts", 0)), str((p.get("Listeners") or {}).get("Public") or "-"),
                     _until(p.get("LeafExpires"), now), "-" if age is None else f"{age:.1f}s",
                     _last_exit(p.get("LastExit"))))
    return rows


async def show_proxies(client: Client) -> list[tuple[str, ...]]:
    body = await client.get("/v1/agent/mesh/proxies")
    return proxy_rows(body or {}, datetime.datetime.now(datetime.UTC))
