"""Plain directory entries packed in Python must be byte for byte what libfuse's fuse_add_direntry makes."""

from __future__ import annotations

import ctypes
import stat
import struct

from hypothesis import given
from hypothesis import strategies as st

from nccidfs import fuseops
from nccidfs.dirents import PackedListing

MODES = (stat.S_IFDIR | 0o555, stat.S_IFREG | 0o444, stat.S_IFLNK | 0o777)
NAMES = st.binary(min_size=1, max_size=40).filter(lambda name: b"\0" not in name and b"/" not in name)


def libfuse_page(rows: list[tuple[bytes, int]], offset: int, size: int) -> bytes:
    add = fuseops._lib.fuse_add_direntry
    add.restype = ctypes.c_size_t
    add.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p,
                    ctypes.POINTER(fuseops.mfusepy.c_stat), ctypes.c_int64)
    buf = ctypes.create_string_buffer(size)
    used = 0
    for index in range(offset, len(rows)):
        name, mode = rows[index]
        attr = fuseops.mfusepy.c_stat()
        attr.st_mode, attr.st_ino = mode, fuseops.FUSE_UNKNOWN_INO
        length = add(None, ctypes.addressof(buf) + used, size - used, name, ctypes.byref(attr), index + 1)
        if used + length > size:
            break
        used += length
    return buf.raw[:used]


@given(st.lists(st.tuples(NAMES, st.sampled_from(MODES)), max_size=60), st.integers(0, 70),
       st.sampled_from([0, 24, 100, 4096]))
def test_a_page_is_what_libfuse_makes(rows: list[tuple[bytes, int]], offset: int, size: int) -> None:
    packed = PackedListing(rows, fuseops.FUSE_UNKNOWN_INO)
    assert packed.page(offset, size) == libfuse_page(rows, offset, size)


def names_and_next(page: bytes) -> tuple[list[bytes], int]:
    """The names in a page of dirents, and the offset the last one says comes next."""
    names, at, following = [], 0, 0
    while at < len(page):
        _ino, following, length, _kind = struct.unpack_from("<QQII", page, at)
        names.append(page[at + 24:at + 24 + length])
        at += -(-(24 + length) // 8) * 8
    return names, following


def test_pages_read_in_turn_give_every_entry_once() -> None:
    rows = [(f"file{i:04d}.json".encode(), MODES[1]) for i in range(300)]
    packed, offset, seen, pages = PackedListing(rows, fuseops.FUSE_UNKNOWN_INO), 0, [], 0
    while page := packed.page(offset, 4096):
        assert len(page) <= 4096
        names, offset = names_and_next(page)
        seen += names
        pages += 1
    assert seen == [name for name, _ in rows] and pages == 3  # 40 bytes an entry, 102 a page
