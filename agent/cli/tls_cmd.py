"""`mesh tls ca create` and `mesh tls cert create -server|-client|-cli`: Consul's
commands for the agent TLS CA and its certificates, with Consul's flags, file names
and messages, written in the current directory.

The certificates are built by mesh.ca.agent_certs (pure); this module owns the random
serials, the clock and the files. Files are created exclusively (an existing one is
never overwritten: `ca create` refuses, `cert create` takes the next free index, as
Consul does) and private keys are 0600.
"""

from __future__ import annotations

import datetime
import os
import secrets
import sys

from mesh.ca.agent_certs import (
    agent_ca,
    agent_cert,
    cert_pem,
    cert_spec,
    ec_key_pem,
    load_ca_pair,
    new_key,
)
from mesh.catalog.errors import InvalidRequest

from .flags import UsageError, parse_flags

__all__ = ["run_tls"]

USAGE = "usage: mesh tls ca create [options] | mesh tls cert create -server|-client|-cli [options]"
_SERVER_WARNING = """==> WARNING: Server Certificates grants authority to become a
    server and access all state in the cluster including root keys
    and all ACL tokens. Do not distribute them to production hosts
    that are not server nodes. Store them as securely as CA keys."""
_MAX_INDEX = 10000


class _Refused(Exception):
    """Consul's own error line: printed as is (no `Error:` prefix), exit 1."""


def _serial() -> int:
    """128 random bits, as Consul's serials (never 0: X.509 wants a positive one)."""
    return secrets.randbits(128) | 1


def _days(raw: str | None, default: int) -> int:
    if raw is None:
        return default
    try:
        days = int(raw)
    except ValueError:
        raise UsageError(f'invalid value "{raw}" for flag -days: parse error') from None
    if days < 1:
        raise UsageError("-days must be at least 1")
    return days


def _exists(path: str) -> bool:
    return os.path.lexists(path)


def _write(path: str, text: str, mode: int) -> None:
    """Create `path` (never replace one) with `mode`, whatever the umask."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise _Refused(f"{path} already exists.") from None
    except OSError as exc:
        raise _Refused(f"cannot write {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), mode)
        f.write(text)
    print(f"==> Saved {path}")


def _ca_create(argv: list[str]) -> int:
    flags, rest = parse_flags(argv, {"days": "str", "domain": "str", "name-constraint": "bool",
                                     "additional-name-constraint": "list", "common-name": "str"}, common=False)
    if rest:
        raise UsageError("usage: mesh tls ca create [-days N] [-domain D] [-name-constraint] ...")
    days = _days(flags.get("days"), 1825)
    domain = flags.get("domain") or "consul"
    cert_file, key_file = f"{domain}-agent-ca.pem", f"{domain}-agent-ca-key.pem"
    for path in (cert_file, key_file):
        if _exists(path):
            raise _Refused(f"{path} already exists.")
    constraints: list[str] = []
    if flags.get("name-constraint"):
        constraints = [*flags.get("additional-name-constraint", []), domain, "localhost"]
    key = new_key()
    now = datetime.datetime.now(datetime.UTC)
    ca = agent_ca(key, _serial(), now, days, flags.get("common-name", ""), constraints)
    _write(cert_file, cert_pem(ca), 0o644)
    _write(key_file, ec_key_pem(key), 0o600)
    return 0


def _free_names(prefix: str) -> tuple[str, str]:
    for i in range(_MAX_INDEX + 1):
        cert, key = f"{prefix}-{i}.pem", f"{prefix}-{i}-key.pem"
        if not _exists(cert) and not _exists(key):
            return cert, key
    raise _Refused("Could not find a filename that doesn't already exist")


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as exc:
        raise _Refused(f"Error reading {what}: open {path}: {(exc.strerror or str(exc)).lower()}") from None


def _cert_create(argv: list[str]) -> int:
    flags, rest = parse_flags(argv, {"server": "bool", "client": "bool", "cli": "bool", "dc": "str",
                                     "domain": "str", "days": "str", "ca": "str", "key": "str", "node": "str",
                                     "additional-dnsname": "list", "additional-ipaddress": "list"}, common=False)
    if rest:
        raise UsageError("usage: mesh tls cert create -server|-client|-cli [options]")
    kinds = [k for k in ("server", "client", "cli") if flags.get(k)]
    if len(kinds) != 1:
        raise _Refused("Please provide either -server, -client, or -cli")
    days = _days(flags.get("days"), 365)
    dc, domain = flags.get("dc") or "dc1", flags.get("domain") or "consul"
    ca_file = (flags.get("ca") or "#DOMAIN#-agent-ca.pem").replace("#DOMAIN#", domain, 1)
    key_file = (flags.get("key") or "#DOMAIN#-agent-ca-key.pem").replace("#DOMAIN#", domain, 1)
    try:
        spec = cert_spec(kinds[0], dc, domain, flags.get("node", ""), flags.get("additional-dnsname", []),
                         flags.get("additional-ipaddress", []))
    except InvalidRequest as exc:
        raise _Refused(str(exc)) from None
    cert_name, key_name = _free_names(f"{dc}-{kinds[0]}-{domain}")
    ca_pem, ca_key_pem = _read(ca_file, "CA"), _read(key_file, "CA key")
    if kinds[0] == "server":
        print(_SERVER_WARNING)
    print(f"==> Using {ca_file} and {key_file}")
    try:
        ca, ca_key = load_ca_pair(ca_pem, ca_key_pem)
    except InvalidRequest as exc:
        raise _Refused(str(exc)) from None
    key = new_key()
    cert = agent_cert(spec, key, ca, ca_key, _serial(), datetime.datetime.now(datetime.UTC), days)
    _write(cert_name, cert_pem(cert), 0o644)
    _write(key_name, ec_key_pem(key), 0o600)
    return 0


def run_tls(argv: list[str]) -> int:
    """`mesh tls ca create ...` / `mesh tls cert create ...`."""
    commands = {("ca", "create"): _ca_create, ("cert", "create"): _cert_create}
    command = commands.get((argv[0], argv[1])) if len(argv) >= 2 else None
    if command is None:
        raise UsageError(USAGE)
    try:
        return command(argv[2:])
    except _Refused as exc:
        print(str(exc), file=sys.stderr)
        return 1
