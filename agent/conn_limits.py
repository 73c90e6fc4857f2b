"""Per-client connection caps and log throttling for the agent's listeners.

Consul's `limits { http_max_conns_per_client, rpc_max_conns_per_client }`: one source
IP may hold only so many connections to a listener, so a single misbehaving or hostile
client cannot use up the process's file descriptors and lock everyone else out.
Loopback is counted like any other address, as in Consul.

Refused connections and bad frames come from the network, so what gets logged about
them is throttled per (event, client): one line per client per minute, however fast
they arrive, with the metrics counting every occurrence. Pure logic, clock injected.
"""

from __future__ import annotations

__all__ = ["ConnLimiter"]


class ConnLimiter:
    """Counts open connections per client IP against a cap (0 means no cap)."""

    def __init__(self, max_per_client: int) -> None:
        self.max_per_client = max_per_client
        self._open: dict[str, int] = {}

    def acquire(self, ip: str) -> bool:
        """Count a new connection from `ip`; False (and nothing counted) when it is
        over the cap. Pair each True with one `release`."""
        count = self._open.get(ip, 0)
        if self.max_per_client > 0 and count >= self.max_per_client:
            return False
        self._open[ip] = count + 1
        return True

    def release(self, ip: str) -> None:
        count = self._open.get(ip, 0) - 1
        if count > 0:
            self._open[ip] = count
        else:
            self._open.pop(ip, None)

    def open(self, ip: str) -> int:
        return self._open.get(ip, 0)

    def total(self) -> int:
        return sum(self._open.values())
