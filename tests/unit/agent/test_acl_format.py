"""Consul's `pretty` ACL output (agent/cli/acl_format.py) on fixed values: Go's
time.Time text, the token block a bootstrap prints, and list separators."""

from __future__ import annotations

from mesh.agent.cli.acl_format import go_time, policy_list_text, token_list_text, token_text


def test_go_time_drops_trailing_zeros_as_go_does():
    assert go_time("2026-01-02T15:04:05.120000Z") == "2026-01-02 15:04:05.12 +0000 UTC"
    assert go_time("2026-01-02T15:04:05Z") == "2026-01-02 15:04:05 +0000 UTC"
    assert go_time("2026-01-02T15:04:05.5+02:00") == "2026-01-02 15:04:05.5 +0200 +0200"
    assert go_time("not a time") == "not a time"


BOOT = {"AccessorID": "a1", "SecretID": "s1", "Description": "Bootstrap Token (Global Management)",
        "Local": False, "CreateTime": "2026-01-02T15:04:05.000001Z",
        "Policies": [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]}


def test_bootstrap_token_block():
    assert token_text(BOOT) == (
        "AccessorID:       a1\nSecretID:         s1\nDescription:      Bootstrap Token (Global Management)\n"
        "Local:            false\nCreate Time:      2026-01-02 15:04:05.000001 +0000 UTC\nPolicies:\n"
        "   00000000-0000-0000-0000-000000000001 - global-management\n")


def test_lists():
    two = token_list_text([BOOT, dict(BOOT, AccessorID="a2", Policies=None)])
    assert two.count("Legacy:           false\n") == 2 and "\n\nAccessorID:       a2\n" in two
    assert not two.endswith("\n\n")
    assert policy_list_text([{"Name": "p", "ID": "i", "Description": "", "Datacenters": None}]) == \
        "p:\n   ID:           i\n   Description:  \n   Datacenters:  \n"
