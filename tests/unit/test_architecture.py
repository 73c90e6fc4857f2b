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
OWNERS = {"pysyncobj": {"agent/raft.py", "agent/pysyncobj_fixes.py"}}
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


def test_every_module_imports_on_its_own():
    names = []
    for path in _modules():
        rel = path.relative_to(ROOT).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        names.append("mesh." + ".".join(parts))
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    for name in names:
        proc = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, cwd="/")
        assert proc.returncode == 0, f"{name}: {proc.stderr[-500:]}"


def test_repository_root_does_not_shadow_dnspython():
    proc = subprocess.run([sys.executable, "-c", "import dns.resolver, dns; print(dns.__file__)"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "site-packages" in proc.stdout
