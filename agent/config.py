"""Agent configuration: Consul-style flags, JSON and HCL files, one validated result.

Precedence, as in Consul: built-in defaults < config files (in the order given, a
directory's `.json`/`.hcl` files in lexical order) < command-line flags. Lists such as
`retry_join` append. Every problem raises ConfigError with one line naming the flag or
key; the CLI prints it and exits 1.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Any

from mesh.ca.manager import validate_config
from mesh.catalog.durations import parse_duration
from mesh.catalog.errors import InvalidRequest, MeshError
from mesh.dns.answer import DEFAULT_UDP_MAX_PAYLOAD
from mesh.dns.names import name_problem
from mesh.dns.recursor import parse_recursor

from .tls_settings import INTERFACES, KEYS, MIN_VERSIONS, TLSSettings, merge

__all__ = ["ConfigError", "AgentConfig", "parse_args", "reload_config", "load_file", "FLAGS", "KEY_HINT"]

KEY_HINT = "generate a key with 'mesh keygen'"
# deeper than any real config; far below the parsers' recursion limits, so a hostile
# file gets this one line rather than a RecursionError somewhere later
MAX_NESTING = 32


class ConfigError(MeshError):
    pass


@dataclass(frozen=True)
class AgentConfig:
    server: bool = False
    dev: bool = False
    bootstrap_expect: int = 0
    node_name: str = ""
    node_id: str = ""
    datacenter: str = "dc1"
    data_dir: str = ""
    bind_addr: str = ""
    advertise_addr: str = ""
    client_addr: str = "127.0.0.1"
    http_port: int = 8500
    https_port: int = -1  # Consul's default: off (8501 is the conventional port)
    dns_port: int = 8600
    server_port: int = 8300
    raft_port: int = 8301
    # ports { sidecar_min_port sidecar_max_port }: where the agent picks a port for a
    # sidecar_service registered without one (inclusive); min 0 turns that off
    sidecar_min_port: int = 21000
    sidecar_max_port: int = 21255
    retry_join: tuple[str, ...] = ()
    retry_interval: float = 5.0
    retry_max: int = 0
    encrypt: str = ""
    log_level: str = "info"
    log_json: bool = False
    raft_fsync: bool = True
    raft_snapshot_threshold: int = 8192
    raft_snapshot_interval: float = 300.0
    domain: str = "consul."
    alt_domain: str = ""
    dns_max_stale: float = 87600 * 3600.0
    dns_only_passing: bool = False
    dns_enable_truncate: bool = False
    dns_node_ttl: float = 0.0
    dns_service_ttl: tuple[tuple[str, float], ...] = ()
    dns_udp_answer_limit: int = 3
    dns_a_record_limit: int = 0
    dns_udp_max_payload: int = DEFAULT_UDP_MAX_PAYLOAD
    recursors: tuple[str, ...] = ()
    default_intention_policy: str = "allow"
    # acl { ... } (Consul's keys): with ACLs on, every HTTP request and server call is
    # checked against its token, and the default intention decision follows
    # default_policy
    acl_enabled: bool = False
    acl_default_policy: str = "allow"
    acl_down_policy: str = "extend-cache"
    acl_token_ttl: float = 30.0
    acl_enable_token_persistence: bool = False
    acl_initial_management_token: str = field(default="", repr=False)
    acl_agent_token: str = field(default="", repr=False)
    acl_default_token: str = field(default="", repr=False)
    acl_agent_recovery_token: str = field(default="", repr=False)
    acl_dns_token: str = field(default="", repr=False)
    # connect { ca_config { ... } }: the CA's configuration when the cluster first
    # creates it (API field names); afterwards only the API changes it, as in Consul
    ca_config: tuple[tuple[str, Any], ...] = ()
    # tls { defaults { ca_file ca_path cert_file key_file } } (and the -ca-file ... flags);
    # the other keys of `defaults` and the `https`/`internal_rpc` blocks as set, as
    # (key, value) pairs: agent.tls_settings merges them per interface (tls_for)
    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    tls_defaults: tuple[tuple[str, Any], ...] = ()
    tls_https: tuple[tuple[str, Any], ...] = ()
    tls_internal_rpc: tuple[tuple[str, Any], ...] = ()
    # auto_encrypt { allow_tls } on servers, { tls dns_san ip_san } on clients: a client
    # gets its RPC certificate from the servers' Connect CA (agent/auto_encrypt.py)
    auto_encrypt_allow_tls: bool = False
    auto_encrypt_tls: bool = False
    auto_encrypt_dns_san: tuple[str, ...] = ()
    auto_encrypt_ip_san: tuple[str, ...] = ()
    recursor_timeout: float = 2.0
    liveness_timeout: float = 10.0
    reconnect_timeout: float = 72 * 3600.0
    heartbeat_interval: float = 1.0
    enable_script_checks: bool = False  # script checks from anywhere, the HTTP API included
    enable_local_script_checks: bool = False  # script checks from config files only
    check_output_max_size: int = 4096
    ae_interval: float = 60.0
    node_meta: tuple[tuple[str, str], ...] = ()
    default_query_time: float = 300.0
    max_query_time: float = 600.0
    # limits { ... }: what one client may hold of the listeners (agent.conn_limits)
    rpc_handshake_timeout: float = 5.0
    https_handshake_timeout: float = 5.0
    rpc_max_conns_per_client: int = 100
    http_max_conns_per_client: int = 200
    # limits { kv_max_value_size txn_max_req_len }: Consul's defaults (512 KiB each)
    kv_max_value_size: int = 512 * 1024
    txn_max_req_len: int = 512 * 1024
    # how long a deleted KV key's tombstone keeps it visible to blocking list reads
    tombstone_ttl: float = 15 * 60.0
    session_ttl_min: float = 10.0  # Consul's session_ttl_min: the shortest session TTL allowed
    http_header_timeout: float = 10.0
    http_idle_timeout: float = 75.0
    # mesh's own: run `mesh connect proxy` for each sidecar (agent/proxies/), and how
    # long a proxy may drain after SIGTERM before it is killed
    supervise_proxies: bool = True
    proxy_drain_timeout: float = 5.0
    config_files: tuple[str, ...] = field(default=(), compare=False)
    # raw `service`/`services`/`check`/`checks` blocks with the file they came from;
    # parsed and validated by the agent (agent.local.definitions)
    definitions: tuple[tuple[str, dict[str, Any]], ...] = field(default=(), compare=False)
    argv: tuple[str, ...] = field(default=(), compare=False)

    def node_meta_map(self) -> dict[str, str]:
        return dict(self.node_meta)

    def advertise(self) -> str:
        return self.advertise_addr or self.bind_addr

    def tls_for(self, interface: str) -> TLSSettings:
        """The TLS settings of "https" or "internal_rpc": its own block over `defaults`."""
        defaults = {"ca_file": self.ca_file, "ca_path": self.ca_path, "cert_file": self.cert_file,
                    "key_file": self.key_file, **dict(self.tls_defaults)}
        return merge(defaults, dict(getattr(self, f"tls_{interface}")))


# flag name -> (config key, kind). Kinds: str, int, bool, list, duration, port, files
FLAGS: dict[str, tuple[str, str]] = {
    "server": ("server", "bool"),
    "dev": ("dev", "bool"),
    "bootstrap-expect": ("bootstrap_expect", "int"),
    "bootstrap": ("bootstrap", "bool"),
    "node": ("node_name", "str"),
    "node-id": ("node_id", "str"),
    "datacenter": ("datacenter", "str"),
    "data-dir": ("data_dir", "str"),
    "bind": ("bind_addr", "str"),
    "advertise": ("advertise_addr", "str"),
    "client": ("client_addr", "str"),
    "http-port": ("http_port", "port"),
    "https-port": ("https_port", "port"),
    "dns-port": ("dns_port", "port"),
    "server-port": ("server_port", "port"),
    "raft-port": ("raft_port", "port"),
    "sidecar-min-port": ("sidecar_min_port", "port"),
    "sidecar-max-port": ("sidecar_max_port", "port"),
    "retry-join": ("retry_join", "list"),
    "join": ("retry_join", "list"),
    "retry-interval": ("retry_interval", "duration"),
    "retry-max": ("retry_max", "int"),
    "encrypt": ("encrypt", "str"),
    "log-level": ("log_level", "str"),
    "log-json": ("log_json", "bool"),
    "raft-fsync": ("raft_fsync", "bool"),
    "raft-snapshot-threshold": ("raft_snapshot_threshold", "int"),
    "raft-snapshot-interval": ("raft_snapshot_interval", "duration"),
    "domain": ("domain", "str"),
    "alt-domain": ("alt_domain", "str"),
    "dns-max-stale": ("dns_max_stale", "duration"),
    "recursor": ("recursors", "list"),
    "default-intention-policy": ("default_intention_policy", "str"),
    "ca-file": ("ca_file", "str"),
    "ca-path": ("ca_path", "str"),
    "cert-file": ("cert_file", "str"),
    "key-file": ("key_file", "str"),
    "default-query-time": ("default_query_time", "duration"),
    "max-query-time": ("max_query_time", "duration"),
    "liveness-timeout": ("liveness_timeout", "duration"),
    "reconnect-timeout": ("reconnect_timeout", "duration"),
    "tombstone-ttl": ("tombstone_ttl", "duration"),
    "session-ttl-min": ("session_ttl_min", "duration"),
    "heartbeat-interval": ("heartbeat_interval", "duration"),
    "enable-script-checks": ("enable_script_checks", "bool"),
    "enable-local-script-checks": ("enable_local_script_checks", "bool"),
    "ae-interval": ("ae_interval", "duration"),
    "supervise-proxies": ("supervise_proxies", "bool"),
    "proxy-drain-timeout": ("proxy_drain_timeout", "duration"),
    "node-meta": ("node_meta", "meta"),
    "config-file": ("config_files", "files"),
    "config-dir": ("config_files", "dir"),
}

# config-file key -> config key, for keys whose names differ from ours
_FILE_KEYS = {"bind": "bind_addr", "client": "client_addr", "node": "node_name", "advertise": "advertise_addr",
              "start_join": "retry_join", "join": "retry_join"}
_PORT_KEYS = {"http": "http_port", "https": "https_port", "dns": "dns_port", "server": "server_port", "raft": "raft_port",
              "sidecar_min_port": "sidecar_min_port", "sidecar_max_port": "sidecar_max_port"}
_KINDS = {"recursors": "list", "recursor_timeout": "duration", "dns_max_stale": "duration", "node_meta": "meta", "liveness_timeout": "duration", "reconnect_timeout": "duration", "heartbeat_interval": "duration",
          "ae_interval": "duration", "retry_interval": "duration", "raft_snapshot_interval": "duration", "raft_snapshot_threshold": "int", "default_query_time": "duration", "max_query_time": "duration",
          "retry_join": "list", "http_port": "port", "https_port": "port", "https_handshake_timeout": "duration",
          "dns_port": "port", "server_port": "port",
           "raft_port": "port", "sidecar_min_port": "port", "sidecar_max_port": "port", "bootstrap_expect": "int", "retry_max": "int", "check_output_max_size": "int",
           "rpc_handshake_timeout": "duration", "rpc_max_conns_per_client": "int", "http_max_conns_per_client": "int",
           "http_header_timeout": "duration", "http_idle_timeout": "duration",
           "proxy_drain_timeout": "duration", "kv_max_value_size": "int", "txn_max_req_len": "int",
           "tombstone_ttl": "duration", "session_ttl_min": "duration"}
_BOOL_WORDS = {"true": True, "1": True, "t": True, "false": False, "0": False, "f": False}
# keys other issues own: accepted in files so one file can serve every version, not used yet
_ACCEPTED_LATER = {"ui", "ui_config", "telemetry",
                   "leave_on_terminate", "skip_leave_on_interrupt", "performance", "addresses",
                   "primary_datacenter", "disable_host_node_id"}
# service and check definitions: kept raw here, parsed by agent.local.definitions
_DEFINITION_KEYS = {"services", "service", "checks", "check"}


def _coerce(key: str, kind: str, value: Any, where: str) -> Any:
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.lower()]
            raise ConfigError(f"{where}: invalid boolean value {value!r}")
        if kind in ("int", "port"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ConfigError(f"{where}: invalid number {value!r}")
            try:
                number = int(value)
            except (TypeError, ValueError, OverflowError):  # OverflowError: 1e999 in JSON is infinity
                raise ConfigError(f"{where}: invalid number {value!r}") from None
            if kind == "port" and not -1 <= number <= 65535:
                raise ConfigError(f"{where}: port {number} out of range (-1 disables, 0 picks a free port)")
            if kind == "int" and number < 0:
                raise ConfigError(f"{where}: must not be negative")
            return number
        if kind == "duration":
            return parse_duration(value, what=where)
        if kind == "meta":
            if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                return tuple(value.items())
            if isinstance(value, str) and ":" in value:
                k, _, v = value.partition(":")
                return ((k, v),)
            raise ConfigError(f"{where}: expected key:value")
        if kind == "list":
            if isinstance(value, str):
                return (value,)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return tuple(value)
            raise ConfigError(f"{where}: expected a list of strings")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    except InvalidRequest as exc:
        raise ConfigError(str(exc)) from None


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def _hcl_unwrap(value: Any) -> Any:
    """python-hcl2 turns each block into a list of dicts; a lone block becomes a dict."""
    if isinstance(value, dict):
        return {_unquote(k): _hcl_unwrap(v) for k, v in value.items() if not (k.startswith("__") and k.endswith("__"))}
    if isinstance(value, list):
        return [_hcl_unwrap(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _nesting_ok(data: Any, limit: int) -> bool:
    """True when no list or object is nested deeper than `limit` (iterative: the check
    itself must not recurse)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth > limit:
                return False
            stack.extend((v, depth + 1) for v in value)
    return True


_BRACKETS = re.compile(r"[\[\]{}()]")


def _brackets_deeper_than(text: str, limit: int) -> bool:
    """A lexical pre-check for HCL: the parser takes seconds per 100,000 nested brackets
    before it fails. Brackets inside strings count too, which only matters for a file
    with more than `limit` unclosed ones in its strings."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        depth += 1 if match.group() in "[{(" else -1
        if depth > limit:
            return True
    return False


def load_file(path: str, *, any_name: bool = False) -> dict[str, Any]:
    """One config file as a dict (JSON or HCL by extension). With `any_name` (files
    given to `mesh config write`, as Consul's command takes them), `-` is stdin and a
    name with neither extension is JSON when it starts with `{`, HCL otherwise."""
    try:
        if any_name and path == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    if path.endswith(".json"):
        return parse_text(raw, path, "json")
    if path.endswith(".hcl"):
        return parse_text(raw, path, "hcl")
    if any_name:
        return parse_text(raw, "stdin" if path == "-" else path, "json" if raw.lstrip().startswith(b"{") else "hcl")
    raise ConfigError(f"{path}: config files must end in .json or .hcl")


def parse_text(raw: bytes, path: str, syntax: str) -> dict[str, Any]:
    """A config file's bytes (`syntax` "json" or "hcl") as a dict, HCL blocks unwrapped;
    ConfigError naming `path` for anything malformed or nested too deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {raw[exc.start]:#04x} at offset {exc.start})") from None
    if syntax == "json":
        try:
            data = json.loads(text)
        except RecursionError:
            raise ConfigError(f"{path}: invalid JSON: nested more than {MAX_NESTING} levels") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    else:
        import hcl2  # imported lazily: only config loading needs it

        if _brackets_deeper_than(text, 4 * MAX_NESTING):
            raise ConfigError(f"{path}: invalid HCL: nested more than {MAX_NESTING} levels")
        try:
            data = hcl2.loads(text)
            if not _nesting_ok(data, MAX_NESTING + 2):  # python-hcl2 wraps blocks in lists
                raise ConfigError(f"{path}: invalid HCL: nested more than {MAX_NESTING} levels")
            data = _hcl_unwrap(data)
        except ConfigError:
            raise
        except RecursionError:
            raise ConfigError(f"{path}: invalid HCL: nested more than {MAX_NESTING} levels") from None
        except Exception as exc:  # hcl2 raises lark's many exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{path}: invalid HCL: {first}") from None
        for block in ("ports",):
            if isinstance(data.get(block), list) and len(data[block]) == 1:
                data[block] = data[block][0]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be an object")
    if not _nesting_ok(data, MAX_NESTING):
        raise ConfigError(f"{path}: nested more than {MAX_NESTING} levels")
    return data


def _apply_file(values: dict[str, Any], data: dict[str, Any], path: str) -> None:
    for raw_key, value in data.items():
        key = _FILE_KEYS.get(raw_key, raw_key)
        if key == "dns_config":
            _apply_dns_config(values, value, path)
            continue
        if key == "tls":
            _apply_tls(values, value, path)
            continue
        if key == "connect":
            _apply_connect(values, value, path)
            continue
        if key == "acl":
            _apply_acl(values, value, path)
            continue
        if key == "auto_encrypt":
            _apply_auto_encrypt(values, value, path)
            continue
        if key == "limits":
            _apply_limits(values, value, path)
            continue
        if key == "ports":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: ports must be an object")
            for port_name, port in value.items():
                if port_name not in _PORT_KEYS:
                    raise ConfigError(f"{path}: unknown port {port_name!r}")
                values[_PORT_KEYS[port_name]] = _coerce(port_name, "port", port, f"{path}: ports.{port_name}")
            continue
        if key in _ACCEPTED_LATER:
            values.setdefault("_later", {})[key] = value
            continue
        if key in _DEFINITION_KEYS:
            values["definitions"] = tuple(values.get("definitions", ())) + ((path, {key: value}),)
            continue
        names = {f.name for f in fields(AgentConfig)} - {"config_files"}
        if key not in names:
            raise ConfigError(f"{path}: unknown configuration key {raw_key!r}")
        kind = _KINDS.get(key) or ("bool" if isinstance(AgentConfig.__dataclass_fields__[key].default, bool) else "str")
        coerced = _coerce(key, kind, value, f"{path}: {raw_key}")
        if kind in ("list", "meta"):
            values[key] = tuple(values.get(key, ())) + coerced
        else:
            values[key] = coerced


_DNS_KEYS = {"only_passing": ("dns_only_passing", "bool"), "enable_truncate": ("dns_enable_truncate", "bool"),
             "node_ttl": ("dns_node_ttl", "duration"), "max_stale": ("dns_max_stale", "duration"),
             "udp_answer_limit": ("dns_udp_answer_limit", "int"), "a_record_limit": ("dns_a_record_limit", "int"),
             "udp_max_payload": ("dns_udp_max_payload", "int"),
             "recursor_timeout": ("recursor_timeout", "duration"), "allow_stale": ("", "bool")}


def _apply_dns_config(values: dict[str, Any], block: Any, path: str) -> None:
    if isinstance(block, list) and len(block) == 1:
        block = block[0]
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: dns_config must be an object")
    for key, value in block.items():
        if key == "service_ttl":
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: dns_config.service_ttl must map service names to durations")
            values["dns_service_ttl"] = tuple(
                (name, _coerce(name, "duration", ttl, f"{path}: dns_config.service_ttl.{name}"))
                for name, ttl in value.items())
            continue
        if key not in _DNS_KEYS:
            raise ConfigError(f"{path}: unknown dns_config key {key!r}")
        target, kind = _DNS_KEYS[key]
        coerced = _coerce(key, kind, value, f"{path}: dns_config.{key}")
        if target:
            values[target] = coerced


_TLS_PATH_KEYS = ("ca_file", "ca_path", "cert_file", "key_file")


def _apply_tls(values: dict[str, Any], block: Any, path: str) -> None:
    """Consul's `tls { defaults {...} https {...} internal_rpc {...} }` (each with the
    keys of agent.tls_settings.KEYS; `grpc` accepted and unused). The path keys of
    `defaults` are the -ca-file/-ca-path/-cert-file/-key-file settings; a later file
    overrides an earlier one key by key."""
    block = _one(block)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: tls must be an object")
    unknown = set(block) - {"defaults", "grpc", *INTERFACES}
    if unknown:
        raise ConfigError(f"{path}: unknown tls key {sorted(unknown)[0]!r} (use defaults, https or internal_rpc)")
    for section in ("defaults", *INTERFACES):
        if section not in block:
            continue
        raw = _one(block[section])
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: tls.{section} must be an object")
        settings: dict[str, Any] = {}
        for key, value in raw.items():
            where = f"{path}: tls.{section}.{key}"
            if key not in KEYS:
                raise ConfigError(f"{path}: unknown tls.{section} key {key!r}")
            settings[key] = _coerce(key, KEYS[key], value, where)
            if key == "tls_min_version" and settings[key] not in MIN_VERSIONS:
                raise ConfigError(f"{where}: {value!r} is not supported (use TLSv1_2 or TLSv1_3)")
        if section == "defaults":
            for key in _TLS_PATH_KEYS:
                if key in settings:
                    values[key] = settings.pop(key)
        field_name = f"tls_{section}"
        values[field_name] = tuple({**dict(values.get(field_name, ())), **settings}.items())


_AUTO_ENCRYPT_KEYS = {"allow_tls": ("auto_encrypt_allow_tls", "bool"), "tls": ("auto_encrypt_tls", "bool"),
                      "dns_san": ("auto_encrypt_dns_san", "list"), "ip_san": ("auto_encrypt_ip_san", "list")}


def _apply_auto_encrypt(values: dict[str, Any], block: Any, path: str) -> None:
    """Consul's `auto_encrypt { allow_tls tls dns_san ip_san }`."""
    block = _one(block)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: auto_encrypt must be an object")
    for key, value in block.items():
        if key not in _AUTO_ENCRYPT_KEYS:
            raise ConfigError(f"{path}: unknown auto_encrypt key {key!r} (use allow_tls, tls, dns_san or ip_san)")
        target, kind = _AUTO_ENCRYPT_KEYS[key]
        coerced = _coerce(key, kind, value, f"{path}: auto_encrypt.{key}")
        values[target] = tuple(values.get(target, ())) + coerced if kind == "list" else coerced


_ACL_POLICIES = ("allow", "deny")
_DOWN_POLICIES = ("allow", "deny", "extend-cache", "async-cache")
# acl.tokens keys, with Consul's older names for them
_ACL_TOKENS = {"initial_management": "acl_initial_management_token", "master": "acl_initial_management_token",
               "agent": "acl_agent_token", "default": "acl_default_token",
               "agent_recovery": "acl_agent_recovery_token", "agent_master": "acl_agent_recovery_token",
               "dns": "acl_dns_token"}
# tokens Consul has that mesh has no use for yet: accepted, ignored
_ACL_TOKENS_IGNORED = {"replication", "config_file_service_registration"}


def _apply_acl(values: dict[str, Any], block: Any, path: str) -> None:
    """Consul's `acl { enabled default_policy down_policy token_ttl
    enable_token_persistence tokens { initial_management agent default agent_recovery } }`."""
    block = _one(block)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: acl must be an object")
    for key, value in block.items():
        where = f"{path}: acl.{key}"
        if key == "enabled":
            values["acl_enabled"] = _coerce(key, "bool", value, where)
        elif key == "default_policy":
            if value not in _ACL_POLICIES:
                raise ConfigError(f"{where}: must be allow or deny, not {value!r}")
            values["acl_default_policy"] = value
        elif key == "down_policy":
            if value not in _DOWN_POLICIES:
                raise ConfigError(f"{where}: must be one of {', '.join(_DOWN_POLICIES)}, not {value!r}")
            values["acl_down_policy"] = value
        elif key in ("token_ttl", "policy_ttl", "role_ttl"):
            if key == "token_ttl":
                values["acl_token_ttl"] = _coerce(key, "duration", value, where)
        elif key == "enable_token_persistence":
            values["acl_enable_token_persistence"] = _coerce(key, "bool", value, where)
        elif key == "tokens":
            tokens = _one(value)
            if not isinstance(tokens, dict):
                raise ConfigError(f"{where}: must be an object")
            for name, token in tokens.items():
                if name in _ACL_TOKENS_IGNORED:
                    continue
                if name not in _ACL_TOKENS:
                    raise ConfigError(f"{where}: unknown token {name!r}")
                values[_ACL_TOKENS[name]] = _coerce(name, "str", token, f"{where}.{name}")
        elif key in ("enable_key_list_policy", "enable_token_replication"):
            continue  # accepted for compatibility; mesh's behaviour is documented
        else:
            raise ConfigError(f"{where}: unknown acl key")
    if values.get("acl_enabled"):
        # Consul: with ACLs on, an intention-less connection follows acl.default_policy
        values["default_intention_policy"] = values.get("acl_default_policy", "allow")


_CA_CONFIG_KEYS = {"leaf_cert_ttl": "LeafCertTTL", "root_cert_ttl": "RootCertTTL",
                   "intermediate_cert_ttl": "IntermediateCertTTL", "private_key_type": "PrivateKeyType",
                   "private_key_bits": "PrivateKeyBits", "rotation_period": "RotationPeriod",
                   "csr_max_per_second": "CSRMaxPerSecond", "csr_max_concurrent": "CSRMaxConcurrent"}


def _one(block: Any) -> Any:
    """HCL blocks arrive as one-element lists."""
    return block[0] if isinstance(block, list) and len(block) == 1 else block


def _apply_connect(values: dict[str, Any], block: Any, path: str) -> None:
    """Consul's `connect { enabled, ca_provider, ca_config { leaf_cert_ttl ... } }`.
    Connect is always on in mesh; the CA config is checked here, so a bad one stops
    the agent at start rather than the leader later."""
    block = _one(block)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: connect must be an object")
    unknown = set(block) - {"enabled", "ca_provider", "ca_config"}
    if unknown:
        raise ConfigError(f"{path}: unknown connect keys: {', '.join(sorted(unknown))}")
    raw = _one(block.get("ca_config", {}))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: connect.ca_config must be an object")
    config = {}
    for key, value in raw.items():
        if key not in _CA_CONFIG_KEYS:
            raise ConfigError(f"{path}: unknown connect.ca_config key {key!r}")
        config[_CA_CONFIG_KEYS[key]] = value
    try:
        validated = validate_config({"Provider": block.get("ca_provider", "consul"), "Config": config})
    except InvalidRequest as exc:
        raise ConfigError(f"{path}: connect.ca_config: {exc}") from None
    values["ca_config"] = tuple(sorted(validated.items()))


_LIMIT_KEYS = ("rpc_handshake_timeout", "https_handshake_timeout", "rpc_max_conns_per_client", "http_max_conns_per_client",
               "http_header_timeout", "http_idle_timeout", "kv_max_value_size", "txn_max_req_len")
# Consul limits mesh has no use for yet: accepted so one file serves both
_LIMITS_LATER = {"request_limits", "rpc_client_timeout", "rpc_rate", "rpc_max_burst"}


def _apply_limits(values: dict[str, Any], block: Any, path: str) -> None:
    """Consul's `limits { rpc_handshake_timeout rpc_max_conns_per_client
    http_max_conns_per_client }`, plus mesh's `http_header_timeout` and
    `http_idle_timeout` (Consul leaves those to Go's HTTP server)."""
    block = _one(block)
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: limits must be an object")
    for key, value in block.items():
        if key in _LIMITS_LATER:
            continue
        if key not in _LIMIT_KEYS:
            raise ConfigError(f"{path}: unknown limits key {key!r}")
        values[key] = _coerce(key, _KINDS[key], value, f"{path}: limits.{key}")


def _dir_files(path: str) -> list[str]:
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise ConfigError(f"cannot read config dir {path}: {exc.strerror}") from None
    return [os.path.join(path, n) for n in names if n.endswith((".json", ".hcl"))]


def parse_args(argv: list[str]) -> AgentConfig:
    """`mesh agent` arguments to a validated config."""
    flag_values: dict[str, Any] = {}
    files: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg in ("-", "--"):
            raise ConfigError(f"unexpected argument {arg!r} (flags start with -)")
        name, eq, inline = arg.lstrip("-").partition("=")
        if name not in FLAGS:
            raise ConfigError(f"flag provided but not defined: -{name}")
        key, kind = FLAGS[name]
        if kind == "bool" and not eq:
            value: Any = True
        elif eq:
            value = inline
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"flag needs an argument: -{name}")
            i += 1
            value = argv[i]
        i += 1
        if kind == "files":
            files.append(value)
        elif kind == "dir":
            files.extend(_dir_files(value))
        elif name == "bootstrap":
            if _coerce(key, "bool", value, "-bootstrap"):
                flag_values["bootstrap_expect"] = 1
        elif kind == "list":
            flag_values[key] = tuple(flag_values.get(key, ())) + (value,)
        elif kind == "meta":
            flag_values[key] = tuple(flag_values.get(key, ())) + _coerce(key, kind, value, f"-{name}")
        else:
            flag_values[key] = _coerce(key, kind, value, f"-{name}")
    values: dict[str, Any] = {}
    for path in files:
        _apply_file(values, load_file(path), path)
    for key, value in flag_values.items():
        if key in ("retry_join", "node_meta", "recursors"):
            values[key] = tuple(values.get(key, ())) + value
        else:
            values[key] = value
    values.pop("_later", None)
    cfg = AgentConfig(**values, config_files=tuple(files), argv=tuple(argv))
    return _finish(cfg)


def reload_config(cfg: AgentConfig) -> AgentConfig:
    """SIGHUP: the running config with service and check definitions read again from
    the same files. Other settings (ports, addresses) need a restart, as in Consul."""
    fresh = parse_args(list(cfg.argv))
    return replace(cfg, definitions=fresh.definitions, log_level=fresh.log_level)


def _default_bind() -> str:
    """Consul binds to the machine's private address; with none, loopback."""
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            addr = str(info[4][0])
            if not ipaddress.ip_address(addr).is_loopback:
                return addr
    except OSError:
        pass
    return "127.0.0.1"


def _check_tls(cfg: AgentConfig) -> None:
    """What HTTPS needs (Consul refuses to start without a certificate for it too)."""
    if cfg.https_port < 0:
        return
    https = cfg.tls_for("https")
    if not (https.cert_file and https.key_file):
        raise ConfigError("ports.https (-https-port) needs tls.https.cert_file and key_file (or tls.defaults)")
    if https.verify_incoming and not https.has_ca:
        raise ConfigError("tls.https.verify_incoming needs tls.https.ca_file or ca_path (or tls.defaults)")


def _check_auto_encrypt(cfg: AgentConfig) -> None:
    """Consul's rules: a server that hands out certificates has its own; a client that
    asks for one verifies the servers with ca_file and brings no certificate."""
    rpc = cfg.tls_for("internal_rpc")
    if cfg.auto_encrypt_allow_tls:
        if not cfg.server:
            raise ConfigError("auto_encrypt.allow_tls is for servers: clients use auto_encrypt.tls")
        if not (rpc.has_ca and rpc.cert_file and rpc.key_file):
            raise ConfigError("auto_encrypt.allow_tls needs the server's own ca_file, cert_file and key_file")
    if cfg.auto_encrypt_tls:
        if cfg.server:
            raise ConfigError("auto_encrypt.tls is for clients: servers use auto_encrypt.allow_tls")
        if not rpc.has_ca:
            raise ConfigError("auto_encrypt.tls needs ca_file (or ca_path) to verify the servers")
        if rpc.cert_file or rpc.key_file:
            raise ConfigError("auto_encrypt.tls gets the agent's certificate from the servers: "
                              "remove cert_file and key_file")
    elif cfg.auto_encrypt_dns_san or cfg.auto_encrypt_ip_san:
        raise ConfigError("auto_encrypt.dns_san and ip_san need auto_encrypt.tls = true")
    for ip in cfg.auto_encrypt_ip_san:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"auto_encrypt.ip_san: {ip!r} is not an IP address") from None
    for name in cfg.auto_encrypt_dns_san:
        if not name.isascii() or name_problem(name.replace("*", "x")) is not None:
            raise ConfigError(f"auto_encrypt.dns_san: {name!r} is not a DNS name")


def _finish(cfg: AgentConfig) -> AgentConfig:
    if cfg.dev:
        cfg = replace(
            cfg,
            server=True,
            bootstrap_expect=cfg.bootstrap_expect or 1,
            bind_addr=cfg.bind_addr or "127.0.0.1",
            node_name=cfg.node_name or socket.gethostname(),
            raft_fsync=False,
        )
    if not cfg.node_name:
        cfg = replace(cfg, node_name=socket.gethostname())
    if not cfg.bind_addr:
        cfg = replace(cfg, bind_addr=_default_bind())
    for name, value in (("-bind", cfg.bind_addr), ("-client", cfg.client_addr)):
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not an IP address") from None
    if cfg.advertise_addr:
        try:
            ipaddress.ip_address(cfg.advertise_addr)
        except ValueError:
            raise ConfigError(f"-advertise: {cfg.advertise_addr!r} is not an IP address") from None
    if not cfg.dev and not cfg.data_dir:
        raise ConfigError("-data-dir is required (or use -dev)")
    if cfg.bootstrap_expect and not cfg.server:
        raise ConfigError("-bootstrap-expect is for servers only: add -server")
    if cfg.server and not cfg.bootstrap_expect and not cfg.retry_join:
        raise ConfigError("a server needs -bootstrap-expect N, or -retry-join to join a running cluster")
    if cfg.server and (cfg.bootstrap_expect > 1 or cfg.retry_join) and not cfg.encrypt and not cfg.dev:
        raise ConfigError("a multi-server cluster needs -encrypt KEY (generate one with 'mesh keygen'): "
                          "it authenticates and encrypts Raft traffic")
    if cfg.encrypt:
        import base64
        import binascii

        try:
            key = base64.b64decode(cfg.encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"-encrypt: not valid base64 ({KEY_HINT})") from None
        if len(key) not in (16, 24, 32):
            raise ConfigError(f"-encrypt: key must be 16, 24 or 32 bytes ({KEY_HINT})")
    if not cfg.server and not cfg.retry_join:
        raise ConfigError("a client agent needs -retry-join HOST:PORT of a server")
    if cfg.liveness_timeout <= cfg.heartbeat_interval:
        raise ConfigError("-liveness-timeout must be longer than -heartbeat-interval")
    if cfg.default_intention_policy not in ("allow", "deny"):
        raise ConfigError(f"-default-intention-policy must be allow or deny, got {cfg.default_intention_policy!r}")
    if cfg.sidecar_min_port > 0 and cfg.sidecar_max_port < cfg.sidecar_min_port:  # Consul's message
        raise ConfigError("sidecar_min_port must be less than sidecar_max_port. To disable, set both to zero.")
    if cfg.check_output_max_size < 1:
        raise ConfigError("check_output_max_size must be positive")
    if cfg.kv_max_value_size < 1 or cfg.txn_max_req_len < 1:
        raise ConfigError("limits.kv_max_value_size and limits.txn_max_req_len must be positive")
    if cfg.session_ttl_min <= 0 or cfg.tombstone_ttl <= 0:
        raise ConfigError("session_ttl_min and tombstone_ttl must be positive")
    if cfg.raft_snapshot_threshold < 2:
        raise ConfigError("-raft-snapshot-threshold must be at least 2")
    if cfg.raft_snapshot_interval <= 0:
        raise ConfigError("-raft-snapshot-interval must be positive")
    if cfg.default_query_time <= 0 or cfg.max_query_time <= 0:
        raise ConfigError("query times must be positive")
    _check_tls(cfg)
    _check_auto_encrypt(cfg)
    for key in ("rpc_handshake_timeout", "https_handshake_timeout", "http_header_timeout", "http_idle_timeout"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"limits.{key} must be positive")
    if cfg.proxy_drain_timeout <= 0:
        raise ConfigError("proxy_drain_timeout must be positive")
    if cfg.log_level.lower() not in ("trace", "debug", "info", "warn", "warning", "error", "err"):
        raise ConfigError(f"-log-level: unknown level {cfg.log_level!r}")
    if not cfg.datacenter or not cfg.datacenter.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"-datacenter: invalid name {cfg.datacenter!r}")
    for name, domain in (("-domain", cfg.domain), ("-alt-domain", cfg.alt_domain)):
        problem = name_problem(domain) if domain else None
        if problem is not None:
            raise ConfigError(f"{name}: {domain!r} is not a DNS domain ({problem})")
    for recursor in cfg.recursors:
        try:
            parse_recursor(recursor)
        except ValueError as exc:
            raise ConfigError(f"-recursor: {exc}") from None
    if not 512 <= cfg.dns_udp_max_payload <= 65535:
        raise ConfigError("dns_config.udp_max_payload must be between 512 and 65535")
    return cfg
