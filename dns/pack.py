"""Packing answers to wire bytes, with name compression that stays within 14 bits.

A compression pointer holds a 14-bit offset, so only names that start in the first
16 KiB of a message can be pointed at. dnslib remembers every name it wrote and
points at it wherever it lies; past 16 KiB the offset wraps and the message points
into the wrong bytes: a TCP answer for a service with a few hundred instances could
not be parsed by any client. Here names written past that limit are not remembered
(later copies are written out in full, which costs bytes, never correctness).
"""

from __future__ import annotations

from typing import Any

from dnslib import DNSLabel, DNSRecord
from dnslib.label import DNSBuffer, DNSLabelError

__all__ = ["pack"]

_POINTER_LIMIT = 0x4000


class _Buffer(DNSBuffer):  # type: ignore[misc]
    def encode_name(self, name: Any) -> None:
        label = name if isinstance(name, DNSLabel) else DNSLabel(name)
        if len(label) > 253:
            raise DNSLabelError(f"Domain label too long: {label!r}")
        parts = list(label.label)
        while parts:
            known = self.names.get(tuple(parts))
            if known is not None:
                self.pack("!H", 0xC000 | known)
                return
            if self.offset < _POINTER_LIMIT:
                self.names[tuple(parts)] = self.offset
            element = parts.pop(0)
            if len(element) > 63:
                raise DNSLabelError(f"Label component too long: {element!r}")
            self.pack("!B", len(element))
            self.append(element)
        self.append(b"\x00")


def pack(record: DNSRecord) -> bytes:
    """`record.pack()`, correct at any size."""
    record.set_header_qa()
    buffer = _Buffer()
    record.header.pack(buffer)
    for section in (record.questions, record.rr, record.auth, record.ar):
        for rr in section:
            rr.pack(buffer)
    return bytes(buffer.data)
