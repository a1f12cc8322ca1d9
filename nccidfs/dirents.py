"""A listing's plain directory entries (``struct fuse_dirent``), packed once and answered page by page.

A directory of a few hundred files is read in several pages of plain entries after the first page with
attributes; making each entry through libfuse's ``fuse_add_direntry`` costs a ctypes call an entry and
a page, packing them here costs one ``struct.pack`` an entry once per listing, and a page is a slice.
The layout is the kernel's (include/uapi/linux/fuse.h): inode number, offset of the next entry, name
length, type, then the name, padded to 8 bytes.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable

_HEADER = struct.Struct("<QQII")  # ino, off, namelen, type
DIRENT_ALIGN = 8
# A file type in a dirent is the st_mode format bits shifted down (DT_DIR, DT_REG, DT_LNK).
TYPE_SHIFT = 12


class PackedListing:
    """The entries of one listing snapshot, entry ``index`` saying ``index + 1`` as the next offset."""

    def __init__(self, rows: Iterable[tuple[bytes, int]], ino: int) -> None:
        """``rows`` are (name, st_mode); every entry carries ``ino`` (the kernel ignores it in a listing)."""
        parts: list[bytes] = []
        self._ends: list[int] = []  # where each entry ends in the packed bytes
        used = 0
        for index, (name, mode) in enumerate(rows):
            padding = -(_HEADER.size + len(name)) % DIRENT_ALIGN
            part = _HEADER.pack(ino, index + 1, len(name), (mode & 0o170000) >> TYPE_SHIFT) + name + bytes(padding)
            parts.append(part)
            used += len(part)
            self._ends.append(used)
        self._packed = b"".join(parts)

    def page(self, offset: int, size: int) -> bytes:
        """The whole entries from entry ``offset`` on that fit in ``size`` bytes."""
        if offset >= len(self._ends):
            return b""
        start = self._ends[offset - 1] if offset else 0
        stop = bisect.bisect_right(self._ends, start + size, lo=offset)
        return self._packed[start:self._ends[stop - 1]] if stop > offset else b""
