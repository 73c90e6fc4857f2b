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

from .authz import precedence, sort_intentions
from .config_entries import SERVICE_INTENTIONS, entry_to_api
from .structs import ConfigEntry, Intention

__all__ = ["intention_rows", "intentions_entry", "intentions_entries"]

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
