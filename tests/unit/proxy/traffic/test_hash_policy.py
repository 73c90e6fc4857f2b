"""Request hashing under HashPolicies, with Envoy's combination and cookie rules."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.traffic.hashing import hash64, rotl64
from mesh.proxy.traffic.lb import CookieConfig, HashPolicy, HashResult, cookie_value, request_hash

HEADER = HashPolicy("header", "X-User")
COOKIE = HashPolicy("cookie", "sess")
QUERY = HashPolicy("query_parameter", "id")
SOURCE = HashPolicy(source_ip=True)


def run(policies, *, headers=None, cookies=None, query=None, source_ip="", seed=1) -> HashResult:
    return request_hash(
        policies,
        header=(headers or {}).get,
        cookie=(cookies or {}).get,
        query=(query or {}).get,
        source_ip=source_ip,
        rng=random.Random(seed),
    )


def test_no_policy_or_nothing_found_is_no_key():
    assert run([]) == HashResult(None, None)
    assert run([HEADER, COOKIE, QUERY, SOURCE, HashPolicy()]) == HashResult(None, None)


def test_each_field_hashes_its_value():
    assert run([HEADER], headers={"x-user": "ann"}).key == hash64("ann")  # asked lower-case
    assert run([COOKIE], cookies={"sess": "abc"}).key == hash64("abc")
    assert run([QUERY], query={"id": "7"}).key == hash64("7")
    assert run([SOURCE], source_ip="192.0.2.1").key == hash64("192.0.2.1")


def test_values_combine_as_envoy_rotl_xor():
    result = run([HEADER, QUERY, SOURCE], headers={"x-user": "ann"}, query={"id": "7"}, source_ip="192.0.2.1")
    expected = rotl64(rotl64(hash64("ann"), 1) ^ hash64("7"), 1) ^ hash64("192.0.2.1")
    assert result.key == expected


def test_a_missing_value_is_skipped_not_combined():
    assert run([HEADER, QUERY], query={"id": "7"}).key == hash64("7")


def test_terminal_stops_only_when_it_found_a_value():
    terminal = HashPolicy("header", "X-User", terminal=True)
    assert run([terminal, SOURCE], headers={"x-user": "ann"}, source_ip="192.0.2.1").key == hash64("ann")
    assert run([terminal, SOURCE], source_ip="192.0.2.1").key == hash64("192.0.2.1")


def test_order_matters():
    a = run([HEADER, QUERY], headers={"x-user": "ann"}, query={"id": "7"}).key
    b = run([QUERY, HEADER], headers={"x-user": "ann"}, query={"id": "7"}).key
    assert a != b


def test_a_cookie_with_a_ttl_is_made_when_absent():
    policy = HashPolicy("cookie", "sess", CookieConfig(ttl=10.5, path="/app"))
    result = run([policy], seed=3)
    assert result.set_cookie is not None
    value = cookie_value(result.set_cookie.split(";")[0], "sess")
    assert result.set_cookie == f"sess={value}; Path=/app; Max-Age=11; HttpOnly"
    assert result.key == hash64(value)
    # the client sends it back: same key, nothing to set
    assert run([policy], cookies={"sess": value}) == HashResult(hash64(value), None)
    assert run([policy], seed=3) == result  # the value comes from the injected rng


def test_a_session_cookie_has_no_max_age_and_a_plain_cookie_is_never_made():
    session = run([HashPolicy("cookie", "s", CookieConfig(session=True))])
    assert session.set_cookie is not None and "Max-Age" not in session.set_cookie
    assert session.set_cookie.endswith("; HttpOnly") and "Path" not in session.set_cookie
    assert run([HashPolicy("cookie", "s", CookieConfig(path="/"))]) == HashResult(None, None)
    assert run([HashPolicy("cookie", "s", CookieConfig(ttl=10))], cookies={"s": ""}).set_cookie is not None


def test_only_the_first_made_cookie_is_set():
    first = HashPolicy("cookie", "a", CookieConfig(ttl=5))
    second = HashPolicy("cookie", "b", CookieConfig(ttl=5))
    assert run([first, second]).set_cookie.startswith("a=")


def test_cookie_value_parses_the_header():
    header = 'theme=dark; sess="abc123" ;empty=; other=x=y'
    assert cookie_value(header, "sess") == "abc123"
    assert cookie_value(header, "theme") == "dark"
    assert cookie_value(header, "empty") == ""
    assert cookie_value(header, "other") == "x=y"
    assert cookie_value(header, "missing") is None
    assert cookie_value("a=1,b=2", "b") == "2"  # two Cookie headers joined
    assert cookie_value("", "a") is None
    assert cookie_value("sessx=1; xsess=2", "sess") is None


COOKIE_NAME = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True).filter(lambda n: n not in ("x", "y"))
COOKIE_OCTETS = st.from_regex(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*", fullmatch=True)  # RFC 6265


@given(COOKIE_NAME, COOKIE_OCTETS)
def test_cookie_value_round_trips(name, value):
    assert cookie_value(f"x=1; {name}={value}; y=2", name) == value
    assert cookie_value(f'{name}="{value}"', name) == value


@given(st.lists(st.sampled_from([HEADER, COOKIE, QUERY, SOURCE]), max_size=6), st.integers(0, 1000))
def test_hashing_is_deterministic(policies, seed):
    kwargs = dict(headers={"x-user": "u"}, cookies={"sess": "c"}, query={"id": "q"}, source_ip="192.0.2.9")
    assert run(policies, seed=seed, **kwargs) == run(policies, seed=seed + 1, **kwargs)
