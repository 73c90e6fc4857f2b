"""api.config.resolve: flags, then the environment, then the default; the Client reads
nothing from the environment itself."""

from __future__ import annotations

import pytest

from mesh.api.client import Client
from mesh.api.config import ConfigError, resolve


@pytest.mark.parametrize("flag, env, expected", [
    (None, {}, "127.0.0.1:8500"),
    ("", {}, "127.0.0.1:8500"),
    (None, {"CONSUL_HTTP_ADDR": "http://10.0.0.1:8500"}, "http://10.0.0.1:8500"),
    (None, {"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "MESH_HTTP_ADDR": "10.0.0.2:8500"}, "10.0.0.2:8500"),
    ("10.0.0.3:8500", {"CONSUL_HTTP_ADDR": "10.0.0.1:8500", "MESH_HTTP_ADDR": "10.0.0.2:8500"}, "10.0.0.3:8500"),
    ("https://agent:8501", {}, "https://agent:8501"),
])
def test_address(flag, env, expected):
    assert resolve(flag, None, env)[0] == expected


def test_unix_addresses_are_refused_clearly():
    with pytest.raises(ConfigError, match="unsupported address scheme 'unix'"):
        resolve(None, None, {"CONSUL_HTTP_ADDR": "unix:///run/consul.sock"})


@pytest.fixture
def files(tmp_path):
    def write(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def test_token_precedence(files):
    flag_file, env_file = files("flag", " from-flag-file\n"), files("env", "from-env-file\n")
    env = {"MESH_HTTP_TOKEN": "mesh-env", "CONSUL_HTTP_TOKEN": "consul-env", "CONSUL_HTTP_TOKEN_FILE": env_file}
    assert resolve(None, "flag", env, flags_token_file=flag_file)[1] == "flag"
    assert resolve(None, None, env, flags_token_file=flag_file)[1] == "from-flag-file"
    assert resolve(None, None, env)[1] == "mesh-env"
    del env["MESH_HTTP_TOKEN"]
    assert resolve(None, None, env)[1] == "consul-env"
    del env["CONSUL_HTTP_TOKEN"]
    assert resolve(None, None, env)[1] == "from-env-file"
    assert resolve(None, None, {})[1] == ""


def test_token_file_errors_name_the_file_and_its_source(files, tmp_path):
    with pytest.raises(ConfigError, match=r"Error loading token file .*missing \(CONSUL_HTTP_TOKEN_FILE\)"):
        resolve(None, None, {"CONSUL_HTTP_TOKEN_FILE": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"\(-token-file\): larger than"):
        resolve(None, None, {}, flags_token_file=files("big", "x" * 70_000))
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        resolve(None, None, {}, flags_token_file=str(tmp_path / "bin"))


def test_the_client_reads_no_environment(monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", "secret")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", "10.9.9.9:8500")
    client = Client("127.0.0.1:8500")
    assert client.token == "" and client.base == "http://127.0.0.1:8500"
    assert Client("https://agent:8501/", "t").base == "https://agent:8501"
