"""Which strings can go on the wire as DNS names, and why not. Pure.

Catalog names are free text: Consul registers a service called `my_web app`, a node
named with 70 characters or a service address that is no hostname at all, and only
warns that DNS will not find them. An answer must never try to encode such a name:
dnslib raises on a label over 63 bytes or a name over 253, and one bad instance used
to turn the whole answer for its service into an error. Answers test each name here
and leave out the records that cannot be encoded; registration uses the same test to
warn, as Consul does.
"""

from __future__ import annotations

import re

__all__ = ["MAX_LABEL", "MAX_NAME", "label_problem", "name_problem", "dns_compatible", "encodable"]

MAX_LABEL = 63
MAX_NAME = 253  # presentation length without the trailing dot (255 bytes on the wire)

# Consul's InvalidNameRe is [^A-Za-z0-9\-]+; underscores are kept here because RFC
# 2782 names (_web._tcp) and many real hostnames use them and encode fine.
_LABEL_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def label_problem(label: str) -> str | None:
    """Why one label cannot be a DNS label, or None."""
    if not label:
        return "empty label"
    if not _LABEL_CHARS.fullmatch(label):
        return "invalid characters (letters, digits, '-' and '_' only)"
    if len(label) > MAX_LABEL:
        return f"label longer than {MAX_LABEL} bytes"
    return None


def name_problem(name: str) -> str | None:
    """Why a dotted name (a trailing dot allowed) cannot be encoded, or None."""
    bare = name[:-1] if name.endswith(".") else name
    if not bare:
        return "empty name"
    if len(bare) > MAX_NAME:
        return f"name longer than {MAX_NAME} bytes"
    for label in bare.split("."):
        problem = label_problem(label)
        if problem is not None:
            return problem
    return None


def dns_compatible(name: str) -> bool:
    """A catalog name (service, node) that DNS can find: one or more valid labels."""
    return name_problem(name) is None


def encodable(*names: str) -> bool:
    """True when every name can be packed into a DNS message."""
    return all(name_problem(n) is None for n in names)
