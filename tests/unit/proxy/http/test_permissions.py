"""L7 intentions evaluated per request (proxy/http/permissions.py)."""

from __future__ import annotations

import gc

import pytest

from mesh.catalog.authz import IntentionIndex
from mesh.catalog.intentions import parse_intention
from mesh.proxy.http import permissions
from mesh.proxy.http.permissions import DENIED_BODY, authorize, compiled_permissions


def l4(src, dst, action):
    return parse_intention({"SourceName": src, "DestinationName": dst, "Action": action})


def l7(src, dst, *perms):
    return parse_intention({"SourceName": src, "DestinationName": dst, "Permissions": list(perms)})


def perm(action, **http):
    return {"Action": action, "HTTP": http}


ADMIN_DENIED = IntentionIndex([
    l7("web", "api", perm("deny", PathPrefix="/admin"), perm("allow", PathPrefix="/")),
])


@pytest.mark.parametrize(
    "target",
    ["/admin", "/x/../admin", "//admin", "/%61dmin", "/./admin", "/admin/", "/admin/users", "/%2e%2e/admin",
     "/x\\..\\admin", "/admin?x=1", "http://api/admin"],
)
def test_every_spelling_of_a_denied_path_is_denied(view, target):
    decision = authorize(ADMIN_DENIED, "web", "api", True, view(target))
    assert not decision.allowed
    assert decision.reason == "denied by L7 intention web => api, permission 1"
    assert decision.permission == 1


@pytest.mark.parametrize("target", ["/", "/api/admin", "/adm", "/x/..%2Fadmin", "/a%2Fdmin"])
def test_other_paths_are_allowed_by_the_second_permission(view, target):
    decision = authorize(ADMIN_DENIED, "web", "api", False, view(target))
    assert decision.allowed and decision.permission == 2
    assert decision.reason == "allowed by L7 intention web => api, permission 2"


def test_exact_match_does_not_cover_the_trailing_slash(view):
    index = IntentionIndex([l7("web", "api", perm("deny", PathExact="/admin"))])
    assert not authorize(index, "web", "api", True, view("/admin")).allowed
    assert authorize(index, "web", "api", True, view("/admin/")).allowed  # falls to the default


@pytest.mark.parametrize(
    "method, headers, allowed, reason",
    [
        ("GET", [], True, "allowed by L7 intention web => api, permission 1"),
        ("HEAD", [], True, "allowed by L7 intention web => api, permission 1"),
        ("POST", [("x-role", "admin")], True, "allowed by L7 intention web => api, permission 2"),
        ("POST", [("x-role", "user")], False, "denied by default policy (no permission of L7 intention web => api matched)"),
        ("DELETE", [], False, "denied by default policy (no permission of L7 intention web => api matched)"),
    ],
)
def test_first_matching_permission_decides_then_the_default(view, method, headers, allowed, reason):
    index = IntentionIndex([
        l7("web", "api", perm("allow", Methods=["GET", "HEAD"]),
           perm("allow", Methods=["POST"], Header=[{"Name": "X-Role", "Exact": "admin"}])),
    ])
    decision = authorize(index, "web", "api", False, view("/x", method, headers))
    assert (decision.allowed, decision.reason) == (allowed, reason)


def test_no_match_falls_to_default_allow(view):
    index = IntentionIndex([l7("web", "api", perm("deny", PathPrefix="/admin"))])
    decision = authorize(index, "web", "api", True, view("/public"))
    assert decision.allowed and decision.permission is None
    assert decision.reason == "allowed by default policy (no permission of L7 intention web => api matched)"


def test_inverted_header_permission(view):
    index = IntentionIndex([l7("web", "api", perm("deny", Header=[{"Name": "x-env", "Exact": "prod", "Invert": True}]))])
    assert not authorize(index, "web", "api", True, view("/", headers=[("x-env", "dev")])).allowed
    assert not authorize(index, "web", "api", True, view("/")).allowed
    assert authorize(index, "web", "api", True, view("/", headers=[("x-env", "prod")])).allowed


def test_l4_intentions_decide_by_action_and_precedence(view):
    index = IntentionIndex([
        l4("*", "api", "deny"),
        l4("web", "api", "allow"),
        l7("*", "*", perm("allow", PathPrefix="/")),
    ])
    assert authorize(index, "web", "api", False, view("/admin")).reason == "allowed by intention web => api"
    denied = authorize(index, "billing", "api", True, view("/"))
    assert (denied.allowed, denied.reason) == (False, "denied by intention * => api")
    assert denied.permission is None and denied.intention is not None
    assert authorize(index, "billing", "db", False, view("/")).reason == "allowed by L7 intention * => *, permission 1"


def test_exact_source_l7_intention_outranks_wildcard_l4(view):
    index = IntentionIndex([l4("*", "api", "allow"), l7("web", "api", perm("deny", PathPrefix="/"))])
    assert not authorize(index, "web", "api", True, view("/")).allowed
    assert authorize(index, "other", "api", False, view("/")).allowed


def test_nothing_matches_default_policy(view):
    index = IntentionIndex([l4("web", "db", "allow")])
    assert authorize(index, "web", "api", False, view("/")).reason == "denied by default policy (no intention matched)"
    assert authorize(index, "web", "api", True, view("/")).allowed
    assert authorize(IntentionIndex([]), "web", "api", True, view("/")).intention is None


def test_permissions_compile_once_per_index_and_go_with_it(view):
    index = IntentionIndex([l7("web", "api", perm("allow", PathRegex="/v[0-9]+/.*"))])
    intention = index.decide("web", "api", False).intention
    first = compiled_permissions(index, intention)
    authorize(index, "web", "api", False, view("/v1/x"))
    assert compiled_permissions(index, intention) is first
    assert index in permissions._CACHE
    before = len(permissions._CACHE)
    del index, intention, first
    gc.collect()
    assert len(permissions._CACHE) == before - 1


def test_the_403_body_is_envoys():
    assert DENIED_BODY == "RBAC: access denied"
