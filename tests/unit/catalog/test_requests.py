"""Request decoding: Consul's case-insensitive keys, validation messages, durations."""

from __future__ import annotations

import pytest

from mesh.catalog.durations import format_duration, parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.filter import compile_filter
from mesh.catalog.requests import parse_deregister, parse_register


def test_keys_are_case_insensitive_and_snake_case():
    req = parse_register({"node": "n1", "address": "1.2.3.4",
                          "service": {"service": "web", "port": 80, "enable_tag_override": True}})
    assert req.node.node == "n1" and req.service.service == "web" and req.service.enable_tag_override


def test_service_id_defaults_to_name():
    assert parse_register({"Node": "n", "Address": "a", "Service": {"Service": "web"}}).service.id == "web"


@pytest.mark.parametrize(
    "body, message",
    [
        ({"Address": "1.2.3.4"}, "Must provide node"),
        ({"Node": "n"}, "Must provide address"),
        ({"Node": 5, "Address": "a"}, "must be a string"),
        ({"Node": "n", "Address": "a", "Service": {"Port": 1}}, "missing service name"),
        ({"Node": "n", "Address": "a", "Service": {"Service": "w", "Port": 70000}}, "out of range"),
        ({"Node": "n", "Address": "a", "Service": {"Service": "w", "Port": "80"}}, "must be an integer"),
        ({"Node": "n", "Address": "a", "Check": {"Name": "c", "Status": "ok"}}, "Status"),
        ({"Node": "n", "Address": "a", "NodeMeta": {"consul-x": "1"}}, "reserved"),
        ({"Node": "n", "Address": "a", "ID": "not-a-uuid"}, "UUID"),
        ([], "must be a JSON object"),
    ],
)
def test_bad_registrations_name_the_problem(body, message):
    with pytest.raises(InvalidRequest, match=message):
        parse_register(body)


def test_deregister_needs_node():
    with pytest.raises(InvalidRequest, match="Must provide node"):
        parse_deregister({"ServiceID": "x"})


@pytest.mark.parametrize(
    "text, seconds",
    [("10s", 10), ("1m30s", 90), ("72h", 259200), ("150ms", 0.15), ("0", 0), ("1.5h", 5400), (5, 5)],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10", "ten", "5x", "", "-3s", "1s2"])
def test_bad_durations(text):
    with pytest.raises(InvalidRequest):
        parse_duration(text)


def test_format_duration():
    assert [format_duration(s) for s in (0, 10, 90, 0.5)] == ["0s", "10s", "1m30s", "500ms"]


ROW = {"Node": "n1", "ServiceName": "web", "ServiceTags": ["v1", "primary"], "ServicePort": 80,
       "ServiceMeta": {"version": "1.2"}, "NodeMeta": {"env": "prod"}, "ServiceAddress": ""}


@pytest.mark.parametrize(
    "expr, expected",
    [
        ('ServiceName == "web"', True),
        ('ServiceName != "web"', False),
        ('"v1" in ServiceTags', True),
        ('"v3" not in ServiceTags', True),
        ("ServiceTags contains primary", True),
        ('ServiceMeta.version == "1.2"', True),
        ('NodeMeta.env == prod and ServicePort == 80', True),
        ('NodeMeta.env == dev or ServicePort == 81', False),
        ('not (ServiceName == "web")', False),
        ('ServiceName matches "^w.b$"', True),
        ("ServiceAddress is empty", True),
        ("ServiceTags is not empty", True),
        ('ServiceMeta.missing == "x"', False),
    ],
)
def test_filter_expressions(expr, expected):
    assert compile_filter(expr)(ROW) is expected


@pytest.mark.parametrize("expr", ['ServiceName ==', '(ServiceName == "a"', 'ServiceName ~ "a"', '"a" in'])
def test_bad_filters(expr):
    with pytest.raises(InvalidRequest):
        compile_filter(expr)
