"""The layering of ../shared/DESIGN.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ["agent", "catalog", "ca", "dns", "proxy", "api"]
ALLOWED = {
    "catalog": set(),
    "ca": {"catalog"},
    "api": {"catalog"},
    "dns": {"catalog"},
    "proxy": {"catalog", "ca", "api"},
    "agent": {"catalog", "ca", "api", "dns", "proxy"},
}
# what only one owner may import (DESIGN.md principle 3)
OWNERS = {"pysyncobj": {"agent/server/raft/pysyncobj_node.py"}}
CATALOG_FORBIDDEN = {"asyncio", "socket", "aiohttp", "pysyncobj", "structlog", "time", "random", "threading"}


def _modules() -> list[pathlib.Path]:
    return [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg_parts = path.relative_to(ROOT).parts[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - node.level + 1])
                out.add("mesh." + ".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_dependency_direction(path):
    own = path.relative_to(ROOT).parts[0]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "mesh" and len(parts) > 1 and parts[1] in PACKAGES and parts[1] != own:
            assert parts[1] in ALLOWED[own], f"{path.relative_to(ROOT)} imports {name}: {own} may not import {parts[1]}"
        for lib, owners in OWNERS.items():
            if parts[0] == lib:
                assert str(path.relative_to(ROOT)) in owners, f"only {owners} may import {lib}"
        if own == "catalog":
            assert parts[0] not in CATALOG_FORBIDDEN, f"catalog/ is pure: {path.name} imports {name}"


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    return "mesh." + ".".join(p for p in rel.parts if p != "__init__")


def _internal_imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """Our modules `path` imports, anywhere in the file (a function-level import is
    still a cycle, only a hidden one), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), str(path))
    pkg_parts = path.relative_to(ROOT).parts[:-1]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = "mesh." + ".".join(list(pkg_parts[: len(pkg_parts) - node.level + 1])
                                          + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from . import x` imports the module x when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known)
    return out


def import_cycles() -> list[list[str]]:
    """Every cycle among our modules (strongly connected components of more than one
    module, or a module importing itself), each as a sorted list of names."""
    paths = {_module_name(p): p for p in _modules()}
    known = set(paths)
    graph = {name: _internal_imports(path, known) - {name} for name, path in paths.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan, iterative: no recursion limit to worry about
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return cycles


def test_no_import_cycles():
    """A cycle makes import order matter and hides in function-level imports; the
    catalog had commands -> intentions -> requests -> commands."""
    assert import_cycles() == []


# One interpreter imports the third-party libraries once, then forks a child per module:
# each child imports one of our modules into a process that holds none of them, which is
# what "imports on its own" means, at ~20 ms a module instead of a new interpreter's 250.
_IMPORT_EACH = """
import importlib, os, sys, traceback
for lib in ("aiohttp", "cryptography.x509", "dnslib", "msgpack", "structlog", "pysyncobj",
            "prometheus_client", "uvloop", "hcl2", "ssl", "asyncio"):
    try:
        importlib.import_module(lib)
    except ImportError:
        pass
failed = 0
running = 0
for name in sys.argv[1:]:
    if running == 2:  # two at a time: the machine has two cores
        _, status = os.wait()
        running -= 1
        failed += status != 0
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(name)
        except BaseException:
            sys.stderr.write(name + ": " + traceback.format_exc()[-500:] + "\\n")
            os._exit(1)
        os._exit(0)
    running += 1
while running:
    _, status = os.wait()
    running -= 1
    failed += status != 0
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    names = []
    for path in _modules():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append("mesh." + ".".join(parts))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *names], capture_output=True, text=True, cwd="/",
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_repository_root_does_not_shadow_dnspython():
    proc = subprocess.run([sys.executable, "-c", "import dns.resolver, dns; print(dns.__file__)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout


# ---- owners (DESIGN.md principle 3 and the "agent/ server subpackage" row) ----------------
SERVER_IMPORTERS = {"agent/agent.py", "agent/backend.py"}  # the composition root and the backend
# building or running an aiohttp server: only agent/http/ (api/ and the check runners are clients),
# and the fake agent that api/ ships for the proxy's tests (DESIGN.md, the api/ row)
AIOHTTP_SERVER_EXCEPTIONS = {"api/testing.py"}
AIOHTTP_SERVER_NAMES = {"AppRunner", "TCPSite", "UnixSite", "SockSite", "run_app", "Application", "Server"}


def _rel(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT))


def test_server_subpackage_is_imported_only_by_the_composition_root_and_the_backend():
    for path in _modules():
        rel = _rel(path)
        if rel.startswith("agent/server/") or rel in SERVER_IMPORTERS:
            continue
        for name in _imports(path):
            assert not (name == "mesh.agent.server" or name.startswith("mesh.agent.server.")), \
                f"{rel} imports {name}: the local side reaches the server only through agent/backend.py"


def test_server_subpackage_imports_no_local_agent_module():
    local = ("mesh.agent.local", "mesh.agent.checks", "mesh.agent.http", "mesh.agent.dns_view",
             "mesh.agent.leaf_cache", "mesh.agent.leaf_files", "mesh.agent.intentions_cache",
             "mesh.agent.agent", "mesh.agent.backend", "mesh.agent.cli")
    for path in (ROOT / "agent" / "server").rglob("*.py"):
        for name in _imports(path):
            assert not any(name == m or name.startswith(m + ".") for m in local), f"{_rel(path)} imports {name}"


def test_the_in_memory_raft_does_not_depend_on_pysyncobj():
    """One-process tests must exercise the server role without the pysyncobj adapter."""
    for name in ("memory.py", "memory_net.py"):
        path = ROOT / "agent" / "server" / "raft" / name
        for imported in _imports(path):
            assert not imported.startswith(("mesh.agent.server.raft.adapter", "mesh.agent.server.raft.pysyncobj_node",
                                            "pysyncobj")), f"{_rel(path)} imports {imported}"


def test_only_ca_imports_cryptography():
    for path in _modules():
        if _rel(path).startswith("ca/"):
            continue
        for name in _imports(path):
            assert name.split(".")[0] != "cryptography", f"{_rel(path)} imports {name}: only ca/ may"


def test_only_agent_http_runs_the_aiohttp_server():
    for path in _modules():
        rel = _rel(path)
        if rel.startswith("agent/http/") or rel in AIOHTTP_SERVER_EXCEPTIONS:
            continue
        tree = ast.parse(path.read_text(), rel)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("aiohttp", "aiohttp.web"):
                names = {a.name for a in node.names}
                assert not names & AIOHTTP_SERVER_NAMES, f"{rel}: from {node.module} import {names}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("aiohttp.web") for a in node.names), f"{rel} imports aiohttp.web"
            if isinstance(node, ast.Attribute) and node.attr in AIOHTTP_SERVER_NAMES and \
                    isinstance(node.value, ast.Name) and node.value.id == "web":
                raise AssertionError(f"{rel} uses web.{node.attr}")


def test_only_the_fake_agent_in_api_is_a_server_and_nothing_in_the_product_imports_it():
    """api/testing.py runs an aiohttp server for tests; the agent, the proxy and the
    rest of api/ must never depend on it."""
    for path in _modules():
        rel = _rel(path)
        if rel in AIOHTTP_SERVER_EXCEPTIONS:
            continue
        for name in _imports(path):
            assert name != "mesh.api.testing", f"{rel} imports {name}: the fake agent is for tests only"
