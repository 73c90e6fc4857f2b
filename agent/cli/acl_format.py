"""Consul's `pretty` output of ACL tokens, policies and roles (command/acl/*/formatter.go
in Consul): the same labels, padding and order, so what people grep for in `consul acl`
output is found in `mesh acl` output too. Times are printed as Go prints a time.Time."""

from __future__ import annotations

import datetime
from typing import Any

__all__ = ["go_time", "token_text", "token_list_text", "policy_text", "policy_list_text", "role_text",
           "role_list_text"]


def go_time(text: str) -> str:
    """An RFC 3339 time as Go's time.Time String(): `2026-01-02 15:04:05.123456 +0000 UTC`
    (trailing zeros of the fraction dropped, as Go does); unparsable text as it is."""
    if not text:
        return "0001-01-01 00:00:00 +0000 UTC"
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    offset = moment.strftime("%z")
    zone = "UTC" if offset == "+0000" else offset  # Go names a bare offset zone by its offset
    return moment.strftime("%Y-%m-%d %H:%M:%S") + (f".{fraction}" if fraction else "") + f" {offset} {zone}"


def _links(title: str, links: list[dict[str, Any]] | None, indent: str) -> list[str]:
    if not links:
        return []
    return [f"{indent}{title}:"] + [f"{indent}   {link.get('ID', '')} - {link.get('Name', '')}" for link in links]


def _identities(obj: dict[str, Any], indent: str) -> list[str]:
    lines: list[str] = []
    services = obj.get("ServiceIdentities") or []
    if services:
        lines.append(f"{indent}Service Identities:")
        for s in services:
            dcs = ", ".join(s.get("Datacenters") or []) or "all"
            lines.append(f"{indent}   {s.get('ServiceName', '')} (Datacenters: {dcs})")
    nodes = obj.get("NodeIdentities") or []
    if nodes:
        lines.append(f"{indent}Node Identities:")
        for n in nodes:
            lines.append(f"{indent}   {n.get('NodeName', '')} (Datacenter: {n.get('Datacenter', '')})")
    return lines


def _token_lines(t: dict[str, Any], *, listing: bool) -> list[str]:
    lines = [f"AccessorID:       {t.get('AccessorID', '')}",
             f"SecretID:         {t.get('SecretID', '')}",
             f"Description:      {t.get('Description', '')}",
             f"Local:            {str(bool(t.get('Local'))).lower()}",
             f"Create Time:      {go_time(t.get('CreateTime', ''))}"]
    if t.get("ExpirationTime"):
        lines.append(f"Expiration Time:  {go_time(t['ExpirationTime'])}")
    if listing:
        lines.append("Legacy:           false")
    lines += _links("Policies", t.get("Policies"), "")
    lines += _links("Roles", t.get("Roles"), "")
    return lines + _identities(t, "")


def token_text(t: dict[str, Any]) -> str:
    return "\n".join(_token_lines(t, listing=False)) + "\n"


def token_list_text(tokens: list[dict[str, Any]]) -> str:
    """Entries separated by a blank line (Consul prints the same, with `Legacy:`)."""
    return "\n".join("\n".join(_token_lines(t, listing=True)) + "\n" for t in tokens)


def policy_text(p: dict[str, Any]) -> str:
    """Consul's policy block; the rules follow `Rules:` as they were written."""
    return (f"ID:           {p.get('ID', '')}\n"
            f"Name:         {p.get('Name', '')}\n"
            f"Description:  {p.get('Description', '')}\n"
            f"Datacenters:  {', '.join(p.get('Datacenters') or [])}\n"
            f"Rules:\n{p.get('Rules', '')}")


def policy_list_text(policies: list[dict[str, Any]]) -> str:
    return "".join(f"{p.get('Name', '')}:\n"
                   f"   ID:           {p.get('ID', '')}\n"
                   f"   Description:  {p.get('Description', '')}\n"
                   f"   Datacenters:  {', '.join(p.get('Datacenters') or [])}\n" for p in policies)


def role_text(r: dict[str, Any]) -> str:
    lines = [f"ID:           {r.get('ID', '')}",
             f"Name:         {r.get('Name', '')}",
             f"Description:  {r.get('Description', '')}"]
    lines += _links("Policies", r.get("Policies"), "")
    return "\n".join(lines + _identities(r, "")) + "\n"


def role_list_text(roles: list[dict[str, Any]]) -> str:
    out = []
    for r in roles:
        lines = [f"{r.get('Name', '')}:", f"   ID:           {r.get('ID', '')}",
                 f"   Description:  {r.get('Description', '')}"]
        lines += _links("Policies", r.get("Policies"), "   ")
        out.append("\n".join(lines + _identities(r, "   ")) + "\n")
    return "".join(out)
