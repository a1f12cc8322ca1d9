"""The filesystem core, independent of any FUSE binding: lookups, listings, open files and reads.

Every method returns plain data or raises an :class:`~nccidfs.errors.NccidfsError`; the adapter in
:mod:`nccidfs.fuseops` turns those into FUSE replies, and the unit tests drive it directly over
in-memory stores. :func:`nccidfs.assembly.assemble` builds it and registers its views.

Paths under the hidden ``/.nccidfs/`` go to the layers of :mod:`nccidfs.views`; every other path is the
mirrored tree of :mod:`nccidfs.namespace`. A real S3 folder named ``.nccidfs`` wins over the virtual one
(logged once), so the mirrored tree always holds exactly the bucket's keys.

Replaced objects: an open file reads the version its listing showed. Opening a file whose listing was
saved by an earlier run first lets the listing be checked for a moment, so a file replaced while the
daemon was down opens as its new version, with the kernel told the new size before any read. If S3
still answers a first read that the object changed (412), the parent is listed again; a new version of
the same size is served at once, one of another size fails that read (EIO) and the next open reads it.
Once bytes were served, a change is EIO: versions are never mixed.
"""

from __future__ import annotations

import itertools
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
from nccidfs.namespace import Namespace
from nccidfs.namespace.rules import split_path
from nccidfs.objects import Chunk, Entry, ObjectInfo
from nccidfs.views.registry import CONTROL, OPEN_INVALIDATION_WAIT, ControlFolder, Invalidator, VirtualFile
from nccidfs.xattrs import TagReader

log = logging.getLogger(__name__)


@dataclass
class OpenFile:
    path: str
    obj: ObjectInfo | None = None
    entry: CacheEntry | None = None
    virtual: VirtualFile | None = None
    cursor: ReadCursor = field(default_factory=ReadCursor)
    reading_whole: bool = False
    served: bool = False


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
# Called with a directory's mount path whose listing the kernel may hold wrongly, and whether the
# directories below it are meant too.
ListingInvalidator = Callable[[str, bool], None]
WHOLE_FILE_READ = 256 * 1024
CONTROL_PATH = "/" + CONTROL
# Keys remembered with the ETag they were last opened at (the kernel may keep their pages while it holds),
# and keys whose cached bytes failed their MD5 since: bounds on memory, far above the files open at once.
OPENED_KEPT = 100_000
DISTRUSTED_KEPT = 10_000


class FileSystem:
    def __init__(self, namespace: Namespace, cache: DiskCache, fetcher: Fetcher) -> None:
        self.namespace = namespace
        self.cache = cache
        self.fetcher = fetcher
        self.tags = TagReader(namespace, fetcher)
        self.control = ControlFolder(namespace.mount_time)
        self._handles: dict[int, OpenFile] = {}
        self._next_handle = itertools.count(1)
        self._lock = threading.Lock()
        self._opened_etags: LRUCache[str, str] = LRUCache(maxsize=OPENED_KEPT)
        # Keys whose cached bytes failed their MD5: the kernel must not keep their pages.
        self._distrusted: LRUCache[str, bool] = LRUCache(maxsize=DISTRUSTED_KEPT)
        self._listeners: list[Listener] = []
        self._open_listeners: list[Listener] = []
        self._invalidate: Invalidator = lambda path, wait: None
        self._kernel_counts: Callable[[], dict[str, int]] | None = None
        self._collision_logged = False

    def add_open_listener(self, listener: Listener) -> None:
        """Called with (path, object) on every open of an object."""
        self._open_listeners.append(listener)

    def add_read_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def with_kernel(self, status: dict[str, Any]) -> dict[str, Any]:
        """The daemon's status, with the FUSE requests by kind once mounted."""
        return status if self._kernel_counts is None else {**status, "kernel": self._kernel_counts()}

    def set_kernel(self, invalidate: Invalidator, invalidate_listing: ListingInvalidator,
                   forget_name: Callable[[str], None], counts: Callable[[], dict[str, int]]) -> None:
        """What the kernel is told when the daemon learns its caches are wrong, and its request counts."""
        self._invalidate = invalidate
        self.control.invalidate = invalidate
        self._kernel_counts = counts
        self.namespace.on_change = lambda path: invalidate(path, 0.0)
        self.namespace.on_removed = forget_name
        self.namespace.on_listing_change = invalidate_listing

    def discarded(self, key: str) -> None:
        """The cache dropped this object's bytes (MD5 mismatch): pages the kernel holds are suspect too."""
        with self._lock:
            self._distrusted[key] = True
            self._opened_etags.pop(key, None)
        self._invalidate("/" + key[len(self.namespace.prefix):], 0.0)

    # -- names ----------------------------------------------------------------------------------
    def _virtual(self, path: str) -> list[str] | None:
        """Path components below ``/.nccidfs`` for a virtual path, None for the mirrored tree (told apart
        by a prefix test: this runs on every call of a walk)."""
        if not path.startswith(CONTROL_PATH) or path[len(CONTROL_PATH):len(CONTROL_PATH) + 1] not in ("", "/"):
            return None
        parts = split_path(path)
        if CONTROL in self.namespace.list("/"):
            if not self._collision_logged:
                self._collision_logged = True
                log.warning("the bucket holds %s%s itself: it is served, and nccidfs's own %s is hidden",
                            self.namespace.prefix, CONTROL, CONTROL)
            return None
        return parts[1:]

    def lookup(self, path: str) -> Entry:
        return self.lookup_fresh(path)[0]

    def lookup_fresh(self, path: str) -> tuple[Entry, float]:
        """The entry for ``path``, and for how many seconds the daemon would give the same answer without
        listing anything again: until its parent's listing is past its TTL, and for a directory its own
        listing too; 0 under ``/.nccidfs/``, whose sizes change. A directory's own listing is refreshed in
        the background if it is past its TTL: the kernel asks for a directory's attributes before it reads
        the listing it keeps, and otherwise would never ask for the listing again."""
        parts = self._virtual(path)
        if parts is not None:
            return self.control.lookup(parts), 0.0
        entry, fresh = self.namespace.lookup_fresh(path)
        if entry.is_dir:
            own = self.namespace.revalidate(path)
            if own is not None:
                fresh = min(fresh, own)
        return entry, fresh

    def readdir(self, path: str) -> list[Entry]:
        return self.readdir_fresh(path)[0]

    def readdir_fresh(self, path: str) -> tuple[list[Entry], float]:
        """The entries of directory ``path``, and the seconds its listing stays within its TTL (0 under
        ``/.nccidfs/``)."""
        parts = self._virtual(path)
        if parts is not None:
            return list(self.control.list(parts).values()), 0.0
        entry = self.namespace.lookup(path)
        if not entry.is_dir:
            raise NotFound(f"{path}: not a directory")
        entries, fresh = self.namespace.list_fresh(path)
        return list(entries.values()), fresh

    def listing_fresh(self, path: str) -> float | None:
        """How long directory ``path``'s own listing held in memory stays within its TTL (None when it is
        not held): a directory's attributes are kept by the kernel no longer, since they are when the
        kernel asks before reading the listing it keeps."""
        if self._virtual(path) is not None:
            return 0.0
        return self.namespace.held_fresh(path)

    def readlink(self, path: str) -> str:
        parts = self._virtual(path)
        if parts is None:
            raise NotFound(f"{path}: not a symlink")
        return self.control.readlink(parts)

    # -- files ----------------------------------------------------------------------------------
    def open(self, path: str) -> Opened:
        parts = self._virtual(path)
        if parts is not None:
            virtual = self.control.open(parts)
            direct = bool(getattr(virtual, "direct_io", True))
            return Opened(self._add(OpenFile(path, virtual=virtual)), False, direct)
        entry, relisted = self.namespace.lookup_to_open(path)
        if entry.is_dir or entry.obj is None:
            raise NotFound(f"{path}: not a regular file")
        obj = entry.obj
        with self._lock:
            previous = self._opened_etags.get(obj.key)
            self._opened_etags[obj.key] = obj.etag
            distrusted = self._distrusted.pop(obj.key, False)
        keep_cache = previous == obj.etag and not distrusted
        # A replaced object may have a new size that the kernel's attribute cache does not know yet; direct
        # I/O stops the kernel from cutting or padding reads to the old size.
        replaced = (previous is not None and previous != obj.etag) or distrusted or relisted
        if replaced:
            self._invalidate(path, OPEN_INVALIDATION_WAIT)
        handle = self._add(OpenFile(path, obj, self.fetcher.pin(obj)))
        for listener in self._open_listeners:
            listener(path, obj)
        return Opened(handle, keep_cache, replaced)

    def _add(self, open_file: OpenFile) -> int:
        with self._lock:
            handle = next(self._next_handle)
            self._handles[handle] = open_file
            return handle

    def read(self, handle: int, offset: int, size: int) -> Chunk:
        open_file = self._handles[handle]
        if open_file.virtual is not None:
            return open_file.virtual.read(offset, size)
        assert open_file.obj is not None and open_file.entry is not None
        end = offset + size
        if not open_file.reading_whole and (end >= WHOLE_FILE_READ or end >= open_file.obj.size):
            open_file.reading_whole = True
            for listener in self._listeners:
                listener(open_file.path, open_file.obj)
        try:
            data = self.fetcher.read(open_file.entry, offset, size, open_file.cursor)
        except ObjectChanged:
            if open_file.served:
                # Bytes of the old version were served: never mix versions. The next open sees the new one.
                self.namespace.invalidate_prefix(open_file.obj.key.rsplit("/", 1)[0] + "/")
                raise
            self._switch_version(open_file)
            data = self.fetcher.read(open_file.entry, offset, size, open_file.cursor)
        open_file.served = True
        return data

    def _switch_version(self, open_file: OpenFile) -> None:
        """List the file's folder again and serve its current version (or ENOENT if it is gone).

        Only a version of the same size is switched to inside a read: the kernel sized this read by the
        old size, and telling it the new one while the read is under way would have it pad or cut the
        reply. Otherwise the read fails (EIO) and the kernel is told; the next open gets the new version.
        """
        assert open_file.obj is not None and open_file.entry is not None
        parent, name = open_file.path.rsplit("/", 1)
        entry = self.namespace.relist(parent or "/").get(name)
        self._invalidate(open_file.path, 0.0)
        if entry is None or entry.obj is None:
            raise NotFound(f"{open_file.path}: deleted since it was listed")
        if entry.obj.size != open_file.obj.size:
            raise ObjectChanged(f"{open_file.path}: replaced by a version of another size since it was opened; "
                                "open it again")
        log.info("%s was replaced since it was listed; serving the new version", open_file.path)
        old = open_file.entry
        open_file.obj, open_file.entry, open_file.cursor = entry.obj, self.fetcher.pin(entry.obj), ReadCursor()
        self.fetcher.unpin(old)
        with self._lock:
            self._opened_etags[entry.obj.key] = entry.obj.etag

    def xattrs(self, path: str) -> dict[str, str]:
        """``user.dicom.*`` attributes of a ``.dcm`` file, from its metadata twin; none for other paths."""
        if self._virtual(path) is not None:
            self.lookup(path)
            return {}
        entry = self.namespace.lookup(path)
        if entry.obj is None:
            return {}
        return {xattr_name(keyword): value for keyword, value in self.tags.tags(path, entry.obj).items()}

    def release(self, handle: int) -> None:
        with self._lock:
            open_file = self._handles.pop(handle)
        if open_file.virtual is not None:
            open_file.virtual.release()
        if open_file.entry is not None:
            self.fetcher.unpin(open_file.entry)

    def open_count(self) -> int:
        with self._lock:
            return len(self._handles)
