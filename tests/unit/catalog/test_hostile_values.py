"""Hostile values through the pure decoders: the strict JSON reader, integer fields,
durations and the filter parser refuse them with InvalidRequest naming the field, and
nothing else (no RecursionError, ValueError, OverflowError) ever escapes."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.catalog import jsonbody
from mesh.catalog.durations import MAX_DURATION, parse_duration
from mesh.catalog.errors import InvalidRequest
from mesh.catalog.filter import MAX_DEPTH, compile_filter
from mesh.catalog.intentions import parse_intention
from mesh.catalog.requests import as_int, parse_deregister, parse_register

# ---- the JSON reader -----------------------------------------------------------------


@pytest.mark.parametrize("body, message", [
    ('{"Port":NaN}', "Port: must be a finite number, got NaN"),
    ('{"Port":Infinity}', "Port: must be a finite number, got Infinity"),
    ('{"Port":-Infinity}', "Port: must be a finite number"),
    ('{"Port":1e999}', "Port: must be a finite number, got Infinity"),
    ('{"Service":{"Weights":{"Passing":NaN}}}', "Service.Weights.Passing: must be a finite number"),
    ('{"Checks":[{},{"OutputMaxSize":1e999}]}', r"Checks\[1\].OutputMaxSize: must be a finite number"),
    ('{"Config":{"CSRMaxPerSecond":' + str(2**70) + "}}", "Config.CSRMaxPerSecond: integer out of range"),
    ('{"a":' + str(-(2**63 + 1)) + "}", "a: integer out of range"),
    ('{"a":1' + "0" * 5000 + "}", "a: integer out of range"),
    ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
    ("[" * 65 + "]" * 65, "nested deeper than 64 levels"),
    ('{"a":' * 100 + "1" + "}" * 100, r"a\.a\.a.*: nested deeper than 64 levels"),
    ("{", "Request decode failed"),
    (b"\xff\xfe{}", "Request decode failed"),
])
def test_loads_refuses_with_the_path(body, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        jsonbody.loads(body)
    assert str(err.value).startswith("Request decode failed") and len(str(err.value)) < 400


def test_loads_takes_what_go_takes():
    assert jsonbody.loads(b'{"a":[1,2.5,{"b":null,"c":true}],"d":"\\u00e9"}') == {
        "a": [1, 2.5, {"b": None, "c": True}], "d": "é"}
    assert jsonbody.loads("[" * 64 + "]" * 64) is not None
    assert jsonbody.loads(f'{{"max":{2**64 - 1},"min":{-(2**63)}}}') == {"max": 2**64 - 1, "min": -(2**63)}
    # many brackets side by side are not depth
    assert len(jsonbody.loads("[" + ",".join(["[]"] * 10000) + "]")) == 10000


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(_json)
def test_loads_round_trips_ordinary_json(value):
    assert jsonbody.loads(json.dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet='[]{}:,"0123456789.eE+-aNInfity ', max_size=300))
def test_loads_raises_only_invalid_request(text):
    try:
        value = jsonbody.loads(text)
    except InvalidRequest:
        return
    json.dumps(value, allow_nan=False)  # whatever it accepts can be written back as JSON


# ---- integer fields --------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    (math.nan, "must be an integer, got nan"),
    (math.inf, "must be an integer, got inf"),
    (-math.inf, "must be an integer"),
    (80.5, "must be an integer"),
    (True, "must be an integer"),
    ("80", "must be an integer"),
    (1e300, "out of range"),
    (2**70, "out of range"),
    (-1, "out of range"),
    (65536, "out of range"),
])
def test_as_int_refuses_naming_the_field(value, message):
    with pytest.raises(InvalidRequest, match=message) as err:
        as_int(value, "Service.Port", lo=0, hi=65535)
    assert str(err.value).startswith("Service.Port ") and len(str(err.value)) < 200


@given(st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=3)))
def test_as_int_is_an_int_in_range_or_invalid_request(value):
    try:
        out = as_int(value, "x", lo=-1000, hi=1000)
    except InvalidRequest:
        return
    assert type(out) is int and -1000 <= out <= 1000 and out == value


@pytest.mark.parametrize("service, field", [
    ({"Service": "s", "Port": math.nan}, "Service.Port"),
    ({"Service": "s", "Port": math.inf}, "Service.Port"),
    ({"Service": "s", "Weights": {"Passing": math.inf}}, "Service.Weights.Passing"),
    ({"Service": "s", "Weights": {"Passing": 70000}}, "Service.Weights.Passing"),
    ({"Service": "s", "Weights": {"Passing": 1, "Warning": math.nan}}, "Service.Weights.Warning"),
])
def test_registration_integer_fields(service, field):
    with pytest.raises(InvalidRequest, match=field.replace(".", r"\.")):
        parse_register({"Node": "n", "Address": "10.0.0.1", "Service": service})


# ---- durations -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["999999999999999h", "2562048h", 2**70, 1e300, math.inf, math.nan,
                                   "1" * 400 + "s", "-1s", -5])
def test_durations_out_of_range_name_the_field(value):
    with pytest.raises(InvalidRequest, match="Config.RootCertTTL") as err:
        parse_duration(value, what="Config.RootCertTTL")
    assert len(str(err.value)) < 200


def test_longest_duration_is_gos():
    assert parse_duration("2562047h") == 2562047 * 3600.0 <= MAX_DURATION


@given(st.one_of(st.integers(), st.floats(), st.text(alphabet="0123456789.hmsun-+", max_size=40)))
def test_duration_is_bounded_or_invalid_request(value):
    try:
        seconds = parse_duration(value)
    except InvalidRequest:
        return
    assert 0 <= seconds <= MAX_DURATION


# ---- the filter parser -----------------------------------------------------------------


def test_filter_depth_limit():
    assert compile_filter("(" * MAX_DEPTH + "a == 1" + ")" * MAX_DEPTH)({"a": 1})
    assert compile_filter("not " * MAX_DEPTH + "a == 1")({"a": 1}) is (MAX_DEPTH % 2 == 0)
    for text in ("(" * (MAX_DEPTH + 1) + "a == 1" + ")" * (MAX_DEPTH + 1), "not " * (MAX_DEPTH + 1) + "a == 1",
                 "(" * 5000):
        with pytest.raises(InvalidRequest, match=f"filter nested deeper than {MAX_DEPTH}"):
            compile_filter(text)


def test_long_and_or_chains_evaluate_without_recursion():
    anyone = compile_filter(" or ".join(["a == 2"] * 5000) + " or a == 1")
    everyone = compile_filter(" and ".join(["a == 1"] * 5000))
    assert anyone({"a": 1}) and everyone({"a": 1}) and not everyone({"a": 2})


def test_filter_bad_escape_is_invalid_request():
    with pytest.raises(InvalidRequest, match="bad escape"):
        compile_filter('a == "\\x"')


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["(", ")", "not", "and", "or", "a", "==", "1", '"x"', "in", "is", "empty",
                                 "contains", "matches", "\\"]), max_size=80))
def test_filter_raises_only_invalid_request(words):
    try:
        pred = compile_filter(" ".join(words))
    except InvalidRequest:
        return
    if pred is not None:
        pred({"a": 1, "b": ["x"]})


# ---- whole request bodies: a request or an InvalidRequest, never another exception ----

_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
            | st.sampled_from(["web", "10.0.0.1", "allow", "deny", "*", "passing", "00000000-0000-0000-0000-000000000000"]))
_KEYS = st.sampled_from(["Node", "Address", "ID", "Datacenter", "TaggedAddresses", "NodeMeta", "Service", "Check",
                         "Checks", "SkipNodeUpdate", "Port", "Weights", "Passing", "Warning", "Meta", "Tags", "Kind",
                         "Status", "CheckID", "Name", "Definition", "SourceName", "DestinationName", "Action",
                         "Description", "Permissions", "SourceType", "HTTP", "PathPrefix", "Header", "Methods"])
_BODIES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEYS, inner, max_size=6),
                       max_leaves=25)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _BODIES, max_size=8))
def test_fuzzed_bodies_are_requests_or_invalid_request(body):
    for parse in (parse_register, parse_deregister, parse_intention):
        try:
            parse(body)
        except InvalidRequest:
            pass
