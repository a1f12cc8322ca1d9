"""The CRC32 of a run of equal-sized blocks, joined from the blocks' own CRC32s.

The cache records one CRC32 (zlib's CRC-32) per block. A read of many blocks checks them all with a single
CRC of the whole run, compared with the recorded CRCs joined into one. Checking block by block instead
costs a call per block, and each such call releases and takes back the interpreter lock: under many
readers, most of a warm read's time went to those hand-overs.

Joining uses the algebra of CRCs (as zlib's ``crc32_combine``): the CRC of ``A + B`` is the CRC of ``A``
multiplied by ``x**(8 * len(B))`` modulo the CRC polynomial, plus the CRC of ``B``. Multiplying by a fixed
power is linear over GF(2), so it is precomputed as four byte-indexed tables per block size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

POLYNOMIAL = 0xEDB88320  # CRC-32 (zlib's), bit-reflected; x**0 is the top bit
ONE = 1 << 31


def multiply(a: int, b: int) -> int:
    """``a * b`` modulo the polynomial, both in the reflected representation."""
    product = 0
    bit = ONE
    while bit:
        if a & bit:
            product ^= b
        bit >>= 1
        b = (b >> 1) ^ POLYNOMIAL if b & 1 else b >> 1
    return product


def power_of_x(exponent: int) -> int:
    """``x**exponent`` modulo the polynomial, by repeated squaring."""
    result, square = ONE, ONE >> 1  # x**0, x**1
    while exponent:
        if exponent & 1:
            result = multiply(result, square)
        square = multiply(square, square)
        exponent >>= 1
    return result


@lru_cache(maxsize=8)
def _shift_tables(length: int) -> tuple[list[int], ...]:
    """Four tables whose XOR, indexed by the bytes of a CRC, multiply it by ``x**(8 * length)``."""
    factor = power_of_x(8 * length)
    images = [multiply(factor, 1 << bit) for bit in range(32)]
    tables = []
    for byte in range(4):
        table = [0] * 256
        for value in range(1, 256):
            low = value & -value
            table[value] = table[value ^ low] ^ images[8 * byte + low.bit_length() - 1]
        tables.append(table)
    return tuple(tables)


def joined_crc(crcs: Sequence[int], block_size: int) -> int:
    """The CRC32 of the concatenation of blocks of ``block_size`` bytes each, given each block's CRC32."""
    t0, t1, t2, t3 = _shift_tables(block_size)
    joined = 0
    for crc in crcs:
        joined = t0[joined & 0xFF] ^ t1[(joined >> 8) & 0xFF] ^ t2[(joined >> 16) & 0xFF] ^ t3[joined >> 24] ^ crc
    return joined
