from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from nccidfs.cache import _block_crcs
from nccidfs.crc import joined_crc, multiply, power_of_x


def blocks_from(seeds: list[bytes], block_size: int) -> list[bytes]:
    return [(seed * (block_size // len(seed) + 1))[:block_size] for seed in seeds]


@given(st.integers(1, 70_000), st.lists(st.binary(min_size=1, max_size=64), max_size=9))
def test_the_joined_crc_of_blocks_is_the_crc_of_their_concatenation(block_size: int, seeds: list[bytes]) -> None:
    blocks = blocks_from(seeds, block_size)
    assert joined_crc([zlib.crc32(block) for block in blocks], block_size) == zlib.crc32(b"".join(blocks))


@given(st.lists(st.binary(min_size=1, max_size=64), min_size=2, max_size=6), st.data())
def test_a_changed_byte_changes_the_joined_crc(seeds: list[bytes], data: st.DataObject) -> None:
    blocks = blocks_from(seeds, 4096)
    crcs = [zlib.crc32(block) for block in blocks]
    index = data.draw(st.integers(0, len(blocks) - 1))
    position = data.draw(st.integers(0, 4095))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(b"".join(blocks))
    changed[index * 4096 + position] ^= flip
    assert zlib.crc32(changed) != joined_crc(crcs, 4096)


def test_powers_of_x_multiply_as_exponents_add() -> None:
    assert power_of_x(0) == 1 << 31
    assert multiply(power_of_x(5), power_of_x(7)) == power_of_x(12)
    assert multiply(power_of_x(1000), power_of_x(24)) == power_of_x(1024)


@given(st.binary(max_size=20_000), st.integers(1, 5_000))
def test_the_cache_records_zlibs_crc32_of_each_block(data: bytes, block_size: int) -> None:
    """The maps written by earlier versions hold zlib's CRC-32: the faster implementation must agree."""
    assert list(_block_crcs(data, block_size)) == [zlib.crc32(data[i:i + block_size])
                                                   for i in range(0, len(data), block_size)]
