"""`tls { defaults https internal_rpc }`, `ports { https }` and -https-port: parsing,
per-interface overrides and the one-line errors."""

from __future__ import annotations

import json

import pytest

from mesh.agent.config import ConfigError, parse_args
from mesh.agent.tls_settings import TLSSettings


def _cfg(tmp_path, data: dict, *flags: str):
    path = tmp_path / "tls.json"
    path.write_text(json.dumps(data))
    return parse_args(["-dev", "-config-file", str(path), *flags])


def test_defaults_and_overrides_per_interface(tmp_path):
    cfg = _cfg(tmp_path, {"tls": {
        "defaults": {"ca_file": "ca.pem", "cert_file": "d.pem", "key_file": "d-key.pem", "verify_incoming": True,
                     "tls_min_version": "TLSv1_3"},
        "https": {"cert_file": "h.pem", "key_file": "h-key.pem", "verify_incoming": False},
        "internal_rpc": {"verify_server_hostname": True}}, "ports": {"https": 8501}})
    assert cfg.https_port == 8501
    assert cfg.tls_for("https") == TLSSettings(ca_file="ca.pem", cert_file="h.pem", key_file="h-key.pem",
                                               verify_incoming=False, tls_min_version="TLSv1_3")
    assert cfg.tls_for("internal_rpc") == TLSSettings(ca_file="ca.pem", cert_file="d.pem", key_file="d-key.pem",
                                                      verify_incoming=True, verify_server_hostname=True,
                                                      tls_min_version="TLSv1_3")


def test_hcl_blocks_and_flags(tmp_path):
    path = tmp_path / "tls.hcl"
    path.write_text('tls {\n  https {\n    cert_file = "c.pem"\n    key_file = "k.pem"\n    ca_path = "/cas"\n'
                    '    verify_incoming = true\n  }\n}\nports {\n  https = 0\n}\n'
                    'limits {\n  https_handshake_timeout = "2s"\n}\n')
    cfg = parse_args(["-dev", "-config-file", str(path), "-https-port", "9999", "-http-port", "-1"])
    assert (cfg.https_port, cfg.http_port, cfg.https_handshake_timeout) == (9999, -1, 2.0)
    assert cfg.tls_for("https").verify_incoming and cfg.tls_for("https").ca_path == "/cas"
    assert cfg.tls_for("internal_rpc") == TLSSettings()  # the https block is https's alone
    assert parse_args(["-dev"]).https_port == -1  # Consul's default: off


def test_later_file_overrides_key_by_key(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"tls": {"https": {"cert_file": "c.pem", "key_file": "k.pem"}}}))
    b.write_text(json.dumps({"tls": {"https": {"key_file": "k2.pem"}}}))
    cfg = parse_args(["-dev", "-config-file", str(a), "-config-file", str(b)])
    assert (cfg.tls_for("https").cert_file, cfg.tls_for("https").key_file) == ("c.pem", "k2.pem")


@pytest.mark.parametrize("data, flags, message", [
    ({"tls": {"https": {"cert_file": "c", "key_file": "k", "verify_incomming": True}}}, [],
     "unknown tls.https key 'verify_incomming'"),
    ({"tls": {"rpc": {}}}, [], "unknown tls key 'rpc'"),
    ({"tls": {"internal_rpc": []}}, [], "tls.internal_rpc must be an object"),
    ({"tls": {"defaults": {"tls_min_version": "TLSv1_0"}}}, [], "tls.defaults.tls_min_version: 'TLSv1_0' is not supported"),
    ({"tls": {"defaults": {"verify_incoming": "maybe"}}}, [], "tls.defaults.verify_incoming: invalid boolean"),
    ({}, ["-https-port", "8501"], "ports.https (-https-port) needs tls.https.cert_file and key_file"),
    ({"tls": {"https": {"cert_file": "c"}}, "ports": {"https": 8501}}, [], "needs tls.https.cert_file and key_file"),
    ({"tls": {"defaults": {"cert_file": "c", "key_file": "k"}, "https": {"verify_incoming": True}}},
     ["-https-port", "8501"], "tls.https.verify_incoming needs tls.https.ca_file or ca_path"),
    ({"ports": {"httpz": 1}}, [], "unknown port 'httpz'"),
])
def test_one_line_errors(tmp_path, data, flags, message):
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, data, *flags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_https_context_needs_readable_files(tmp_path):
    from mesh.agent.tls import https_context

    cfg = _cfg(tmp_path, {"tls": {"https": {"cert_file": str(tmp_path / "no.pem"), "key_file": "k"}}},
               "-https-port", "0")
    with pytest.raises(ConfigError, match="cannot load TLS files"):
        https_context(cfg)
    assert https_context(parse_args(["-dev"])) is None
