"""Which process a pid is: /proc/<pid>/stat and cmdline, read and judged.

A pid alone does not name a process: after a proxy dies its pid may be given to any
other program, and an agent that restarts an hour later must not adopt (or signal)
that program. A process is identified by its pid plus its start time (field 22 of
/proc/<pid>/stat, clock ticks since boot) plus the boot it belongs to
(/proc/sys/kernel/random/boot_id); before adopting, its command line must also be a
proxy for the expected service. The parsing and the verdicts are pure; `read_proc` and
`boot_id` are the only I/O (Linux /proc; elsewhere nothing is ever adopted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ProcInfo", "parse_stat", "read_proc", "boot_id", "cmdline_matches", "same_process",
           "adoption_problem"]


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    start_time: int
    state: str  # one letter: R, S, D, Z (zombie), X (dead), ...
    cmdline: tuple[str, ...]

    @property
    def gone(self) -> bool:
        """A zombie has exited; it only waits for its parent to collect the status."""
        return self.state in ("Z", "X", "x")


def parse_stat(text: str) -> tuple[str, int]:
    """(state, starttime) from /proc/<pid>/stat. The command name (field 2) is in
    parentheses and may itself hold spaces and parentheses, so fields are counted from
    the last ')'. Raises ValueError on anything else."""
    close = text.rfind(")")
    if close < 0:
        raise ValueError("no command name in stat")
    rest = text[close + 1:].split()
    # rest[0] is field 3 (state); starttime is field 22
    if len(rest) < 20:
        raise ValueError("stat too short")
    return rest[0], int(rest[19])


def read_proc(pid: int, root: str = "/proc") -> ProcInfo | None:
    """What /proc says about `pid`, or None when there is no such process (or /proc
    cannot be read: then nothing can be verified and nothing is adopted)."""
    if pid <= 0:
        return None
    try:
        with open(f"{root}/{pid}/stat") as f:
            state, start_time = parse_stat(f.read())
        with open(f"{root}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, ValueError):
        return None
    cmdline = tuple(part.decode("utf-8", "replace") for part in raw.split(b"\0")[:-1]) if raw else ()
    return ProcInfo(pid, start_time, state, cmdline)


def boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def cmdline_matches(cmdline: Sequence[str], parent_id: str) -> bool:
    """Whether a command line is a sidecar proxy for `parent_id`: it holds the words
    `connect proxy` in a row and the service ID as an argument of its own (or as
    `-sidecar-for=<id>`), whatever runs it (the mesh script, `python -m mesh`)."""
    words = list(cmdline)
    pair = any(a == "connect" and b == "proxy" for a, b in zip(words, words[1:], strict=False))
    named = any(w == parent_id or w.endswith(f"-sidecar-for={parent_id}") for w in words)
    return pair and named


def same_process(info: ProcInfo | None, start_time: int) -> bool:
    """Whether the process behind a pid is still the one started at `start_time`."""
    return info is not None and not info.gone and info.start_time == start_time


def adoption_problem(info: ProcInfo | None, start_time: int, recorded_boot: str, current_boot: str,
                     parent_id: str) -> str | None:
    """Why the process a pidfile names must not be adopted, or None when it may be."""
    if recorded_boot and current_boot and recorded_boot != current_boot:
        return "the machine has rebooted since"
    if info is None or info.gone:
        return "not running"
    if info.start_time != start_time:
        return "pid reused by another process"
    if not cmdline_matches(info.cmdline, parent_id):
        return "command line is not a proxy for this service"
    return None
