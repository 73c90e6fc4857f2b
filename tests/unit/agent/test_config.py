"""Agent flags and config files: Consul's spelling, precedence, one-line errors."""

from __future__ import annotations

import json

import pytest

from mesh.agent.config import KEY_HINT, ConfigError, parse_args

KEY = "a2tra2tra2tra2tra2tra2tra2tra2tra2tra2tra2s="
SERVER = ["-server", "-bootstrap-expect", "3", "-data-dir", "/tmp/x", "-encrypt", KEY, "-bind", "127.0.0.1"]


def test_flags_in_both_spellings():
    cfg = parse_args([*SERVER, "-node=s1", "-http-port", "0", "-dns-port=-1", "-retry-join", "10.0.0.1:8300",
                      "-retry-join=10.0.0.2:8300", "-raft-fsync=false"])
    assert cfg.node_name == "s1" and cfg.http_port == 0 and cfg.dns_port == -1
    assert cfg.retry_join == ("10.0.0.1:8300", "10.0.0.2:8300")
    assert cfg.raft_fsync is False and cfg.bootstrap_expect == 3 and cfg.server


def test_dev_needs_no_data_dir_or_key():
    cfg = parse_args(["-dev"])
    assert cfg.dev and cfg.server and cfg.bootstrap_expect == 1 and cfg.bind_addr == "127.0.0.1"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-dev", "-nope"], "flag provided but not defined: -nope"),
        (["-dev", "-http-port", "abc"], "invalid number"),
        (["-dev", "-http-port", "70000"], "out of range"),
        (["-dev", "-http-port"], "flag needs an argument"),
        (["-server", "-bootstrap-expect", "3", "-data-dir", "/tmp/x", "-bind", "127.0.0.1"], "-encrypt"),
        (["-server", "-bootstrap-expect", "3", "-bind", "127.0.0.1", "-encrypt", KEY], "-data-dir is required"),
        ([*SERVER, "-bind", "nonsense"], "not an IP address"),
        (["-dev", "-encrypt", "!!!"], "base64"),
        (["-dev", "-retry-interval", "10"], "duration"),
        (["-dev", "-log-level", "loud"], "log-level"),
        (["-dev", "stray"], "unexpected argument"),
    ],
)
def test_bad_flags_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_json_and_hcl_files_and_precedence(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({
        "server": True, "bootstrap_expect": 3, "data_dir": "/tmp/d", "encrypt": KEY, "bind_addr": "127.0.0.1",
        "retry_join": ["10.0.0.1:8300"], "ports": {"http": 9500, "dns": -1}, "node_name": "from-json"}))
    (tmp_path / "b.hcl").write_text('datacenter = "east"\nretry_join = ["10.0.0.2:8300"]\nports {\n  server = 9300\n}\n')
    cfg = parse_args(["-config-dir", str(tmp_path), "-node", "from-flag"])
    assert cfg.datacenter == "east" and cfg.http_port == 9500 and cfg.server_port == 9300 and cfg.dns_port == -1
    assert cfg.retry_join == ("10.0.0.1:8300", "10.0.0.2:8300")
    assert cfg.node_name == "from-flag"  # flags win over files


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.json", "{nope", "invalid JSON"),
        ("bad.hcl", "ports {", "invalid HCL"),
        ("x.json", '{"no_such_key": 1}', "unknown configuration key"),
        ("x.json", '{"ports": {"gopher": 1}}', "unknown port"),
        ("x.json", '{"bootstrap_expect": "three"}', "invalid number"),
        ("x.yaml", "a: 1", "must end in .json or .hcl"),
        ("c.json", '{"connect": {"ca_config": {"leaf_cert_ttl": "1s"}}}', "LeafCertTTL must be between"),
        ("c.json", '{"connect": {"ca_config": {"private_key_type": "dsa"}}}', "PrivateKeyType"),
        ("c.json", '{"connect": {"ca_provider": "vault"}}', "unsupported CA provider"),
        ("c.json", '{"connect": {"ca_config": {"leaf_ttl": "1h"}}}', "unknown connect.ca_config key"),
    ],
)
def test_bad_config_files(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_args(["-dev", "-config-file", str(path)])


def test_connect_ca_config_in_hcl_uses_consul_names(tmp_path):
    path = tmp_path / "ca.hcl"
    path.write_text('connect {\n  enabled = true\n  ca_config {\n    leaf_cert_ttl = "1h"\n'
                    '    private_key_type = "rsa"\n    private_key_bits = 2048\n  }\n}\n')
    config = dict(parse_args(["-dev", "-config-file", str(path)]).ca_config)
    assert config["LeafCertTTL"] == "1h" and config["PrivateKeyType"] == "rsa" and config["PrivateKeyBits"] == 2048
    assert config["RootCertTTL"] == "87600h"  # defaults filled in


def test_key_hint_mentions_keygen():
    assert "mesh keygen" in KEY_HINT


def test_local_script_checks_is_its_own_setting(tmp_path):
    """Consul's enable_local_script_checks allows scripts from config files only; it
    must not turn on enable_script_checks (which lets the HTTP API run commands)."""
    cfg = parse_args(["-dev", "-enable-local-script-checks"])
    assert cfg.enable_local_script_checks and not cfg.enable_script_checks
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"enable_local_script_checks": True}))
    cfg = parse_args(["-dev", "-config-file", str(path)])
    assert cfg.enable_local_script_checks and not cfg.enable_script_checks
    cfg = parse_args(["-dev", "-enable-script-checks"])
    assert cfg.enable_script_checks and not cfg.enable_local_script_checks


def test_check_output_max_size(tmp_path):
    assert parse_args(["-dev"]).check_output_max_size == 4096
    path = tmp_path / "a.hcl"
    path.write_text("check_output_max_size = 8192\n")
    assert parse_args(["-dev", "-config-file", str(path)]).check_output_max_size == 8192
    path.write_text("check_output_max_size = 0\n")
    with pytest.raises(ConfigError, match="check_output_max_size must be positive"):
        parse_args(["-dev", "-config-file", str(path)])
@pytest.mark.parametrize(
    "name, content, message",
    [
        ("u.json", b'{"node_name": "\xff\xfe"}', "not valid UTF-8 (byte 0xff at offset 15)"),
        ("u.hcl", b'node_name = "\xc3"', "not valid UTF-8"),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        ("deep2.json", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested more than"),
        ("deep3.json", b'{"service": ' + b"[" * 500 + b"]" * 500 + b"}", "nested more than"),
        ("deep.hcl", b"a = " + b"[" * 100_000 + b"]" * 100_000, "nested more than"),
        ("list.json", b"[1, 2]", "top level must be an object"),
        ("t.json", b'{"tls": {"defaults": 5}}', "tls.defaults must be an object"),
        ("inf.json", b'{"ports": {"http": 1e999}}', "invalid number inf"),
        ("nan.json", b'{"bootstrap_expect": NaN}', "invalid number nan"),
        ("half.json", b'{"ports": {"http": 80.5}}', "invalid number 80.5"),
        ("wrong.json", b'{"retry_join": {"a": 1}}', "expected a list of strings"),
        ("null.json", b'{"datacenter": null}', "expected a string"),
        ("r.json", b'{"recursors": ["::::"]}', "-recursor"),
        ("d.json", b'{"dns_config": {"udp_max_payload": 100}}', "udp_max_payload must be between 512 and 65535"),
    ],
)
def test_hostile_config_files_are_one_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        parse_args(["-dev", "-config-file", str(path)])
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-dev", "-recursor", "::::"], "-recursor"),
        (["-dev", "-recursor", ""], "-recursor"),
        (["-dev", "-recursor", "1.2.3.4:99999"], "port must be 1-65535"),
        (["-dev", "-domain", "a..b"], "-domain"),
        (["-dev", "-alt-domain", "x" * 70], "-alt-domain"),
        (["-dev", "-client", "::::"], "not an IP address"),
        (["-dev", "-bind", "256.1.1.1"], "not an IP address"),
        (["-dev", "-http-port", "1e999"], "invalid number"),
    ],
)
def test_hostile_flags_are_one_line(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_recursors_and_dns_ceiling(tmp_path):
    path = tmp_path / "dns.hcl"
    path.write_text('dns_config {\n  udp_max_payload = 1232\n  udp_answer_limit = 5\n}\n')
    cfg = parse_args(["-dev", "-config-file", str(path), "-recursor", "8.8.8.8", "-recursor", "[::1]:5353",
                      "-recursor", "dns.example:53"])
    assert cfg.dns_udp_max_payload == 1232 and cfg.dns_udp_answer_limit == 5
    assert cfg.recursors == ("8.8.8.8", "[::1]:5353", "dns.example:53")
    assert parse_args(["-dev"]).dns_udp_max_payload == 4096


def test_sidecar_port_range_from_ports_block_and_flags(tmp_path):
    assert (parse_args(["-dev"]).sidecar_min_port, parse_args(["-dev"]).sidecar_max_port) == (21000, 21255)
    (tmp_path / "p.hcl").write_text("ports {\n  sidecar_min_port = 22000\n  sidecar_max_port = 22010\n}\n")
    cfg = parse_args(["-dev", "-config-file", str(tmp_path / "p.hcl")])
    assert (cfg.sidecar_min_port, cfg.sidecar_max_port) == (22000, 22010)
    cfg = parse_args(["-dev", "-config-file", str(tmp_path / "p.hcl"), "-sidecar-min-port", "22005",
                      "-sidecar-max-port=22006"])
    assert (cfg.sidecar_min_port, cfg.sidecar_max_port) == (22005, 22006)  # flags win
    (tmp_path / "off.json").write_text(json.dumps({"ports": {"sidecar_min_port": 0}}))
    assert parse_args(["-dev", "-config-file", str(tmp_path / "off.json")]).sidecar_min_port == 0  # assignment off


@pytest.mark.parametrize("argv", [["-sidecar-min-port", "22000", "-sidecar-max-port", "21999"],
                                  ["-sidecar-max-port", "0"]])
def test_sidecar_port_range_must_be_ordered(argv):
    with pytest.raises(ConfigError, match=r"^sidecar_min_port must be less than sidecar_max_port\. "
                                          r"To disable, set both to zero\.$"):
        parse_args(["-dev", *argv])
