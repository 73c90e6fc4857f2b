"""The `mesh` CLI run in the test's own process: its main(), with stdout, stderr and
stdin as bytes and the environment it would see, answered as a CompletedProcess.

Half a second of interpreter start per call was most of the CLI suites' time. The code
path is the command's own (flag parsing, the HTTP client, output, exit code); what only
a process shows (signals, the installed entry point) stays in tests that start one.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from unittest import mock

from mesh.agent.cli.main import main as cli_main

__all__ = ["run_cli"]


def run_cli(args: list[str], env: dict[str, str] | None = None, stdin: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """`mesh ARGS` with `env` over an environment without CONSUL_/MESH_ variables."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = {name: io.TextIOWrapper(raw, encoding="utf-8", write_through=True) for name, raw in
               (("out", out), ("err", err), ("in", io.BytesIO((stdin or "").encode())))}
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_", "MESH_"))}
    with mock.patch.dict(os.environ, {**base, **(env or {})}, clear=True), \
            mock.patch.object(sys, "stdin", streams["in"]), contextlib.redirect_stdout(streams["out"]), \
            contextlib.redirect_stderr(streams["err"]):
        code = cli_main(list(args))
    return subprocess.CompletedProcess(["mesh", *args], code, out.getvalue().decode(), err.getvalue().decode())
