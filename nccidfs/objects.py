"""What a listing says about objects and names: the plain data every layer above the storage seam shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Bytes read: ``bytes``, or a view of a block of memory made for a generated file, handed on down to the
# kernel's reply without a copy (a volume's part is 8 MiB; copying each into ``bytes`` and slicing it for
# each read cost page faults with the interpreter lock held).
Chunk = bytes | memoryview


class ObjectInfo(NamedTuple):
    """One object as the listing describes it; size and time never need a HEAD.

    A named tuple rather than a frozen dataclass, as :class:`Entry`: a walk makes one per key, and a
    tuple is made in a third of the time.

    ``etag`` is an opaque version token: reads are pinned to it, and a new one means new bytes. ``md5``
    is the MD5 of the object's bytes (32 lower-case hex digits) when the store knows it, which the cache
    checks a whole object against; None when it does not (an S3 multipart upload, a generated file).
    """

    key: str
    size: int
    etag: str
    mtime: float
    md5: str | None = None


@dataclass(frozen=True, slots=True)
class Listing:
    """One level of the key space: sub-prefixes (ending in ``/``) and the objects directly in it."""

    prefixes: tuple[str, ...]
    objects: tuple[ObjectInfo, ...]


class Entry(NamedTuple):
    """A name in a directory: a sub-directory, a file backed by one object, or a symlink (views only)."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    obj: ObjectInfo | None = None
    link: str | None = None
