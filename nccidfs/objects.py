"""What a listing says about objects: the plain data every layer above the storage seam shares."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object as the listing describes it; size and time never need a HEAD."""

    key: str
    size: int
    etag: str
    mtime: float


@dataclass(frozen=True, slots=True)
class Listing:
    """One level of the key space: sub-prefixes (ending in ``/``) and the objects directly in it."""

    prefixes: tuple[str, ...]
    objects: tuple[ObjectInfo, ...]
