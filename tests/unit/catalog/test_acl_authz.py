"""The ACL authorizer: Consul's precedence (exact over prefix, longest prefix, deny over
write when policies merge), default policies, key list and KeyWritePrefix, mesh and
peering falling back to operator; checked in tables and against a naive linear-scan
reference evaluator on random rule sets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog.acl_authz import (
    ACCESSES,
    Authorizer,
    denied_message,
    grants,
    merge_levels,
    permission_denied,
)
from mesh.catalog.acl_rules import LABELED_KINDS, UNLABELED_KINDS, Rule, Rules, parse_rules
from mesh.catalog.errors import MeshError, PermissionDenied


def authz(*texts: str, default: str = "deny") -> Authorizer:
    return Authorizer.from_rules([parse_rules(t) for t in texts], default)


PRECEDENCE = [
    # (policies, default, kind, name, access, expected)
    (['service "web" { policy = "read" }', 'service_prefix "we" { policy = "write" }'],
     "deny", "service", "web", "write", False),  # exact beats a matching prefix
    (['service "web" { policy = "write" }', 'service_prefix "web" { policy = "deny" }'],
     "deny", "service", "web", "write", True),  # exact beats a prefix of equal length
    (['service_prefix "" { policy = "deny" }', 'service_prefix "we" { policy = "read" }',
      'service_prefix "web" { policy = "write" }'], "deny", "service", "web-1", "write", True),
    (['service_prefix "" { policy = "write" }', 'service_prefix "we" { policy = "deny" }'],
     "allow", "service", "web", "read", False),  # longest prefix wins, even a deny
    (['service_prefix "we" { policy = "deny" }'], "allow", "service", "w", "read", True),
    (['service "web" { policy = "write" }', 'service "web" { policy = "deny" }'],
     "allow", "service", "web", "read", False),  # deny beats write across policies
    (['service "web" { policy = "write" }\nservice "web" { policy = "deny" }'],
     "allow", "service", "web", "read", False),  # ... and within one policy
    (['node_prefix "" { policy = "read" }', 'node_prefix "" { policy = "write" }'],
     "deny", "node", "n", "write", True),  # write beats read
    (['key "k" { policy = "read" }', 'key "k" { policy = "list" }'],
     "deny", "key", "k", "list", True),  # list beats read
    (['key "k" { policy = "write" }', 'key "k" { policy = "list" }'],
     "deny", "key", "k", "write", True),  # write beats list
    ([], "allow", "service", "x", "write", True),  # nothing matches: default allow
    ([], "deny", "service", "x", "read", False),  # nothing matches: default deny
    (['service "web" { policy = "write" }'], "allow", "service", "api", "write", True),
    (['service "web" { policy = "write" }'], "deny", "service", "api", "read", False),
    (['service "web" { policy = "write" }'], "deny", "node", "web", "read", False),  # kinds apart
    (['key_prefix "a/" { policy = "read" }'], "deny", "key", "a/b", "list", False),  # read ≠ list
    (['key_prefix "a/" { policy = "read" }'], "deny", "key", "a/b", "read", True),
    (['key_prefix "a/" { policy = "list" }'], "deny", "key", "a/b", "list", True),
    (['key_prefix "a/" { policy = "list" }'], "deny", "key", "a/b", "write", False),
    (['key_prefix "a/" { policy = "write" }'], "deny", "key", "a/b", "list", True),
    (['key_prefix "a/" { policy = "deny" }'], "allow", "key", "a/b", "read", False),
    (['session_prefix "" { policy = "write" }'], "deny", "session", "n1", "write", True),
    (['agent "n1" { policy = "read" }'], "deny", "agent", "n1", "write", False),
    (['event_prefix "deploy-" { policy = "write" }'], "deny", "event", "deploy-1", "write", True),
    (['query_prefix "" { policy = "read" }'], "deny", "query", "q", "read", True),
]


@pytest.mark.parametrize(("texts", "default", "kind", "name", "access", "expected"), PRECEDENCE)
def test_precedence(texts: list[str], default: str, kind: str, name: str, access: str, expected: bool) -> None:
    assert authz(*texts, default=default).allowed(kind, name, access) is expected


INTENTION_MERGES = [
    # Consul merges the written intentions, then defaults a missing one from the merged
    # policy: a deny policy elsewhere does not take away intentions written as write
    (['service "web" { policy = "deny" }', 'service "web" { policy = "read" intentions = "write" }'],
     "web", "write", True),
    (['service "web" { policy = "write" }', 'service "web" { policy = "deny" }'], "web", "read", False),
    (['service "web" { policy = "write" intentions = "write" }', 'service "web" { policy = "read" intentions = "deny" }'],
     "web", "read", False),
    (['service_prefix "" { policy = "read" }', 'service "web" { policy = "write" intentions = "write" }'],
     "web", "write", True),
    (['service_prefix "" { policy = "read" }'], "api", "write", False),
    (['service_prefix "" { policy = "deny" }'], "api", "read", False),
]


@pytest.mark.parametrize(("texts", "service", "access", "expected"), INTENTION_MERGES)
def test_intentions_merge_like_consul(texts: list[str], service: str, access: str, expected: bool) -> None:
    assert authz(*texts).intention_allowed(service, access) is expected


WILDCARD_INTENTIONS = [
    # (policies, default, read *, write *)
    ([], "deny", False, False),
    ([], "allow", True, True),
    (['service "web" { policy = "read" }'], "deny", True, False),  # any rule reading: read *
    (['service_prefix "" { policy = "write" intentions = "write" }'], "deny", True, True),
    (['service_prefix "" { policy = "write" intentions = "write" }', 'service "db" { policy = "read" }'],
     "deny", True, False),  # write * needs every rule at write
    (['service "web" { policy = "write" intentions = "write" }'], "deny", True, False),  # no catch-all: default
    (['service "web" { policy = "write" intentions = "write" }'], "allow", True, True),
    (['service_prefix "" { policy = "deny" }'], "allow", False, False),
]


@pytest.mark.parametrize(("texts", "default", "read", "write"), WILDCARD_INTENTIONS)
def test_wildcard_intentions(texts: list[str], default: str, read: bool, write: bool) -> None:
    a = authz(*texts, default=default)
    assert a.intention_read("*") is read
    assert a.intention_write("*") is write


KEY_WRITE_PREFIX = [
    # (policies, default, prefix, expected)
    (['key_prefix "" { policy = "write" }'], "deny", "a/", True),
    (['key_prefix "" { policy = "write" }', 'key_prefix "a/b/" { policy = "read" }'], "deny", "a/", False),
    (['key_prefix "" { policy = "write" }', 'key "a/x" { policy = "deny" }'], "deny", "a/", False),
    (['key_prefix "" { policy = "write" }', 'key "a/x" { policy = "list" }'], "deny", "a/", False),
    (['key_prefix "" { policy = "write" }', 'key "b/x" { policy = "deny" }'], "deny", "a/", True),
    (['key_prefix "" { policy = "write" }', 'key "a/" { policy = "read" }'], "deny", "a/", False),  # at the prefix
    (['key_prefix "" { policy = "write" }', 'key "a" { policy = "read" }'], "deny", "a/", True),  # above it
    (['key_prefix "a" { policy = "read" }'], "allow", "a/", False),  # the prefix above is not write
    (['key_prefix "a/" { policy = "write" }', 'key_prefix "a/b" { policy = "write" }'], "deny", "a/", True),
    # only prefix rules count above: an exact write at the prefix leaves it to the default
    (['key "a/" { policy = "write" }'], "deny", "a/", False),
    (['key "a/" { policy = "write" }'], "allow", "a/", True),
    ([], "allow", "a/", True),
    ([], "deny", "a/", False),
    (['key_prefix "a/" { policy = "deny" }'], "allow", "", False),  # "" covers every key
    (['key_prefix "" { policy = "write" }', 'key_prefix "a/" { policy = "deny" }'], "deny", "a/b", False),
]


@pytest.mark.parametrize(("texts", "default", "prefix", "expected"), KEY_WRITE_PREFIX)
def test_key_write_prefix(texts: list[str], default: str, prefix: str, expected: bool) -> None:
    assert authz(*texts, default=default).key_write_prefix(prefix) is expected


GLOBALS = [
    # (policies, default, kind, access, expected)
    (['operator = "write"'], "deny", "mesh", "write", True),  # mesh follows operator
    (['operator = "read"'], "deny", "mesh", "write", False),
    (['operator = "read"'], "deny", "mesh", "read", True),
    (['operator = "write"\nmesh = "deny"'], "allow", "mesh", "read", False),  # mesh set wins
    (['operator = "deny"\nmesh = "write"'], "deny", "mesh", "write", True),
    (['operator = "write"'], "deny", "peering", "write", True),  # so does peering
    (['operator = "deny"'], "allow", "peering", "read", False),
    ([], "allow", "mesh", "write", True),
    ([], "deny", "operator", "read", False),
    (['operator = "read"', 'operator = "deny"'], "allow", "operator", "read", False),
    (['operator = "read"', 'operator = "write"'], "deny", "operator", "write", True),
    (['keyring = "read"'], "deny", "keyring", "write", False),
    (['acl = "read"'], "deny", "acl", "read", True),
    (['acl = "read"'], "deny", "acl", "write", False),
    ([], "allow", "acl", "read", False),  # the default policy never grants ACL management
    ([], "allow", "keyring", "write", True),
    (['operator = "write"'], "deny", "keyring", "read", False),  # keyring does not follow operator
]


@pytest.mark.parametrize(("texts", "default", "kind", "access", "expected"), GLOBALS)
def test_unlabeled(texts: list[str], default: str, kind: str, access: str, expected: bool) -> None:
    assert authz(*texts, default=default).allowed_global(kind, access) is expected


def test_named_helpers_ask_the_right_questions() -> None:
    a = authz(
        'service "s" { policy = "write" intentions = "write" }\nnode "n" { policy = "read" }\n'
        'key_prefix "k/" { policy = "list" }\nsession "n" { policy = "write" }\n'
        'agent "n" { policy = "read" }\nevent "e" { policy = "write" }\nquery "q" { policy = "read" }\n'
        'operator = "read"\nacl = "write"\nkeyring = "read"\npeering = "write"'
    )
    assert a.service_read("s") and a.service_write("s") and not a.service_read("t")
    assert a.node_read("n") and not a.node_write("n")
    assert a.key_read("k/1") and a.key_list("k/") and not a.key_write("k/1")
    assert a.session_read("n") and a.session_write("n")
    assert a.agent_read("n") and not a.agent_write("n")
    assert a.event_read("e") and a.event_write("e")
    assert a.query_read("q") and not a.query_write("q")
    assert a.intention_read("s") and a.intention_write("s")
    assert a.operator_read() and not a.operator_write()
    assert a.mesh_read() and not a.mesh_write()
    assert a.acl_read() and a.acl_write() and a.snapshot()
    assert a.keyring_read() and not a.keyring_write()
    assert a.peering_read() and a.peering_write()


def test_static_authorizers() -> None:
    manage, allow, deny = Authorizer.manage(), Authorizer.allow_all(), Authorizer.deny_all()
    assert manage.is_management and not allow.is_management
    assert manage.acl_write() and manage.snapshot() and manage.key_write_prefix("")
    # Consul's allow-all root allows everything but ACL management and snapshots
    assert allow.service_write("x") and allow.operator_write() and allow.key_write_prefix("")
    assert not allow.acl_read() and not allow.acl_write() and not allow.snapshot()
    assert not deny.service_read("x") and not deny.intention_read("*") and not deny.key_write_prefix("")


def test_unknown_kinds_and_accesses_are_programming_errors() -> None:
    a = authz('service "s" { policy = "read" }')
    with pytest.raises(ValueError):
        a.allowed("services", "s", "read")
    with pytest.raises(ValueError):
        a.allowed("service", "s", "delete")
    with pytest.raises(ValueError):
        a.allowed_global("operators", "read")
    with pytest.raises(ValueError):
        Authorizer.from_rules([], "manage")


# -- the reference evaluator -----------------------------------------------------------

_RANK = {"read": 1, "list": 2, "write": 3, "deny": 4}


def _merge_all(levels: list[str]) -> str:
    return max(levels, key=_RANK.__getitem__)


def reference(policies: list[Rules], default: str, kind: str, name: str, access: str) -> bool:
    """A naive linear scan: all rules of the kind that match; exact ones merged if any,
    else the longest matching prefixes merged, else the default."""
    exact, prefixes = [], []
    for p in policies:
        exact += [r.access for r in p.labeled(kind, False) if r.name == name]
        prefixes += [r for r in p.labeled(kind, True) if name.startswith(r.name)]
    if exact:
        level = _merge_all(exact)
    elif prefixes:
        longest = max(len(r.name) for r in prefixes)
        level = _merge_all([r.access for r in prefixes if len(r.name) == longest])
    else:
        return default == "allow"
    return grants(level, access)


def reference_key_write_prefix(policies: list[Rules], default: str, prefix: str) -> bool:
    above = [r for p in policies for r in p.key_prefix if prefix.startswith(r.name)]
    merged_above = None
    if above:
        longest = max(len(r.name) for r in above)
        merged_above = _merge_all([r.access for r in above if len(r.name) == longest])
        if merged_above != "write":
            return False
    # the merged level of each name beneath must be write
    beneath: dict[tuple[bool, str], list[str]] = {}
    for p in policies:
        for is_prefix in (False, True):
            for r in p.labeled("key", is_prefix):
                if r.name.startswith(prefix):
                    beneath.setdefault((is_prefix, r.name), []).append(r.access)
    if any(_merge_all(levels) != "write" for levels in beneath.values()):
        return False
    return default == "allow" if merged_above is None else True


names = st.text(alphabet="ab/", max_size=4)
levels = st.sampled_from(["deny", "read", "write"])
key_levels = st.sampled_from(["deny", "read", "list", "write"])


@st.composite
def policies(draw: st.DrawFn) -> list[Rules]:
    out = []
    for _ in range(draw(st.integers(1, 3))):
        fields = {}
        for kind in ("service", "node", "key"):
            lv = key_levels if kind == "key" else levels
            for suffix in ("", "_prefix"):
                rules = draw(st.lists(st.tuples(names, lv), max_size=4))
                fields[kind + suffix] = tuple(Rule(n, a) for n, a in rules)
        out.append(Rules(**fields))
    return out


@settings(max_examples=300, deadline=None)
@given(policies(), st.sampled_from(["allow", "deny"]), st.sampled_from(["service", "node", "key"]),
       st.lists(names, min_size=1, max_size=8), st.sampled_from(ACCESSES))
def test_authorizer_matches_the_reference(ps: list[Rules], default: str, kind: str,
                                          queries: list[str], access: str) -> None:
    a = Authorizer.from_rules(ps, default)
    for name in queries:
        assert a.allowed(kind, name, access) is reference(ps, default, kind, name, access), name


@settings(max_examples=200, deadline=None)
@given(policies(), st.sampled_from(["allow", "deny"]), st.lists(names, min_size=1, max_size=8))
def test_key_write_prefix_matches_the_reference(ps: list[Rules], default: str, prefixes: list[str]) -> None:
    a = Authorizer.from_rules(ps, default)
    for prefix in prefixes:
        assert a.key_write_prefix(prefix) is reference_key_write_prefix(ps, default, prefix), prefix


@settings(max_examples=100, deadline=None)
@given(policies(), st.permutations(range(3)), st.sampled_from(["allow", "deny"]),
       st.lists(names, min_size=1, max_size=6))
def test_policy_order_does_not_matter(ps: list[Rules], order: list[int], default: str, queries: list[str]) -> None:
    shuffled = [ps[i] for i in order if i < len(ps)]
    a, b = Authorizer.from_rules(ps, default), Authorizer.from_rules(shuffled, default)
    for name in queries:
        for kind in ("service", "node", "key"):
            for access in ACCESSES:
                assert a.allowed(kind, name, access) is b.allowed(kind, name, access)
        assert a.intention_read(name) is b.intention_read(name)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(LABELED_KINDS), st.text(max_size=20), st.sampled_from(ACCESSES),
       st.sampled_from(UNLABELED_KINDS))
def test_manage_allows_everything_and_deny_all_nothing(kind: str, name: str, access: str, glob: str) -> None:
    manage, deny = Authorizer.manage(), Authorizer.deny_all()
    assert manage.allowed(kind, name, access) and manage.intention_allowed(name, access)
    assert manage.allowed_global(glob, access) and manage.key_write_prefix(name)
    assert not deny.allowed(kind, name, access) and not deny.intention_allowed(name, access)
    assert not deny.allowed_global(glob, access) and not deny.key_write_prefix(name)


def test_merge_levels_is_consuls_precedence() -> None:
    order = ["", "read", "list", "write", "deny"]
    for i, a in enumerate(order):
        for j, b in enumerate(order):
            assert merge_levels(a, b) == order[max(i, j)]


# -- the denial text --------------------------------------------------------------------

DENIED = [
    (("0d1a-4f", "service", "write", "web"),
     "Permission denied: token with AccessorID '0d1a-4f' lacks permission 'service:write' on \"web\""),
    (("", "key", "list", "a/b/"),
     "Permission denied: provided token lacks permission 'key:list' on \"a/b/\""),
    (("abc", "operator", "read", None),
     "Permission denied: token with AccessorID 'abc' lacks permission 'operator:read'"),
    (("abc", "acl", "write", ""),
     "Permission denied: token with AccessorID 'abc' lacks permission 'acl:write'"),
    # Consul CE wraps the name in quotes without escaping (ResourceDescriptor.ToString)
    (("abc", "key", "read", 'a"b\\c'),
     "Permission denied: token with AccessorID 'abc' lacks permission 'key:read' on \"a\"b\\c\""),
]


@pytest.mark.parametrize(("args", "expected"), DENIED)
def test_denied_message(args: tuple[str, str, str, str | None], expected: str) -> None:
    assert denied_message(*args) == expected


def test_permission_denied_is_a_mesh_error_with_that_text() -> None:
    exc = permission_denied("abc", "service", "read", "web")
    assert isinstance(exc, PermissionDenied) and isinstance(exc, MeshError)
    assert str(exc) == denied_message("abc", "service", "read", "web")
