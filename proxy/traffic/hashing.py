"""The 64-bit hashes behind consistent load balancing. Pure.

Every sidecar in front of an upstream must map a request key to the same instance, so
the hash must be the same in every process and on every run: Python's `hash()` is
salted per process (PYTHONHASHSEED) and is therefore never used. BLAKE2b cut to 8
bytes is stable, well mixed and fast enough (a C call per hash); Envoy uses xxHash64,
but only agreement among our own sidecars matters.
"""

from __future__ import annotations

import hashlib

__all__ = ["MASK64", "hash64", "mix64", "rotl64"]

MASK64 = (1 << 64) - 1


def hash64(data: str | bytes, salt: bytes = b"") -> int:
    """A stable 64-bit hash of `data`; a different `salt` (≤ 16 bytes) gives an
    independent hash of the same data."""
    raw = data.encode() if isinstance(data, str) else data
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8, salt=salt).digest(), "big")


def mix64(value: int) -> int:
    """SplitMix64's finalizer: spreads any integer over 64 bits, so that keys a caller
    made up (0, 1, 2, ...) do not all land on the same stretch of a ring or table."""
    z = value & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def rotl64(value: int, bits: int) -> int:
    """Rotate a 64-bit value left, as Envoy combines the hashes of several policies."""
    value &= MASK64
    return ((value << bits) | (value >> (64 - bits))) & MASK64
