"""The `mesh` CLI fed malformed config files and flags, as a new user or an attacker
who can write a config file would: one line on stderr and exit 1, never a traceback.
(tests/unit/agent/test_config.py has many more cases, in-process; these go through
the real command.)

Replays issue 10's findings (a config file with invalid UTF-8 or nested 100,000 deep
ended in a traceback; `-recursor ::::` was accepted) and their neighbours."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster

FILES = {
    "utf8.json": b'{"node_name": "\xff\xfe"}',
    "deep.json": b"[" * 100_000 + b"]" * 100_000,
    "deep.hcl": b"a = " + b"[" * 100_000 + b"]" * 100_000,
    "list.json": b"[1, 2, 3]",
    "infinite.json": b'{"ports": {"http": 1e999}}',
    "tls.json": b'{"tls": {"defaults": 5}}',
}

CASES = [
    *[(["-config-file", name], name.split(".")[0]) for name in FILES],
    (["-recursor", "::::"], "-recursor"),
    (["-bind", "not-an-ip"], "-bind"),
    (["-domain", "a..b"], "-domain"),
]


def run(args: list[str], cwd: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mesh.agent.cli.main", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_malformed_files_and_flags_are_one_line_and_exit_1(tmp_path):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    failures = []
    for start in range(0, len(CASES), 4):  # a few at a time: each is a Python start-up
        procs = [(args, run(["agent", "-dev", "-http-port", "0", "-dns-port", "-1", "-server-port", "0",
                             "-raft-port", "0", *args], str(tmp_path)))
                 for args, _ in CASES[start:start + 4]]
        for args, proc in procs:
            try:
                _, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its handle
                proc.communicate()
                failures.append(f"{args}: still running (accepted)")
                continue
            lines = err.decode(errors="replace").strip().splitlines()
            if proc.returncode != 1 or len(lines) != 1 or "Traceback" in err.decode(errors="replace"):
                failures.append(f"{args}: exit {proc.returncode}, stderr {lines[-3:]}")
    assert not failures, "\n".join(failures)


def test_client_commands_read_hostile_files_as_one_line(tmp_path):
    (tmp_path / "utf8.json").write_bytes(FILES["utf8.json"])
    (tmp_path / "deep.json").write_bytes(FILES["deep.json"])
    procs = [run(["services", "register", "-http-addr", "127.0.0.1:1", "utf8.json"], str(tmp_path)),
             run(["connect", "ca", "set-config", "-http-addr", "127.0.0.1:1", "-config-file", "deep.json"],
                 str(tmp_path))]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        lines = err.decode(errors="replace").strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("Error:"), lines[-3:]
