"""A resolver's LoadBalancer, parsed and validated as Consul validates it."""

from __future__ import annotations

import pytest

from mesh.proxy.traffic.lb import CookieConfig, HashPolicy, LoadBalancerConfig


@pytest.mark.parametrize("raw", [None, {}, {"Policy": ""}])
def test_unconfigured_is_round_robin(raw):
    assert LoadBalancerConfig.parse(raw) == LoadBalancerConfig()
    assert LoadBalancerConfig().policy == "round_robin"
    assert not LoadBalancerConfig().hashes


def test_full_entry_in_camel_case():
    config = LoadBalancerConfig.parse({
        "Policy": "ring_hash",
        "RingHashConfig": {"MinimumRingSize": 2048, "MaximumRingSize": 4096},
        "HashPolicies": [
            {"Field": "header", "FieldValue": "X-User", "Terminal": True},
            {"Field": "cookie", "FieldValue": "sess", "CookieConfig": {"TTL": "10s", "Path": "/"}},
            {"SourceIP": True},
        ],
    })
    assert config.policy == "ring_hash" and config.hashes
    assert (config.min_ring_size, config.max_ring_size) == (2048, 4096)
    assert config.hash_policies == (
        HashPolicy("header", "X-User", terminal=True),
        HashPolicy("cookie", "sess", CookieConfig(ttl=10.0, path="/")),
        HashPolicy(source_ip=True),
    )


def test_snake_case_keys_are_read_too():
    config = LoadBalancerConfig.parse({"policy": "least_request", "least_request_config": {"choice_count": 5}})
    assert config.choice_count == 5


def test_zero_values_are_the_defaults():
    config = LoadBalancerConfig.parse({"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 0}})
    assert (config.min_ring_size, config.max_ring_size) == (1024, 8388608)
    assert LoadBalancerConfig.parse({"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 0}}).choice_count == 2


@pytest.mark.parametrize("raw, message", [
    ({"Policy": "fastest"}, r"LoadBalancer\.Policy: must be one of random, round_robin"),
    ({"Policy": "random", "RingHashConfig": {"MinimumRingSize": 8}}, r"LoadBalancer\.RingHashConfig: does not apply"),
    ({"Policy": "maglev", "LeastRequestConfig": {"ChoiceCount": 3}}, r"LoadBalancer\.LeastRequestConfig: does not apply"),
    ({"Policy": "round_robin", "HashPolicies": [{"SourceIP": True}]}, r"LoadBalancer\.HashPolicies: need a hash-based"),
    ({"Policy": "least_request", "LeastRequestConfig": {"ChoiceCount": 1}}, r"ChoiceCount: must be a whole number ≥ 2"),
    ({"Policy": "ring_hash", "RingHashConfig": {"MinimumRingSize": 4096, "MaximumRingSize": 1024}},
     r"RingHashConfig\.MinimumRingSize: must not exceed MaximumRingSize"),
    ({"Policy": "ring_hash", "RingHashConfig": {"MaximumRingSize": 8388609}}, r"MaximumRingSize: must be a whole number"),
    ({"Policy": "maglev", "HashPolicies": [{"Field": "path", "FieldValue": "x"}]}, r"HashPolicies\[0\]\.Field: must be one of"),
    ({"Policy": "maglev", "HashPolicies": [{"Field": "header", "SourceIP": True}]}, r"SourceIP: cannot hash both"),
    ({"Policy": "maglev", "HashPolicies": [{"SourceIP": True, "FieldValue": "x"}]}, r"FieldValue: cannot be set"),
    ({"Policy": "maglev", "HashPolicies": [{"Field": "header"}]}, r"HashPolicies\[0\]\.FieldValue: is required"),
    ({"Policy": "maglev", "HashPolicies": [{"FieldValue": "x"}]}, r"HashPolicies\[0\]\.Field: is required"),
    ({"Policy": "maglev", "HashPolicies": [{}, {"Field": "header", "FieldValue": "x", "CookieConfig": {"Path": "/"}}]},
     r"HashPolicies\[1\]\.CookieConfig: only applies"),
    ({"Policy": "maglev", "HashPolicies": [{"Field": "cookie", "FieldValue": "x",
                                            "CookieConfig": {"Session": True, "TTL": "5s"}}]},
     r"CookieConfig\.TTL: a session cookie cannot have a TTL"),
    ({"Policy": "maglev", "HashPolicies": [{"Field": "cookie", "FieldValue": "x", "CookieConfig": {"TTL": "soon"}}]},
     r"CookieConfig\.TTL: must be a duration"),
])
def test_invalid_entries_name_the_field(raw, message):
    with pytest.raises(ValueError, match=message):
        LoadBalancerConfig.parse(raw)


def test_session_cookie_and_empty_policy_entries():
    config = LoadBalancerConfig.parse({"Policy": "maglev", "HashPolicies": [
        None, {"Field": "cookie", "FieldValue": "s", "CookieConfig": {"Session": True}}]})
    assert config.hash_policies[0] == HashPolicy()
    assert config.hash_policies[1].cookie == CookieConfig(session=True)
    assert config.hash_policies[1].cookie.generates
    assert not CookieConfig(path="/").generates
