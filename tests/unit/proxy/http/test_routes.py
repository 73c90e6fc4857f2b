"""service-router matching and destinations (proxy/http/routes.py)."""

from __future__ import annotations

import pytest

from mesh.catalog.errors import InvalidRequest
from mesh.proxy.http.request_view import RequestView
from mesh.proxy.http.routes import HeaderOps, Route, compile_router, rewrite_target

ENTRY = {
    "Kind": "service-router",
    "Name": "api",
    "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/admin/"}},
         "Destination": {"Service": "admin", "PrefixRewrite": "/", "RequestTimeout": "5s"}},
        {"Match": {"HTTP": {"Header": [{"Name": "x-debug", "Exact": "1"}]}},
         "Destination": {"ServiceSubset": "canary", "NumRetries": 3, "RetryOn": ["5xx", "reset"]}},
        {"Match": {"HTTP": {"QueryParam": [{"Name": "canary", "Present": True}]}},
         "Destination": {"ServiceSubset": "canary", "IdleTimeout": "1m30s"}},
        {"Match": {"HTTP": {"PathExact": "/legacy", "Methods": ["GET"]}},
         "Destination": {"PrefixRewrite": "/v2/current", "RetryOnConnectFailure": True,
                         "RetryOnStatusCodes": [503, 429]}},
        {"Match": {"HTTP": {"PathRegex": "/v[0-9]+/.*"}}, "Destination": {"PrefixRewrite": "/ignored"}},
    ],
}


@pytest.mark.parametrize(
    "target, method, headers, name, service, subset",
    [
        ("/admin/users", "GET", [], "route-0", "admin", ""),
        ("/admin", "GET", [], "default", "api", ""),  # prefix "/admin/" does not match "/admin"
        ("/x/../admin/users", "POST", [], "route-0", "admin", ""),
        ("/x", "GET", [("X-Debug", "1")], "route-1", "api", "canary"),
        ("/admin/x", "GET", [("x-debug", "1")], "route-0", "admin", ""),  # first match wins
        ("/x?canary", "GET", [], "route-2", "api", "canary"),
        ("/x?a=1&canary=yes", "GET", [], "route-2", "api", "canary"),
        ("/legacy", "GET", [], "route-3", "api", ""),
        ("/legacy", "POST", [], "default", "api", ""),
        ("/legacy/", "GET", [], "default", "api", ""),
        ("/v1/x", "GET", [], "route-4", "api", ""),
        ("/", "GET", [], "default", "api", ""),
    ],
)
def test_first_matching_route_wins(view, target, method, headers, name, service, subset):
    route = compile_router(ENTRY, "api").match(view(target, method, headers))
    assert (route.name, route.service, route.service_subset) == (name, service, subset)


def test_destination_fields_and_defaults():
    router = compile_router(ENTRY, "api")
    (_, admin), (_, debug), (_, canary), (_, legacy), (_, regex) = router.routes
    assert admin.request_timeout == 5.0 and admin.idle_timeout is None
    assert (debug.num_retries, debug.retry_on) == (3, frozenset({"5xx", "reset"}))
    assert canary.idle_timeout == 90.0 and canary.request_timeout is None
    assert legacy.retry_on_connect_failure and legacy.retry_on_status_codes == frozenset({503, 429})
    assert regex.prefix_rewrite is None  # only with PathPrefix/PathExact
    assert router.default == Route(name="default", service="api")
    assert router.names() == ["route-0", "route-1", "route-2", "route-3", "route-4", "default"]


@pytest.mark.parametrize("entry", [None, {}, {"Kind": "service-router", "Name": "api", "Routes": []}])
def test_no_router_routes_everything_to_the_upstream(view, entry):
    router = compile_router(entry, "api")
    assert router.match(view("/anything")) is router.default
    assert router.default.name == "default" and not router.default.has_retry_features


def test_route_without_match_matches_everything(view):
    router = compile_router({"Routes": [{"Destination": {"Service": "other"}}]}, "api")
    assert router.match(view("/z", "PATCH")).service == "other"


@pytest.mark.parametrize(
    "http, rewrite, target, out",
    [
        ({"PathPrefix": "/admin/"}, "/", "/admin/users?x=1", "/users?x=1"),
        ({"PathPrefix": "/api"}, "/", "/api/x", "//x"),  # Envoy's semantics, documented
        ({"PathPrefix": "/api"}, "/v2", "/api/x", "/v2/x"),
        ({"PathExact": "/legacy"}, "/v2/current", "/legacy?q", "/v2/current?q"),
        ({"PathPrefix": "/API", "CaseInsensitive": True}, "/v2", "/api/x", "/v2/x"),
    ],
)
def test_prefix_rewrite(view, http, rewrite, target, out):
    router = compile_router({"Routes": [{"Match": {"HTTP": http}, "Destination": {"PrefixRewrite": rewrite}}]}, "api")
    route = router.match(view(target))
    assert route.name == "route-0"
    assert rewrite_target(route, target) == out


def test_no_rewrite_leaves_the_target_alone():
    assert rewrite_target(Route(name="default", service="api"), "/a?b") == "/a?b"


def test_header_ops_remove_then_set_then_add():
    router = compile_router({"Routes": [{"Destination": {
        "RequestHeaders": {"Add": {"x-added": "1"}, "Set": {"X-Env": "prod"}, "Remove": ["X-Secret"]},
        "ResponseHeaders": {"Remove": ["server"]},
    }}]}, "api")
    _, route = router.routes[0]
    headers = [("Host", "api"), ("x-env", "dev"), ("X-ENV", "dev2"), ("x-secret", "s"), ("x-added", "0")]
    assert route.request_headers.apply(headers) == [
        ("Host", "api"), ("x-added", "0"), ("X-Env", "prod"), ("x-added", "1")]
    assert route.response_headers.apply([("Server", "x"), ("a", "b")]) == [("a", "b")]


def test_no_header_ops_return_the_same_list():
    headers = [("a", "b")]
    assert HeaderOps().apply(headers) is headers


def test_query_is_parsed_only_for_routers_with_query_rules():
    router = compile_router({"Routes": [{"Match": {"HTTP": {"PathPrefix": "/a"}}, "Destination": {}}]}, "api")

    def explode():
        raise AssertionError("headers built")

    assert router.match(RequestView("GET", "/a", "x=%zz", explode)).name == "route-0"
    assert router.match(RequestView("GET", "/b", "", explode)).name == "default"


def test_bad_duration_is_a_config_error():
    with pytest.raises(InvalidRequest, match="RequestTimeout"):
        compile_router({"Routes": [{"Destination": {"RequestTimeout": "soon"}}]}, "api")
