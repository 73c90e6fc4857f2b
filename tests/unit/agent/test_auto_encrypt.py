"""auto_encrypt: config rules, the renewal schedule, the reply check, and the RPC
listener's limits on connections without a client certificate."""

from __future__ import annotations

import datetime
import json
import random

import pytest

from mesh.agent.auto_encrypt import Issued, parse_reply, renew_delay
from mesh.agent.config import ConfigError, parse_args
from mesh.agent.rpc import RPCServer
from mesh.catalog.errors import MeshError

KEY = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
CLIENT = ["-data-dir", "/tmp/x", "-bind", "127.0.0.1", "-retry-join", "127.0.0.1:8300"]
SERVER = ["-server", "-bootstrap-expect", "1", "-data-dir", "/tmp/x", "-bind", "127.0.0.1"]


def _file(tmp_path, body) -> list[str]:
    path = tmp_path / "ae.json"
    path.write_text(json.dumps(body))
    return ["-config-file", str(path)]


def test_client_keys(tmp_path):
    cfg = parse_args([*CLIENT, "-ca-file", "/ca.pem",
                      *_file(tmp_path, {"auto_encrypt": {"tls": True, "dns_san": ["a.example", "b.example"],
                                                         "ip_san": ["10.0.0.1"]}})])
    assert cfg.auto_encrypt_tls and not cfg.auto_encrypt_allow_tls
    assert cfg.auto_encrypt_dns_san == ("a.example", "b.example") and cfg.auto_encrypt_ip_san == ("10.0.0.1",)


def test_server_key_hcl(tmp_path):
    path = tmp_path / "s.hcl"
    path.write_text('auto_encrypt { allow_tls = true }\n')
    cfg = parse_args([*SERVER, "-ca-file", "/ca", "-cert-file", "/c", "-key-file", "/k", "-config-file", str(path)])
    assert cfg.auto_encrypt_allow_tls


@pytest.mark.parametrize("flags, block, message", [
    (CLIENT, {"tls": True}, "auto_encrypt.tls needs ca_file"),
    ([*CLIENT, "-ca-file", "/ca", "-cert-file", "/c", "-key-file", "/k"], {"tls": True}, "remove cert_file"),
    (SERVER, {"tls": True}, "auto_encrypt.tls is for clients"),
    (SERVER, {"allow_tls": True}, "allow_tls needs the server's own ca_file"),
    ([*CLIENT, "-ca-file", "/ca"], {"allow_tls": True}, "allow_tls is for servers"),
    ([*CLIENT, "-ca-file", "/ca"], {"tls": True, "ip_san": ["nope"]}, "not an IP address"),
    ([*CLIENT, "-ca-file", "/ca"], {"tls": True, "dns_san": ["bad name!"]}, "not a DNS name"),
    ([*CLIENT, "-ca-file", "/ca"], {"dns_san": ["a.example"]}, "need auto_encrypt.tls"),
    (CLIENT, {"tls": "maybe"}, "invalid boolean"),
    (CLIENT, {"nope": 1}, "unknown auto_encrypt key 'nope'"),
    (CLIENT, ["x"], "auto_encrypt must be an object"),
])
def test_one_line_errors(tmp_path, flags, block, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_args([*flags, *_file(tmp_path, {"auto_encrypt": block})])
    assert "\n" not in str(info.value)


def _issued(hours: float = 72) -> Issued:
    start = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    return Issued("cert", "key", "td", start, start + datetime.timedelta(hours=hours), start)


def test_renews_at_about_half_life():
    issued = _issued()
    delays = [renew_delay(issued, issued.valid_after, random.Random(seed)) / 3600 for seed in range(50)]
    assert all(0.45 * 72 <= d <= 0.55 * 72 for d in delays)
    late = issued.valid_before - datetime.timedelta(minutes=1)
    assert renew_delay(issued, late, random.Random(1)) == 1.0  # overdue: at once (floor of a second)


def test_backdated_not_before_does_not_hurry_the_renewal():
    received = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    issued = Issued("c", "k", "td", received - datetime.timedelta(minutes=1),
                    received + datetime.timedelta(seconds=10), received)
    assert 4.5 <= renew_delay(issued, received, random.Random(3)) <= 5.5


@pytest.mark.parametrize("reply", [None, [], {"cert_pem": 1}, {"cert_pem": "x", "trust_domain": "t"},
                                   {"cert_pem": "-----BEGIN CERTIFICATE-----", "trust_domain": "t",
                                    "valid_after": "yesterday", "valid_before": "2030-01-01T00:00:00Z"}])
def test_malformed_replies(reply):
    with pytest.raises(MeshError):
        parse_reply(reply, "key", datetime.datetime.now(datetime.UTC))


def test_reply_parsed():
    issued = parse_reply({"cert_pem": "-----BEGIN CERTIFICATE-----", "trust_domain": "t",
                          "valid_after": "2030-01-01T00:00:00Z", "valid_before": "2030-01-04T00:00:00Z"}, "k",
                         datetime.datetime.now(datetime.UTC))
    assert issued.valid_before - issued.valid_after == datetime.timedelta(days=3) and issued.key_pem == "k"


async def test_uncertified_connections_call_only_the_allowed_methods():
    server = RPCServer("127.0.0.1", 0, KEY, cert_optional_methods=frozenset({"AutoEncrypt.Sign"}))

    async def ok(args):
        return "ok"

    server.register("AutoEncrypt.Sign", ok)
    server.register("Catalog.Apply", ok)
    assert await server._dispatch({"m": "AutoEncrypt.Sign", "a": {}}, uncertified=True) == {"r": "ok"}
    for method in ("Catalog.Apply", "Nope", None):
        denied = await server._dispatch({"m": method, "a": {}}, uncertified=True)
        assert denied["k"] == "denied" and "no client certificate" in denied["e"]
    assert await server._dispatch({"m": "Catalog.Apply", "a": {}}) == {"r": "ok"}
