"""Consul's `tls { defaults {} https {} internal_rpc {} }` as values: which keys a block
may hold, and the settings one interface ends up with.

Kept apart from agent/config.py (which parses files and flags) and agent/tls.py (which
builds ssl contexts) so both can use it without importing each other. Pure: no files
are read here. As in Consul, a key set in `https` or `internal_rpc` overrides the same
key of `defaults` for that interface only; a key set nowhere keeps Consul's default.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["TLSSettings", "KEYS", "INTERFACES", "MIN_VERSIONS", "merge"]

# key -> kind ("str" or "bool"), the same in each of the three blocks
KEYS: dict[str, str] = {"ca_file": "str", "ca_path": "str", "cert_file": "str", "key_file": "str",
                        "verify_incoming": "bool", "verify_outgoing": "bool", "verify_server_hostname": "bool",
                        "tls_min_version": "str"}
INTERFACES = ("https", "internal_rpc")
# Consul's names and its older spellings; TLS 1.0 and 1.1 are refused (a one-line error)
MIN_VERSIONS: dict[str, ssl.TLSVersion] = {"TLSv1_2": ssl.TLSVersion.TLSv1_2, "TLSv1_3": ssl.TLSVersion.TLSv1_3,
                                           "tls12": ssl.TLSVersion.TLSv1_2, "tls13": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TLSSettings:
    """What one interface (the HTTPS listener, the server RPC port) is configured with."""

    ca_file: str = ""
    ca_path: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify_incoming: bool = False
    verify_outgoing: bool = False
    verify_server_hostname: bool = False
    tls_min_version: str = "TLSv1_2"

    @property
    def has_ca(self) -> bool:
        return bool(self.ca_file or self.ca_path)

    @property
    def min_version(self) -> ssl.TLSVersion:
        return MIN_VERSIONS[self.tls_min_version]


def merge(defaults: Mapping[str, Any], override: Mapping[str, Any]) -> TLSSettings:
    """The settings of one interface: `override` (its own block) over `defaults`."""
    names = {f.name for f in fields(TLSSettings)}
    values = {k: v for k, v in {**defaults, **override}.items() if k in names and v is not None}
    return TLSSettings(**values)
