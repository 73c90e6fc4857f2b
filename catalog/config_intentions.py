"""The service-intentions config entry over the intention table: one truth, two APIs.

Consul keeps intentions in config entries and shows them through the intentions API
too; mesh keeps them in its intention table (catalog/store.py) and shows them as
config entries. The entry of destination D is synthesized from the rows whose
destination is D, in precedence order, plus a small record in the config table that
holds the entry's Meta and its indexes (the store keeps it current on every change to
those rows, whichever API made it). A write of the entry replaces D's rows in one Raft
command.

Rows written through the entry have no CreatedAt: that is how a read tells them from
rows written through `/v1/connect/intentions`, which it shows, as Consul does, with
LegacyID, LegacyMeta, LegacyCreateTime and LegacyUpdateTime. As in Consul, those
fields are ignored when an entry is written (LegacyMeta must be omitted), so an entry
read back can be written again, which turns its legacy rows into entry rows. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .authz import WILDCARD, precedence, sort_intentions
from .config_decode import Obj, header_matches, http_methods, path_match
from .config_entries import SERVICE_INTENTIONS, entry_to_api
from .errors import InvalidRequest
from .intentions import service_name
from .structs import ConfigEntry, Intention

__all__ = ["parse_sources", "intention_rows", "intentions_entry", "intentions_entries"]

_DESCRIPTION_MAX = 512
_HEADER_OPS = ("Present", "Exact", "Prefix", "Suffix", "Regex")


def parse_sources(top: Obj, destination: str) -> list[dict[str, Any]]:
    """The entry's `Sources`, validated with Consul's rules and messages, canonical
    (empty fields left out, Type `consul`, methods upper-case)."""
    sources = list(top.objs("Sources"))
    if not sources:
        raise InvalidRequest("At least one source is required")
    out = []
    seen: set[str] = set()
    for i, src in enumerate(sources):
        name = src.str("Name")
        if not name:
            raise InvalidRequest(f"Sources[{i}].Name is required")
        service_name(name, f"Sources[{i}].Name")
        src.enterprise()
        src.unsupported("Peer", "SamenessGroup")
        description = src.str("Description")
        if len(description) > _DESCRIPTION_MAX:
            raise InvalidRequest(f"Sources[{i}].Description exceeds maximum length {_DESCRIPTION_MAX}")
        if src.str_map("LegacyMeta"):
            raise InvalidRequest(f"Sources[{i}].LegacyMeta must be omitted")
        # read-only or bridging fields Consul accepts and clears on an entry write
        src.skip("Precedence", "LegacyID", "LegacyCreateTime", "LegacyUpdateTime")
        permissions = _permissions(src)
        action = src.str("Action").lower()
        if permissions and action:
            raise InvalidRequest(f"Sources[{i}].Action must be omitted if Permissions are specified")
        if not permissions and action not in ("allow", "deny"):
            raise InvalidRequest(f"Sources[{i}].Action must be set to 'allow' or 'deny'")
        if permissions and destination == WILDCARD:
            raise InvalidRequest(f"Sources[{i}].Permissions cannot be specified on intentions with wildcarded "
                                 "destinations")
        source_type = src.str("Type") or "consul"
        if source_type != "consul":
            raise InvalidRequest(f"Sources[{i}].Type must be set to 'consul'")
        if name.lower() in seen:
            raise InvalidRequest(f'Sources[{i}] defines "{name}" more than once')
        seen.add(name.lower())
        src.finish()
        canonical: dict[str, Any] = {"Name": name}
        if action:
            canonical["Action"] = action
        if permissions:
            canonical["Permissions"] = permissions
        canonical["Type"] = source_type
        if description:
            canonical["Description"] = description
        out.append(canonical)
    return out


def _permissions(src: Obj) -> list[dict[str, Any]]:
    out = []
    for perm in src.objs("Permissions"):
        action = perm.str("Action").lower()
        if action not in ("allow", "deny"):
            raise InvalidRequest(f"{perm.name('Action')} must be set to 'allow' or 'deny'")
        http = perm.obj("HTTP")
        if http is None:
            raise InvalidRequest(f"{perm.name('HTTP')} is required")
        rule = path_match(http)
        headers = header_matches(http, "Header", _HEADER_OPS)
        methods = http_methods(http)
        http.finish()
        if headers:
            rule["Header"] = headers
        if methods:
            rule["Methods"] = methods
        if not rule:
            raise InvalidRequest(f"{http.path} should not be empty")
        perm.unsupported("JWT")
        perm.finish()
        out.append({"Action": action, "HTTP": rule})
    return out


def intention_rows(entry: ConfigEntry) -> list[Intention]:
    """One row per source of a parsed service-intentions entry: no ID (the HTTP layer
    stamps one; the store keeps the ID of a pair that already exists) and no times."""
    meta = dict(entry.body.get("Meta") or {})
    return [
        Intention(id="", source_name=src["Name"], destination_name=entry.name, action=src.get("Action", ""),
                  description=src.get("Description", ""), meta=meta, source_type=src.get("Type", "consul"),
                  permissions=tuple(src.get("Permissions", ())), precedence=precedence(src["Name"], entry.name))
        for src in entry.body["Sources"]
    ]


def _source_api(row: Intention) -> dict[str, Any]:
    legacy = bool(row.created_at)
    out: dict[str, Any] = {"Name": row.source_name}
    if row.action:
        out["Action"] = row.action
    if row.permissions:
        out["Permissions"] = [dict(p) for p in row.permissions]
    out["Precedence"] = row.precedence
    if legacy:
        out["LegacyID"] = row.id
    out["Type"] = row.source_type or "consul"
    if row.description:
        out["Description"] = row.description
    if legacy:
        if row.meta:
            out["LegacyMeta"] = dict(row.meta)
        out["LegacyCreateTime"] = row.created_at
        if row.updated_at:
            out["LegacyUpdateTime"] = row.updated_at
    return out


def intentions_entry(record: ConfigEntry | None, rows: list[Intention]) -> dict[str, Any] | None:
    """The service-intentions entry of one destination, in Consul's JSON, from its
    rows and its record (None when it has no rows: the entry does not exist)."""
    if not rows:
        return None
    ordered = sort_intentions(rows)
    body: dict[str, Any] = {"Sources": [_source_api(r) for r in ordered]}
    if record is not None and record.body.get("Meta"):
        body["Meta"] = record.body["Meta"]
    creates = [r.create_index for r in rows] + ([record.create_index] if record else [])
    modifies = [r.modify_index for r in rows] + ([record.modify_index] if record else [])
    name = record.name if record is not None else ordered[0].destination_name
    return entry_to_api(ConfigEntry(SERVICE_INTENTIONS, name, body, min(creates), max(modifies)))


def intentions_entries(records: dict[str, ConfigEntry], rows: Iterable[Intention]) -> list[dict[str, Any]]:
    """Every destination's entry, by name: `records` maps a lower-cased destination to
    its record."""
    by_destination: dict[str, list[Intention]] = {}
    for row in rows:
        by_destination.setdefault(row.destination_name.lower(), []).append(row)
    out = [intentions_entry(records.get(key), group) for key, group in sorted(by_destination.items())]
    return [entry for entry in out if entry is not None]
