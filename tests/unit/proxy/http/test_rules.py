"""Compiled HTTP match rules (proxy/http/rules.py): every rule kind, with Invert."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.catalog.regex import RegexError
from mesh.proxy.http.request_view import RequestView, headers_mapping, lazy_headers, parse_query
from mesh.proxy.http.rules import HttpMatch

H = [("X-Env", "prod"), ("X-Tags", "a"), ("x-tags", "b"), ("User-Agent", "curl/8.1 Mozilla")]


def req(path="/", method="GET", query="", headers=H):
    return RequestView(method, path, query, lazy_headers(headers))


@pytest.mark.parametrize(
    "http, path, method, expected",
    [
        ({}, "/anything", "DELETE", True),
        ({"PathExact": "/admin"}, "/admin", "GET", True),
        ({"PathExact": "/admin"}, "/admin/", "GET", False),
        ({"PathExact": "/admin"}, "/Admin", "GET", False),
        ({"PathPrefix": "/admin"}, "/admin", "GET", True),
        ({"PathPrefix": "/admin"}, "/admin/", "GET", True),  # Envoy: a string prefix
        ({"PathPrefix": "/admin"}, "/administrator", "GET", True),
        ({"PathPrefix": "/admin/"}, "/admin", "GET", False),
        ({"PathPrefix": "/admin"}, "/x/admin", "GET", False),
        ({"PathRegex": "/api/v[0-9]+/.*"}, "/api/v2/users", "GET", True),
        ({"PathRegex": "/api/v[0-9]+"}, "/api/v2/users", "GET", False),  # whole path
        ({"PathRegex": "v[0-9]"}, "/api/v2", "GET", False),
        ({"Methods": ["GET", "HEAD"]}, "/", "GET", True),
        ({"Methods": ["get"]}, "/", "GET", True),
        ({"Methods": ["GET", "HEAD"]}, "/", "POST", False),
        ({"PathPrefix": "/api", "Methods": ["POST"]}, "/api/x", "GET", False),
        ({"PathPrefix": "/API", "CaseInsensitive": True}, "/api/x", "GET", True),
        ({"PathExact": "/API", "CaseInsensitive": True}, "/Api", "GET", True),
        ({"PathRegex": "/API/.*", "CaseInsensitive": True}, "/api/x", "GET", True),
    ],
)
def test_path_and_method_rules(http, path, method, expected):
    assert HttpMatch(http).matches(req(path, method)) is expected


@pytest.mark.parametrize(
    "rule, expected",
    [
        ({"Name": "x-env", "Present": True}, True),
        ({"Name": "X-ENV", "Present": True}, True),  # names are case-insensitive
        ({"Name": "x-missing", "Present": True}, False),
        ({"Name": "x-missing"}, False),  # no specifier: presence
        ({"Name": "x-env"}, True),
        ({"Name": "x-env", "Exact": "prod"}, True),
        ({"Name": "x-env", "Exact": "Prod"}, False),
        ({"Name": "x-env", "Exact": "Prod", "IgnoreCase": True}, True),
        ({"Name": "x-env", "Exact": "pro"}, False),
        ({"Name": "x-env", "Prefix": "pr"}, True),
        ({"Name": "x-env", "Prefix": "od"}, False),
        ({"Name": "x-env", "Suffix": "od"}, True),
        ({"Name": "x-env", "Suffix": "pr"}, False),
        ({"Name": "user-agent", "Contains": "Mozilla"}, True),
        ({"Name": "user-agent", "Contains": "mozilla"}, False),
        ({"Name": "x-env", "Regex": "pr[a-z]d"}, True),
        ({"Name": "x-env", "Regex": "pr"}, False),  # whole value
        ({"Name": "x-env", "Regex": "PROD", "IgnoreCase": True}, True),
        ({"Name": "x-tags", "Exact": "a,b"}, True),  # repeated: joined with ","
        ({"Name": "x-tags", "Exact": "a"}, False),
        # Invert negates every kind, an absent header included
        ({"Name": "x-env", "Present": True, "Invert": True}, False),
        ({"Name": "x-missing", "Present": True, "Invert": True}, True),
        ({"Name": "x-env", "Exact": "prod", "Invert": True}, False),
        ({"Name": "x-env", "Exact": "dev", "Invert": True}, True),
        ({"Name": "x-missing", "Exact": "dev", "Invert": True}, True),
        ({"Name": "x-env", "Prefix": "pr", "Invert": True}, False),
        ({"Name": "x-env", "Prefix": "de", "Invert": True}, True),
        ({"Name": "x-env", "Suffix": "od", "Invert": True}, False),
        ({"Name": "x-env", "Suffix": "ev", "Invert": True}, True),
        ({"Name": "x-env", "Regex": "p.*", "Invert": True}, False),
        ({"Name": "x-env", "Regex": "d.*", "Invert": True}, True),
        ({"Name": "user-agent", "Contains": "curl", "Invert": True}, False),
    ],
)
def test_header_rules(rule, expected):
    assert HttpMatch({"Header": [rule]}).matches(req()) is expected


def test_all_header_rules_must_match():
    http = {"Header": [{"Name": "x-env", "Exact": "prod"}, {"Name": "x-missing", "Present": True}]}
    assert HttpMatch(http).matches(req()) is False
    http["Header"][1]["Invert"] = True
    assert HttpMatch(http).matches(req()) is True


@pytest.mark.parametrize(
    "rule, query, expected",
    [
        ({"Name": "debug", "Present": True}, "debug", True),
        ({"Name": "debug", "Present": True}, "debug=", True),
        ({"Name": "debug", "Present": True}, "x=1", False),
        ({"Name": "debug", "Present": True}, "", False),
        ({"Name": "v", "Exact": "2"}, "v=2", True),
        ({"Name": "v", "Exact": "2"}, "v=3", False),
        ({"Name": "v", "Exact": "2"}, "v=2&v=3", True),  # the first value
        ({"Name": "v", "Exact": "2"}, "v=3&v=2", False),
        ({"Name": "name", "Exact": "a b/c"}, "name=a+b%2Fc", True),  # decoded
        ({"Name": "v", "Regex": "[0-9]+"}, "v=42", True),
        ({"Name": "v", "Regex": "[0-9]+"}, "v=4x", False),
    ],
)
def test_query_param_rules(rule, query, expected):
    assert HttpMatch({"QueryParam": [rule]}).matches(req(query=query)) is expected


def test_rules_that_do_not_read_headers_never_build_them():
    def explode():
        raise AssertionError("headers built")

    view = RequestView("GET", "/api/x", "a=1", explode)
    assert HttpMatch({"PathPrefix": "/api", "Methods": ["GET"]}).matches(view)
    assert not HttpMatch({"PathPrefix": "/other", "Header": [{"Name": "x"}]}).matches(view)


def test_headers_are_built_once():
    calls = []
    pairs = [("A", "1")]

    def counting():
        calls.append(1)
        return pairs

    view_headers = lazy_headers(counting())
    assert view_headers() is view_headers()
    assert headers_mapping([(b"X-A", b" 1 "), (b"x-a", b"2")]) == {"x-a": "1,2"}


def test_bad_regex_is_a_config_error():
    with pytest.raises(RegexError):
        HttpMatch({"PathRegex": "(a"})
    with pytest.raises(RegexError):
        HttpMatch({"Header": [{"Name": "x", "Regex": "(?=a)"}]})  # RE2: no lookaround


def test_parse_query():
    assert parse_query("") == {}
    assert parse_query("a=1&b&a=%32&c=x+y") == {"a": ["1", "2"], "b": [""], "c": ["x y"]}
    assert parse_query("bad=%ff") == {"bad": ["\ufffd"]}


@given(st.text(max_size=40))
def test_regex_matching_never_fails_on_any_header_value(value):
    match = HttpMatch({"Header": [{"Name": "x", "Regex": "(a+)+$"}]})
    match.matches(RequestView("GET", "/", "", lambda: {"x": value}))
