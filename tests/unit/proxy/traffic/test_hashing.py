"""The stable 64-bit hashes: same in every process, spread over 64 bits."""

from __future__ import annotations

import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from mesh.proxy.traffic.hashing import MASK64, hash64, mix64, rotl64


def test_hash64_is_the_same_in_another_process():
    code = "from mesh.proxy.traffic.hashing import hash64; print(hash64('10.0.0.1:8080_3'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout
    assert int(out) == hash64("10.0.0.1:8080_3")


def test_salts_give_independent_hashes():
    assert hash64("a", b"x") != hash64("a", b"y") != hash64("a")
    assert hash64("a") == hash64(b"a")


@given(st.integers(min_value=0, max_value=MASK64), st.integers(min_value=0, max_value=63))
def test_rotl64_is_a_rotation(value, bits):
    rotated = rotl64(value, bits)
    assert 0 <= rotated <= MASK64
    assert rotl64(rotated, (64 - bits) % 64) == value
    assert bin(rotated).count("1") == bin(value).count("1")


def test_mix64_spreads_small_keys():
    top_bits = {mix64(i) >> 60 for i in range(64)}
    assert len(top_bits) >= 12  # 16 possible; consecutive keys do not cluster
    assert all(0 <= mix64(i) <= MASK64 for i in (-1, 0, 1 << 70))
