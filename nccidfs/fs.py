"""The filesystem core, independent of any FUSE binding: lookups, listings, open files and reads.

Every method returns plain data or raises an :class:`~nccidfs.errors.NccidfsError`; the adapter in
:mod:`nccidfs.fuseops` turns those into FUSE replies. Unit tests drive this class without a mount.

Besides the mirrored tree the root holds ``patients/`` (see :mod:`nccidfs.views`) and a hidden
``.nccidfs/`` with ``status.json``, a snapshot of the daemon's counters taken at each open.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from nccidfs.cache import CacheEntry, DiskCache
from nccidfs.dicom import xattr_name
from nccidfs.errors import NotFound, ObjectChanged
from nccidfs.fetch import Fetcher, ReadCursor
from nccidfs.namespace import Entry, Namespace
from nccidfs.objects import ObjectInfo
from nccidfs.views import VIEW, PatientView
from nccidfs.xattrs import TagReader

log = logging.getLogger(__name__)

CONTROL_DIR = "/.nccidfs"
STATUS_FILE = f"{CONTROL_DIR}/status.json"


@dataclass
class OpenFile:
    path: str
    obj: ObjectInfo | None
    entry: CacheEntry | None
    snapshot: bytes = b""
    cursor: ReadCursor = field(default_factory=ReadCursor)
    reading_whole: bool = False


@dataclass(frozen=True)
class Opened:
    handle: int
    # The kernel may keep pages from an earlier open: the object's ETag has not changed since.
    keep_cache: bool
    # Bypass the page cache and the kernel's idea of the size: generated content, replaced objects.
    direct_io: bool


# Called with (path, object): open listeners on every open; read listeners once per open file, when a
# read goes past the header (or reaches the end of a small file), i.e. when the reader wants whole images.
# The series prefetcher hooks in to both; header scans (pydicom's stop_before_pixels) never reach the second.
Listener = Callable[[str, ObjectInfo], None]
WHOLE_FILE_READ = 256 * 1024
StatusProvider = Callable[[], dict[str, Any]]


class FileSystem:
    def __init__(self, namespace: Namespace, cache: DiskCache, fetcher: Fetcher) -> None:
        self.namespace = namespace
        self.cache = cache
        self.fetcher = fetcher
        self.view = PatientView(namespace)
        self.tags = TagReader(namespace, cache, fetcher)
        self._handles: dict[int, OpenFile] = {}
        self._next_handle = itertools.count(1)
        self._lock = threading.Lock()
        self._opened_etags: LRUCache[str, str] = LRUCache(maxsize=100_000)
        self._listeners: list[Listener] = []
        self._open_listeners: list[Listener] = []
        self._status: StatusProvider = lambda: {}

    def add_open_listener(self, listener: Listener) -> None:
        """Called with (path, object) on every open of an object."""
        self._open_listeners.append(listener)

    def add_read_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set_status_provider(self, provider: StatusProvider) -> None:
        self._status = provider

    def _status_bytes(self) -> bytes:
        return json.dumps(self._status(), indent=2, sort_keys=True).encode() + b"\n"

    def lookup(self, path: str) -> Entry:
        if path == CONTROL_DIR:
            return Entry(CONTROL_DIR[1:], True, mtime=self.namespace.mount_time)
        if path == STATUS_FILE:
            return Entry("status.json", False, len(self._status_bytes()), self.namespace.mount_time)
        if self.view.owns(path):
            return self.view.lookup(path)
        return self.namespace.lookup(path)

    def readdir(self, path: str) -> list[Entry]:
        if path == CONTROL_DIR:
            return [self.lookup(STATUS_FILE)]
        entry = self.lookup(path)
        if not entry.is_dir:
            raise NotFound(f"{path}: not a directory")
        if self.view.owns(path):
            return list(self.view.list(path).values())
        entries = list(self.namespace.list(path).values())
        if path == "/":
            entries.append(self.view.lookup(f"/{VIEW}"))
        return entries

    def open(self, path: str) -> Opened:
        if path == STATUS_FILE:
            return Opened(self._add(OpenFile(path, None, None, self._status_bytes())), False, True)
        entry = self.lookup(path)
        if entry.is_dir or entry.obj is None:
            raise NotFound(f"{path}: not a regular file")
        obj = entry.obj
        with self._lock:
            previous = self._opened_etags.get(obj.key)
            self._opened_etags[obj.key] = obj.etag
        keep_cache = previous == obj.etag
        # A replaced object may have a new size that the kernel's attribute cache does not know yet; direct
        # I/O stops the kernel from cutting or padding reads to the old size.
        replaced = previous is not None and not keep_cache
        handle = self._add(OpenFile(path, obj, self.cache.pin(obj)))
        for listener in self._open_listeners:
            listener(path, obj)
        return Opened(handle, keep_cache, replaced)

    def _add(self, open_file: OpenFile) -> int:
        with self._lock:
            handle = next(self._next_handle)
            self._handles[handle] = open_file
            return handle

    def read(self, handle: int, offset: int, size: int) -> bytes:
        open_file = self._handles[handle]
        if open_file.entry is None:
            return open_file.snapshot[offset:offset + size]
        obj = open_file.obj
        assert obj is not None
        end = offset + size
        if not open_file.reading_whole and (end >= WHOLE_FILE_READ or end >= obj.size):
            open_file.reading_whole = True
            for listener in self._listeners:
                listener(open_file.path, obj)
        try:
            return self.fetcher.read(open_file.entry, offset, size, open_file.cursor)
        except ObjectChanged:
            # The listing is stale: the next lookup lists again and sees the new version (or ENOENT).
            self.namespace.invalidate_prefix(obj.key.rsplit("/", 1)[0] + "/")
            raise

    def xattrs(self, path: str) -> dict[str, str]:
        """``user.dicom.*`` attributes of a ``.dcm`` file, from its metadata twin; none for other paths."""
        entry = self.lookup(path)
        if entry.obj is None or self.view.owns(path):
            return {}
        return {xattr_name(keyword): value for keyword, value in self.tags.tags(path, entry.obj).items()}

    def readlink(self, path: str) -> str:
        link = self.lookup(path).link
        if link is None:
            raise NotFound(f"{path}: not a symlink")
        return link

    def release(self, handle: int) -> None:
        with self._lock:
            open_file = self._handles.pop(handle)
        if open_file.entry is not None:
            self.cache.unpin(open_file.entry)

    def open_count(self) -> int:
        with self._lock:
            return len(self._handles)
