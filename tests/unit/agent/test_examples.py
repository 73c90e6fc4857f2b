"""The example definitions the README and `make run` use stay valid."""

from __future__ import annotations

import pathlib

import pytest

from mesh.agent.config import load_file, parse_args
from mesh.agent.local.loader import parse_config_definitions

ROOT = pathlib.Path(__file__).resolve().parents[3]
FILES = sorted((ROOT / "examples").glob("*/*.json")) + sorted((ROOT / "examples").glob("*/*.hcl"))


AGENT_CONFIGS = {"policy.hcl", "acl.hcl"}  # agent settings, not service definitions


@pytest.mark.parametrize("path", [f for f in FILES if f.name not in AGENT_CONFIGS], ids=lambda p: p.name)
def test_example_definitions_parse(path):
    services, checks = parse_config_definitions(((str(path), load_file(str(path))),))
    assert services or checks


def test_make_run_config_dir_loads():
    cfg = parse_args(["-dev", "-config-dir", str(ROOT / "examples" / "services")])
    services, _ = parse_config_definitions(cfg.definitions)
    assert {d.service.id for d, _ in services} == {"web-1", "api-1", "api-2", "db-1", "cache-1"}
    assert {d.service.id for d, _ in services if d.sidecar is not None} == {"web-1", "api-1", "api-2"}
    assert cfg.default_intention_policy == "deny"


def test_the_readme_acl_agent_config_loads():
    cfg = parse_args(["-dev", "-config-file", str(ROOT / "examples" / "acl" / "acl.hcl")])
    assert (cfg.acl_enabled, cfg.acl_default_policy, cfg.default_intention_policy) == (True, "deny", "deny")
