"""Hosts as network namespaces on one bridge, and partitions between them.

Why namespaces: a partition on 127.0.0.1 cannot be one-sided or selective, while each
host in its own namespace has its own address, routes and listeners, so `mesh agent`
runs with its default ports and a cut is one route on one side. The bridge lives in
a "switch" namespace of its own and every veth is created directly between the switch
and a host namespace, so the root namespace gets no interface, address or route.

Every name starts with a per-run prefix `mch<pid>`; a run removes the namespaces of
earlier runs whose process is gone (never those of a live run) before creating its own.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

__all__ = ["Host", "Network", "unavailable_reason", "SUBNET"]

SUBNET = "10.77.0"  # private, used only inside namespaces this module creates
_FAMILY = "mch"
_RUN_RE = re.compile(rf"^{_FAMILY}(\d+)-")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable_reason() -> str | None:
    """None when this process can create network namespaces, else why it cannot."""
    if shutil.which("ip") is None:
        return "network namespaces unavailable: the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "network namespaces unavailable: creating them needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    probe = f"{_FAMILY}{os.getpid()}-probe"
    try:
        res = _ip("netns", "add", probe, check=False)
        if res.returncode != 0:
            return f"network namespaces unavailable: `ip netns add` failed: {res.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers() -> list[str]:
    """Delete namespaces of earlier runs whose creating process is dead, killing any
    process still inside them (they were started by that run). Returns their names."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _RUN_RE.match(name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        _kill_inside(name)
        _ip("netns", "del", name, check=False)
        removed.append(name)
    return removed


def _kill_inside(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


@dataclass
class Host:
    """One namespace with one address on the bridge."""

    name: str
    ns: str
    addr: str
    routes: set[tuple[str, str]] = field(default_factory=set)  # (kind, dest addr) we added

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


class Network:
    """The switch namespace with its bridge, and the hosts plugged into it."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"{_FAMILY}{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._next = 10
        self._created: list[str] = []

    def create(self) -> Network:
        remove_leftovers()
        self._add_ns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        return self

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "del", ns, check=False)
        _ip("netns", "add", ns)
        self._created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A namespace `<prefix>-<name>` with eth0 on the bridge and the next address."""
        ns = f"{self.prefix}-{name}"
        self._add_ns(ns)
        self._next += 1
        addr = f"{SUBNET}.{self._next}"
        port = f"v{name}"[:15]
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        host = Host(name, ns, addr)
        self.hosts[name] = host
        return host

    def block(self, src: Host, dst: Host, kind: str = "blackhole") -> None:
        """Packets from src to dst are dropped (blackhole) or refused (prohibit) at src.
        One direction only; call it both ways for a full cut."""
        if src is dst or ("blackhole", dst.addr) in src.routes or ("prohibit", dst.addr) in src.routes:
            return
        _ip("-n", src.ns, "route", "add", kind, f"{dst.addr}/32")
        src.routes.add((kind, dst.addr))

    def cut(self, side_a: list[Host], side_b: list[Host], kind: str = "blackhole") -> None:
        for a in side_a:
            for b in side_b:
                self.block(a, b, kind)
                self.block(b, a, kind)

    def heal(self) -> None:
        for host in self.hosts.values():
            for kind, addr in sorted(host.routes):
                _ip("-n", host.ns, "route", "del", kind, f"{addr}/32", check=False)
            host.routes.clear()

    def destroy(self) -> None:
        """Kill what still runs inside our namespaces and delete them (veths go with them)."""
        for ns in reversed(self._created):
            _kill_inside(ns)
            _ip("netns", "del", ns, check=False)
        self._created.clear()
