"""What a listing says about objects and names: the plain data every layer above the storage seam shares."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

_PLAIN_MD5 = re.compile("[0-9a-f]{32}")


def is_plain_md5(etag: str) -> bool:
    """Whether an ETag is the MD5 of the object's bytes: that of a single-part upload, 32 lower-case hex
    digits (a multipart upload's is "<hex>-N")."""
    return _PLAIN_MD5.fullmatch(etag) is not None


class ObjectInfo(NamedTuple):
    """One object as the listing describes it; size and time never need a HEAD.

    A named tuple rather than a frozen dataclass, as :class:`Entry`: a walk makes one per key, and a
    tuple is made in a third of the time.
    """

    key: str
    size: int
    etag: str
    mtime: float


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
