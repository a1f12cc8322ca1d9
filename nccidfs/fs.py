"""The filesystem core, independent of any FUSE binding: lookups, listings, open files and reads.

Every method returns plain data or raises an :class:`~nccidfs.errors.NccidfsError`; the adapter in
:mod:`nccidfs.fuseops` turns those into FUSE replies. Unit tests drive this class without a mount.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import LRUCache

from nccidfs.cache import CacheEntry, DiskCache
from nccidfs.errors import NotFound, ObjectChanged
from nccidfs.fetch import Fetcher, ReadCursor
from nccidfs.namespace import Entry, Namespace
from nccidfs.store import ObjectInfo

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    path: str
    obj: ObjectInfo
    entry: CacheEntry
    cursor: ReadCursor = field(default_factory=ReadCursor)


# Called with (path, object) when a file is opened: the series prefetcher hooks in here.
OpenListener = Callable[[str, ObjectInfo], None]


class FileSystem:
    def __init__(self, namespace: Namespace, cache: DiskCache, fetcher: Fetcher) -> None:
        self.namespace = namespace
        self.cache = cache
        self.fetcher = fetcher
        self._handles: dict[int, OpenFile] = {}
        self._next_handle = itertools.count(1)
        self._lock = threading.Lock()
        # The ETag each path had when last opened: the kernel's page cache may be kept only if unchanged.
        self._opened_etags: LRUCache[str, str] = LRUCache(maxsize=100_000)
        self._listeners: list[OpenListener] = []

    def add_open_listener(self, listener: OpenListener) -> None:
        self._listeners.append(listener)

    def lookup(self, path: str) -> Entry:
        return self.namespace.lookup(path)

    def readdir(self, path: str) -> list[Entry]:
        entry = self.namespace.lookup(path)
        if not entry.is_dir:
            raise NotFound(f"{path}: not a directory")
        return list(self.namespace.list(path).values())

    def open(self, path: str) -> tuple[int, bool]:
        """A handle for ``path`` and whether the kernel may keep pages cached from an earlier open."""
        entry = self.namespace.lookup(path)
        if entry.is_dir or entry.obj is None:
            raise NotFound(f"{path}: is a directory")
        obj = entry.obj
        with self._lock:
            keep_cache = self._opened_etags.get(path) == obj.etag
            self._opened_etags[path] = obj.etag
            handle = next(self._next_handle)
            self._handles[handle] = OpenFile(path, obj, self.cache.pin(obj))
        for listener in self._listeners:
            listener(path, obj)
        return handle, keep_cache

    def read(self, handle: int, offset: int, size: int) -> bytes:
        open_file = self._handles[handle]
        try:
            return self.fetcher.read(open_file.entry, offset, size, open_file.cursor)
        except ObjectChanged:
            # The listing is stale: the next lookup lists again and sees the new version (or ENOENT).
            parent = open_file.path.rsplit("/", 1)[0] or "/"
            self.namespace.invalidate(parent)
            raise

    def release(self, handle: int) -> None:
        with self._lock:
            open_file = self._handles.pop(handle)
        self.cache.unpin(open_file.entry)

    def open_count(self) -> int:
        with self._lock:
            return len(self._handles)
