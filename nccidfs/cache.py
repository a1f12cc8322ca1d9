"""The persistent disk cache: sparse per-object files, a block presence map, a byte bound and LRU eviction.

Layout under ``<cache-dir>/objects/<ab>/``: ``<digest>.data`` is a sparse file of the object's size;
``<digest>.map`` records which blocks of it hold verified bytes (with a CRC32 of each), the object's key,
ETag and size. ``digest = sha256(CACHE_VERSION, bucket, key, etag)``, so a replaced object (new ETag)
can never be served from an old copy.

Invariants (what makes a crash safe):
- Bytes are written to the data file *before* the map that marks them present is replaced, and the map
  is replaced atomically (write ``.tmp``, then ``rename``). A SIGKILL at any point leaves at worst
  bytes on disk that no map claims; a data file with no map is deleted at start-up, as are ``.tmp`` files.
- Every block read back from disk is checked against the CRC recorded when it was stored; a mismatch
  (a file changed behind the daemon's back) marks the block missing so that it is fetched again.
- The bytes held never exceed the bound: space is reserved before a write, by evicting least-recently-
  used entries that no reader has pinned; when that is not enough the write is refused and the caller
  serves the bytes without caching them.

Locking: ``DiskCache._lock`` guards the index, pins and the byte count; each entry's ``lock`` guards its
presence map, CRCs and in-flight list. The cache lock may be taken inside an entry lock, never the reverse.
Disk reads and writes happen outside both locks (distinct blocks never overlap).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nccidfs.objects import ObjectInfo

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Disk space an entry costs beyond its bytes: the map file and the inodes.
ENTRY_OVERHEAD = 8192


def entry_digest(bucket: str, key: str, etag: str) -> str:
    return hashlib.sha256(f"{CACHE_VERSION}\0{bucket}\0{key}\0{etag}".encode()).hexdigest()


@dataclass(eq=False)
class InflightPart:
    """A ranged GET under way for blocks ``[first, last)``; its future yields the bytes."""

    first: int
    last: int
    future: Future[bytes]
    # Monotonic time after which waiters give up: fixed when the GET starts, so that a second reader of a
    # stalled part does not wait a whole deadline again.
    deadline: float = 0.0


@dataclass(eq=False)
class CacheEntry:
    """The cached state of one object version. Mutable fields are guarded by ``lock``."""

    digest: str
    key: str
    etag: str
    size: int
    block_size: int
    base: Path
    present: bytearray = field(default_factory=bytearray)
    crcs: array[int] = field(default_factory=lambda: array("I"))
    inflight: list[InflightPart] = field(default_factory=list)
    pins: int = 0
    cached_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    fd: int | None = None
    # Whether a map exists on disk, i.e. whether ENTRY_OVERHEAD is counted in the cache's bytes.
    on_disk: bool = False
    # Whether the complete object was checked against its ETag's MD5 in this run.
    verified: bool = False
    # (monotonic time until which it counts, error) of the last failed foreground fetch.
    recent_failure: tuple[float, Exception] | None = None

    @property
    def data_path(self) -> Path:
        return self.base.with_suffix(".data")

    @property
    def map_path(self) -> Path:
        return self.base.with_suffix(".map")

    @property
    def block_count(self) -> int:
        return max(1, -(-self.size // self.block_size))

    def block_span(self, first: int, last: int) -> tuple[int, int]:
        """Byte range ``[start, stop)`` of blocks ``[first, last)``, clipped to the object."""
        return first * self.block_size, min(last * self.block_size, self.size)

    def bytes_in(self, first: int, last: int) -> int:
        start, stop = self.block_span(first, last)
        return stop - start

    def is_complete(self) -> bool:
        with self.lock:
            return self.present.find(0) < 0

    def missing_runs(self, first: int, last: int) -> Iterator[tuple[int, int]]:
        """Runs of blocks in ``[first, last)`` that are neither present nor being fetched. Hold ``lock``."""
        busy = bytearray(self.present[first:last])
        for part in self.inflight:
            lo, hi = max(part.first, first), min(part.last, last)
            if lo < hi:
                busy[lo - first:hi - first] = b"\x01" * (hi - lo)
        index = busy.find(0)
        while index >= 0:
            end = busy.find(1, index)
            end = len(busy) if end < 0 else end
            yield first + index, first + end
            index = busy.find(0, end)

    def map_document(self) -> bytes:
        return json.dumps({
            "version": CACHE_VERSION, "key": self.key, "etag": self.etag, "size": self.size,
            "block_size": self.block_size, "present": base64.b64encode(self.present).decode(),
            "crcs": base64.b64encode(self.crcs.tobytes()).decode(),
        }).encode()


class DiskCache:
    """Byte-bounded LRU of :class:`CacheEntry`, persisted under ``directory`` across restarts."""

    def __init__(self, directory: Path, size_bytes: int, bucket: str, block_size: int,
                 other_usage: Callable[[], int] = lambda: 0) -> None:
        self.directory = directory
        # Bytes that other files in the directory (the listing index) take from the same bound.
        self._other_usage = other_usage
        self._other_bytes = 0
        self._other_checked = -2.0
        self.size_bytes = size_bytes
        self.block_size = block_size
        self._bucket = bucket
        self._objects = directory / "objects"
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._used = 0
        self.evictions = 0
        os.makedirs(self._objects, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self._reindex()

    # -- start-up -------------------------------------------------------------------------------
    def _reindex(self) -> None:
        """Load every valid map, oldest use first; delete leftovers of an interrupted run."""
        found: list[tuple[float, CacheEntry]] = []
        for sub in self._objects.iterdir():
            if not sub.is_dir():
                continue
            for path in sub.iterdir():
                if path.suffix == ".tmp":
                    path.unlink(missing_ok=True)
                elif path.suffix == ".map":
                    entry = self._load_map(path)
                    if entry is None:
                        path.unlink(missing_ok=True)
                        path.with_suffix(".data").unlink(missing_ok=True)
                    else:
                        found.append((path.stat().st_mtime, entry))
                elif path.suffix == ".data" and not path.with_suffix(".map").exists():
                    path.unlink(missing_ok=True)
        for _, entry in sorted(found, key=lambda item: item[0]):
            self._entries[entry.digest] = entry
            self._used += entry.cached_bytes + ENTRY_OVERHEAD
        with self._lock:
            self._evict_until(0)
        log.info("cache %s: %d objects, %d bytes (bound %d)", self.directory, len(self._entries),
                 self._used, self.size_bytes)

    def _load_map(self, path: Path) -> CacheEntry | None:
        try:
            doc = json.loads(path.read_bytes())
            if doc["version"] != CACHE_VERSION or doc["block_size"] != self.block_size:
                return None
            entry = CacheEntry(path.stem, doc["key"], doc["etag"], int(doc["size"]), self.block_size,
                               path.with_suffix(""))
            if entry.digest != entry_digest(self._bucket, entry.key, entry.etag):
                return None
            entry.present = bytearray(base64.b64decode(doc["present"]))
            entry.crcs = array("I", base64.b64decode(doc["crcs"]))
            if len(entry.present) != entry.block_count or len(entry.crcs) != entry.block_count:
                return None
            if entry.data_path.stat().st_size != entry.size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        entry.cached_bytes = sum(entry.bytes_in(i, i + 1) for i, flag in enumerate(entry.present) if flag)
        entry.on_disk = True
        return entry

    # -- pinning --------------------------------------------------------------------------------
    def pin(self, obj: ObjectInfo) -> CacheEntry:
        """The entry for this object version, created empty if new; it cannot be evicted until unpinned."""
        digest = entry_digest(self._bucket, obj.key, obj.etag)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                entry = CacheEntry(digest, obj.key, obj.etag, obj.size, self.block_size,
                                   self._objects / digest[:2] / digest)
                entry.present = bytearray(entry.block_count)
                entry.crcs = array("I", bytes(4 * entry.block_count))
                self._entries[digest] = entry
            else:
                self._entries.move_to_end(digest)
            entry.pins += 1
            return entry

    def retain(self, entry: CacheEntry) -> bool:
        """Pin an entry already held, if it is still indexed (not evicted); False if it is gone."""
        with self._lock:
            if self._entries.get(entry.digest) is not entry:
                return False
            entry.pins += 1
            return True

    def unpin(self, entry: CacheEntry) -> None:
        with self._lock:
            entry.pins -= 1
            if entry.pins == 0:
                if entry.fd is not None:
                    os.close(entry.fd)
                    entry.fd = None
                if not entry.on_disk:
                    self._forget(entry)  # never stored anything: leave no trace
                else:
                    self._evict_until(0)

    def _fd(self, entry: CacheEntry) -> int:
        with self._lock:
            if entry.fd is None:
                entry.base.parent.mkdir(mode=0o700, exist_ok=True)
                entry.fd = os.open(entry.data_path, os.O_RDWR | os.O_CREAT, 0o600)
                if os.fstat(entry.fd).st_size != entry.size:
                    os.ftruncate(entry.fd, entry.size)
            return entry.fd

    # -- data -----------------------------------------------------------------------------------
    def read(self, entry: CacheEntry, first: int, last: int) -> bytes | None:
        """Blocks ``[first, last)`` from disk if all are present and pass their CRC, else None."""
        with entry.lock:
            if entry.present.find(0, first, last) >= 0:
                return None
        start, stop = entry.block_span(first, last)
        data = os.pread(self._fd(entry), stop - start, start)
        bad = [i for i in range(first, last)
               if zlib.crc32(data[(i - first) * self.block_size:(i - first + 1) * self.block_size])
               != entry.crcs[i]]
        if len(data) != stop - start or bad:
            log.warning("cache file of %s failed verification (%d blocks); fetching again", entry.key,
                        len(bad) or last - first)
            self._drop_blocks(entry, bad or list(range(first, last)))
            return None
        return data

    def store(self, entry: CacheEntry, first: int, data: bytes) -> bool:
        """Write blocks starting at ``first`` and mark them present; False if the bound leaves no room."""
        last = first + -(-len(data) // self.block_size)
        overhead = 0 if entry.on_disk else ENTRY_OVERHEAD
        reserved = len(data) + overhead
        if not self._reserve(reserved):
            return False
        try:
            os.pwrite(self._fd(entry), data, first * self.block_size)
        except OSError as error:
            self._release_reservation(reserved)
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                log.warning("cache disk full while storing %s; evicting and serving from S3", entry.key)
                with self._lock:
                    self._evict_until(max(len(data), self.size_bytes // 10))
                return False
            raise
        crcs = [zlib.crc32(data[i * self.block_size:(i + 1) * self.block_size]) for i in range(last - first)]
        with entry.lock:
            already = sum(entry.bytes_in(i, i + 1) for i in range(first, last) if entry.present[i])
            entry.present[first:last] = b"\x01" * (last - first)
            entry.crcs[first:last] = array("I", crcs)
            entry.cached_bytes += len(data) - already
            self._write_map(entry, entry.map_document())
            if overhead and entry.on_disk:
                already += overhead  # reserved, but another part of this entry counted it first
            entry.on_disk = True
        self._release_reservation(already)
        return True

    def verify_whole(self, entry: CacheEntry) -> bool:
        """Check a complete object against its ETag when the ETag is a plain MD5 (single-part upload).

        A mismatch drops every block, so the object is fetched again rather than served wrong.
        """
        if not re.fullmatch(r"[0-9a-f]{32}", entry.etag) or not entry.is_complete():
            return True
        with entry.lock:
            if entry.verified:
                return True
            entry.verified = True
        digest = hashlib.md5(usedforsecurity=False)
        fd = self._fd(entry)
        for offset in range(0, entry.size, 8 << 20):
            digest.update(os.pread(fd, min(8 << 20, entry.size - offset), offset))
        if digest.hexdigest() == entry.etag:
            return True
        log.error("%s: cached bytes do not match the ETag's MD5; discarding them", entry.key)
        entry.verified = False
        self._drop_blocks(entry, list(range(entry.block_count)))
        return False

    def _write_map(self, entry: CacheEntry, document: bytes) -> None:
        tmp = entry.base.with_suffix(".map.tmp")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as handle:
            handle.write(document)
        os.replace(tmp, entry.map_path)

    def _drop_blocks(self, entry: CacheEntry, blocks: list[int]) -> None:
        with entry.lock:
            freed = sum(entry.bytes_in(i, i + 1) for i in blocks if entry.present[i])
            for i in blocks:
                entry.present[i] = 0
            entry.cached_bytes -= freed
            self._write_map(entry, entry.map_document())
        self._release_reservation(freed)

    # -- the bound ------------------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> bool:
        with self._lock:
            if not self._evict_until(nbytes):
                return False
            self._used += nbytes
            return True

    def _release_reservation(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes

    def _evict_until(self, room: int) -> bool:
        """Evict unpinned entries, least recently used first, until ``room`` bytes fit. Hold ``_lock``."""
        now = time.monotonic()
        if now - self._other_checked > 1.0:  # the index grows slowly: a stat a second is enough
            self._other_bytes, self._other_checked = self._other_usage(), now
        budget = self.size_bytes - self._other_bytes
        if self._used + room <= budget:
            return True
        for entry in [e for e in self._entries.values() if e.pins == 0]:
            self._forget(entry)
            self.evictions += 1
            if self._used + room <= budget:
                return True
        return False

    def _forget(self, entry: CacheEntry) -> None:
        """Drop an unpinned entry from the index and the disk. Hold ``_lock``."""
        del self._entries[entry.digest]
        self._used -= entry.cached_bytes + (ENTRY_OVERHEAD if entry.on_disk else 0)
        entry.map_path.unlink(missing_ok=True)
        entry.data_path.unlink(missing_ok=True)

    # -- reporting and maintenance ----------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        return self._used

    def stats(self) -> dict[str, Any]:
        with self._lock:
            complete = sum(1 for e in self._entries.values() if e.present.find(0) < 0)
            return {"directory": str(self.directory), "bound_bytes": self.size_bytes, "used_bytes": self._used,
                    "objects": len(self._entries), "complete_objects": complete, "evictions": self.evictions}



def disk_usage(directory: Path) -> dict[str, Any]:
    """What a cache directory holds on disk, read without a daemon (for ``nccidfs cache stats``)."""
    objects = directory / "objects"
    maps = list(objects.glob("*/*.map")) if objects.is_dir() else []
    used = sum(p.stat().st_blocks * 512 for p in objects.rglob("*") if p.is_file()) if objects.is_dir() else 0
    return {"directory": str(directory), "objects": len(maps), "used_bytes": used}


def clear_directory(directory: Path) -> int:
    """Delete every cached object under ``directory`` (no daemon may be using it); returns how many."""
    objects = directory / "objects"
    count = len(list(objects.glob("*/*.map"))) if objects.is_dir() else 0
    if objects.is_dir():
        shutil.rmtree(objects)
    for name in ("listings.sqlite3", "listings.sqlite3-wal", "listings.sqlite3-shm"):
        (directory / name).unlink(missing_ok=True)
    return count
