"""The directory listings held in memory, within a bound on their bytes. No I/O, no locking (the namespace's).

Listings are held by group, a group being a patient's subtree (the unit a walk lists and reads) or one
directory above patients. A group's small listings are packed (:mod:`nccidfs.namespace.packed`) into one
bytes object, with their prefixes relative to the group's: a key and a cache slot per directory would
cost more than its packed listing (an X-ray series' prefix alone is about 150 characters). A walk of
``xray-metadata`` (about seven directories a patient, one to three names each) then holds about 200 bytes
a directory instead of about 1 KiB. A listing of more than ``PACKED_ENTRIES`` names is held as it is
served, since making its entries again for every call would cost more than it saves, and counts
``ENTRY_BYTES`` a name, as every listing did before. The least recently used group goes first.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterable

from cachetools import Cache, LRUCache

from nccidfs.namespace.packed import Row, pack, unpack
from nccidfs.objects import Entry

Listed = tuple[float, dict[str, Entry]]  # (when it was listed, its entries)
# A listing held as it is served counts this much a name (and one more for itself): the bound is a number
# of these. Measured: about 1 KiB a name for a listing of one to three names, named tuples and all.
ENTRY_BYTES = 1024
# Listings of at most this many names are packed: making one again takes about 1 µs a name.
PACKED_ENTRIES = 16
# What a group costs beside its packed bytes: its key (a patient's prefix), its slot in the cache, the tuple.
GROUP_OVERHEAD = 300

# (packed listings by relative prefix, as marshal bytes or b""; listings held as served, by relative
# prefix, or None; how many names the group holds)
_Group = tuple[bytes, dict[str, Listed] | None, int]
_Packed = dict[str, tuple[float, tuple[Row, ...]]]


def _weight(group: _Group) -> int:
    blob, served, _ = group
    return len(blob) + GROUP_OVERHEAD + sum((len(entries) + 1) * ENTRY_BYTES for _, entries in (served or {}).values())


class _Groups(LRUCache[str, _Group]):
    """The cache of groups, keeping the number of names held as groups come and go (every removal, an
    eviction too, goes through :meth:`__delitem__`)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=_weight)
        self.names = 0

    def __setitem__(self, key: str, group: _Group) -> None:
        self.pop(key, None)  # and it goes in as the most recently used
        super().__setitem__(key, group)
        self.names += group[2]

    def __delitem__(self, key: str) -> None:
        self.names -= Cache.__getitem__(self, key)[2]  # without making it the most recently used
        super().__delitem__(key)


class HeldListings:
    """Listings by S3 prefix, within ``max_bytes``; sub-directories show ``dir_mtime``, and a directory
    ``group_depth`` levels below ``root`` groups itself and everything under it."""

    def __init__(self, root: str, max_bytes: int, dir_mtime: float, group_depth: int) -> None:
        self._root = root
        self._depth = group_depth
        self._dir_mtime = dir_mtime
        self._max_bytes = max_bytes
        self._groups = _Groups(max_bytes)
        self._recent: tuple[bytes, _Packed, dict[str, Listed]] = (b"", {}, {})

    def _split(self, prefix: str) -> tuple[str, str]:
        """(the group's prefix, the prefix relative to it)."""
        at = len(self._root) - 1
        for _ in range(self._depth):
            at = prefix.find("/", at + 1)
            if at < 0:
                return prefix, ""
        return prefix[:at + 1], prefix[at + 1:]

    def _decoded(self, blob: bytes) -> tuple[_Packed, dict[str, Listed]]:
        """A group's packed listings, and those already made again: a walk reads each patient's group a
        few times in a row (a directory's parent, then the directory), so the last one read is kept."""
        recent, packed, made = self._recent
        if blob is not recent:  # the same object: the group was not put again since
            packed, made = marshal.loads(blob), {}
            self._recent = (blob, packed, made)
        return packed, made

    def _open(self, key: str) -> tuple[_Packed, dict[str, Listed]]:
        group = self._groups.get(key)
        if group is None:
            return {}, {}
        blob, served, _ = group
        return (dict(self._decoded(blob)[0]) if blob else {}), dict(served or {})

    def _close(self, key: str, packed: _Packed, served: dict[str, Listed]) -> None:
        if not packed and not served:
            self._groups.pop(key, None)
            return
        names = sum(len(rows) for _, rows in packed.values()) + sum(len(entries) for _, entries in served.values())
        self._groups[key] = (marshal.dumps(packed) if packed else b"", served or None, names)

    def get(self, prefix: str) -> Listed | None:
        """The listing of ``prefix``, if held; its group becomes the most recently used."""
        key, relative = self._split(prefix)
        group = self._groups.get(key)
        if group is None:
            return None
        blob, served, _ = group
        if served is not None and relative in served:
            return served[relative]
        if not blob:
            return None
        packed, made = self._decoded(blob)
        listed = made.get(relative)
        if listed is None:
            found = packed.get(relative)
            if found is None:
                return None
            listed = made[relative] = found[0], unpack(found[1], prefix, self._dir_mtime)
        return listed

    def __contains__(self, prefix: str) -> bool:
        return self.get(prefix) is not None

    def put(self, listings: Iterable[tuple[str, Listed]]) -> None:
        """Hold these listings in place of those held, each group packed once; one too large for the whole
        bound is not held."""
        by_group: dict[str, list[tuple[str, str, Listed]]] = {}
        for prefix, listed in listings:
            key, relative = self._split(prefix)
            by_group.setdefault(key, []).append((prefix, relative, listed))
        for key, members in by_group.items():
            packed, served = self._open(key)
            for prefix, relative, (fetched, entries) in members:
                packed.pop(relative, None)
                served.pop(relative, None)
                if len(entries) <= PACKED_ENTRIES:
                    packed[relative] = (fetched, pack(entries, prefix, self._dir_mtime))
                elif (len(entries) + 1) * ENTRY_BYTES + GROUP_OVERHEAD <= self._max_bytes:
                    served[relative] = fetched, entries
            self._close(key, packed, served)

    def drop_under(self, prefix: str) -> int:
        """Forget the listings at and below ``prefix``; returns how many were held."""
        key, relative = self._split(prefix)
        dropped = 0
        if relative:  # inside one group: keep the rest of it
            packed, served = self._open(key)
            for held in (packed, served):
                for inner in [inner for inner in held if inner.startswith(relative)]:
                    del held[inner]
                    dropped += 1
            if dropped:
                self._close(key, packed, served)
            return dropped
        for below in [group for group in self._groups if group.startswith(prefix)]:
            blob, large, _ = self._groups.pop(below)
            dropped += (len(marshal.loads(blob)) if blob else 0) + len(large or {})
        return dropped

    def names(self) -> int:
        """How many names the held listings have."""
        return self._groups.names

    def size(self) -> int:
        """The bytes counted against the bound."""
        return int(self._groups.currsize)
