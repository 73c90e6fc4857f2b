"""Client TLS from flags and the environment (api.config.resolve_tls, CONSUL_HTTP_SSL)
and the context built from it (api.tls.client_context)."""

from __future__ import annotations

import ssl

import pytest

from mesh.api.client import Client
from mesh.api.config import ConfigError, TLSOptions, resolve_address, resolve_tls
from mesh.api.tls import client_context


def test_flags_then_mesh_then_consul_variables():
    env = {"CONSUL_CACERT": "c.pem", "MESH_CACERT": "m.pem", "CONSUL_CAPATH": "/cas", "CONSUL_CLIENT_CERT": "cc",
           "CONSUL_CLIENT_KEY": "ck", "CONSUL_TLS_SERVER_NAME": "server.dc1.consul", "CONSUL_HTTP_SSL_VERIFY": "false"}
    assert resolve_tls({}, env) == TLSOptions(ca_file="m.pem", ca_path="/cas", client_cert="cc", client_key="ck",
                                              server_name="server.dc1.consul", verify=False)
    flags = {"ca-file": "f.pem", "client-cert": "fc", "client-key": "fk", "tls-server-name": "n", "ca-path": "/p"}
    assert resolve_tls(flags, env) == TLSOptions("f.pem", "/p", "fc", "fk", "n", False)
    assert resolve_tls({}, {}) == TLSOptions()


@pytest.mark.parametrize("flag, env, expected", [
    (None, {"CONSUL_HTTP_ADDR": "h:8501", "CONSUL_HTTP_SSL": "true"}, "https://h:8501"),
    (None, {"CONSUL_HTTP_SSL": "1"}, "https://127.0.0.1:8500"),
    (None, {"CONSUL_HTTP_ADDR": "http://h:1", "CONSUL_HTTP_SSL": "true"}, "http://h:1"),  # a scheme given wins
    ("h:2", {"CONSUL_HTTP_SSL": "false"}, "h:2"),
    ("h:2", {"MESH_HTTP_SSL": "T", "CONSUL_HTTP_SSL": "false"}, "https://h:2"),
])
def test_http_ssl(flag, env, expected):
    assert resolve_address(flag, env) == expected


def test_bad_values_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="CONSUL_HTTP_SSL: 'yes please' is not a boolean"):
        resolve_address(None, {"CONSUL_HTTP_SSL": "yes please"})
    with pytest.raises(ConfigError, match="CONSUL_HTTP_SSL_VERIFY"):
        resolve_tls({}, {"CONSUL_HTTP_SSL_VERIFY": "nah"})
    with pytest.raises(ConfigError, match="needs its key"):
        client_context(TLSOptions(client_cert="c.pem"))
    with pytest.raises(ConfigError, match="cannot read CA file /nonexistent"):
        client_context(TLSOptions(ca_file="/nonexistent"))
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        client_context(TLSOptions(ca_path=str(tmp_path)))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot load CA"):
        client_context(TLSOptions(ca_file=str(bad)))
    with pytest.raises(ConfigError, match="cannot load client certificate"):
        client_context(TLSOptions(client_cert=str(bad), client_key=str(bad)))


def test_context_defaults():
    ctx = client_context(TLSOptions())
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.check_hostname
    off = client_context(TLSOptions(verify=False))
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    # TLS options only matter for an https:// address: a plain one reads no files
    assert Client("127.0.0.1:8500", tls=TLSOptions(ca_file="/nonexistent"))._ssl is None
    with pytest.raises(ConfigError):
        Client("https://127.0.0.1:8501", tls=TLSOptions(ca_file="/nonexistent"))
