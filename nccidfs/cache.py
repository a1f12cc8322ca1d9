"""The persistent disk cache: sparse per-object files, a block presence map, a byte bound and eviction.

It offers blocks of object versions: read, store, which runs are missing, pin and unpin. It knows
nothing of S3 or of requests under way (that is :mod:`nccidfs.fetch`). Which object is evicted first
is the policy's choice (:mod:`nccidfs.eviction`: least recently used, across restarts too).

Layout under ``<cache-dir>/objects/<ab>/``: ``<digest>.data`` holds the object's bytes at their offsets
(a sparse file that grows only as far as bytes were written); ``<digest>.map`` records which blocks hold
verified bytes, as runs, with a CRC32 of each present block, and the object's key, ETag and size.
``digest = sha256(CACHE_VERSION, endpoint, bucket, key, etag)``: a replaced object (new ETag), or the same
key on another endpoint or bucket, can never be served from this copy.

The bound counts everything in the directory as ``du -sb`` does (apparent sizes): data files as far as
they were written, maps, the listing index and its WAL, the directories, marker and lock. Space is
reserved before a write, by evicting least-recently-used entries that no reader has pinned; when that
is not enough the write is refused and the caller serves the bytes without caching them. A map's exact
size is known only once written, so the bound may be passed by at most a few hundred bytes per
concurrent write until the next eviction (the slack docs/semantics.md states).

Crash safety: bytes are written to the data file *before* the map that marks them present is replaced,
and the map is replaced atomically (write ``.tmp``, then ``rename``). A SIGKILL at any point leaves at
worst bytes that no map claims; a data file with no map is deleted at start-up, as are ``.tmp`` files.
Every block read back is checked against its CRC; a mismatch marks the block missing.

Nothing here follows a symbolic link: files are opened with ``O_NOFOLLOW``, the start-up scan does not
descend into linked directories, and links found inside the cache are removed.

Locking. Three locks, always taken in this order (a thread holding one takes only those further down;
``tests/unit/test_cache_locks.py`` checks it under concurrent reads, writes, evictions and pins):

1. ``Fetcher._parts_lock``: the parts in flight and the failures remembered, so that a block is seen
   present, in flight or missing, never between two of them.
2. an entry's ``_lock``: its presence map, CRCs, extent, map size and file descriptor. One entry's at a
   time; nobody outside this module takes it.
3. ``DiskCache._lock``: the index of entries, the eviction policy, pins and byte counts. Never held across
   file system calls other than the unlinks of eviction.

``Fetcher._counter_lock`` guards counters only and is taken with none of these held.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import stat
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isal import isal_zlib

from nccidfs.cachedir import LOCK, MARKER, OBJECTS, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, CacheLock, is_cache_dir
from nccidfs.config import format_size
from nccidfs.crc import joined_crc
from nccidfs.errors import ConfigError
from nccidfs.eviction import EvictionPolicy, LruPolicy
from nccidfs.objects import Chunk, ObjectInfo

log = logging.getLogger(__name__)

CACHE_VERSION = 2
# Presence is kept per block; very large objects get larger blocks so a map never exceeds this many.
MAX_BLOCKS = 1 << 20
# What a map is expected to grow by: a CRC per block in base64, a run, and the header of a first write.
_MAP_PER_BLOCK = 6
_MAP_PER_RUN = 24
_MAP_HEADER = 256
_MAP_PER_KEY_CHAR = 2  # JSON escapes can double a key's length
# Hex digits of an entry's digest that name its folder under objects/ (256 folders).
SHARD_CHARS = 2
# Bytes read at a time when checking a whole cached object against its MD5.
MD5_CHUNK = 8 << 20
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def entry_digest(identity: str, key: str, etag: str) -> str:
    return hashlib.sha256(f"{CACHE_VERSION}\0{identity}\0{key}\0{etag}".encode()).hexdigest()


def block_size_for(size: int, base: int) -> int:
    """``base``, doubled until the object has at most MAX_BLOCKS blocks."""
    block = base
    while -(-size // block) > MAX_BLOCKS:
        block *= 2
    return block


# zlib's CRC-32, computed by ISA-L with the CPU's carry-less multiply: the same values as zlib.crc32 (the
# maps of earlier versions stay valid) at about 65 GB/s against zlib's 7 on this project's machine.
_crc32 = isal_zlib.crc32


def _block_crcs(data: Chunk | bytearray, block: int) -> array[int]:
    """The CRC32 of each block of ``data``, over views rather than copies."""
    view = memoryview(data)
    return array("I", (_crc32(view[i:i + block]) for i in range(0, len(view), block)))


def _blocks_intact(data: bytes, crcs: array[int], block: int) -> bool:
    """Whether the blocks in ``data`` match their recorded CRCs: the whole blocks in one pass against the
    CRCs joined, a short last block on its own."""
    whole = len(data) // block
    view = memoryview(data)
    if whole and _crc32(view[:whole * block]) != joined_crc(crcs[:whole], block):
        return False
    return whole == len(crcs) or _crc32(view[whole * block:]) == crcs[whole]


def _runs(flags: bytearray) -> list[list[int]]:
    """``[[first, last), ...]`` of the set bytes in ``flags``."""
    runs = []
    index = flags.find(1)
    while index >= 0:
        end = flags.find(0, index)
        end = len(flags) if end < 0 else end
        runs.append([index, end])
        index = flags.find(1, end)
    return runs


@dataclass(eq=False)
class CacheEntry:
    """The cached state of one object version: a handle that callers pass back to the cache and fetcher.

    Its lock, presence map and pin count are the cache's alone (leading underscore); the other mutable
    fields are guarded by ``_lock`` too."""

    digest: str
    key: str
    etag: str
    size: int
    block_size: int
    base: Path
    # One flag and one CRC per block, all missing at first.
    _present: bytearray = field(init=False)
    crcs: array[int] = field(init=False)
    _pins: int = 0
    cached_bytes: int = 0
    # Apparent size of the data file (how far bytes were written) and of the map: what the entry costs.
    extent: int = 0
    map_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    fd: int | None = None
    # Whether the complete object was checked against its ETag's MD5 in this run.
    verified: bool = False
    # The object's MD5, from the listing: a map keeps only the ETag, so an entry read from disk learns it
    # when it is pinned.
    md5: str | None = None

    def __post_init__(self) -> None:
        self._present = bytearray(self.block_count)
        self.crcs = array("I", [0]) * self.block_count

    @property
    def data_path(self) -> Path:
        return self.base.with_suffix(".data")

    @property
    def map_path(self) -> Path:
        return self.base.with_suffix(".map")

    @property
    def block_count(self) -> int:
        return max(1, -(-self.size // self.block_size))

    @property
    def charge(self) -> int:
        return self.extent + self.map_bytes

    def block_span(self, first: int, last: int) -> tuple[int, int]:
        """Byte range ``[start, stop)`` of blocks ``[first, last)``, clipped to the object."""
        return first * self.block_size, min(last * self.block_size, self.size)

    def bytes_in(self, first: int, last: int) -> int:
        start, stop = self.block_span(first, last)
        return stop - start

    def map_document(self) -> bytes:
        """The map as stored: runs of present blocks and their CRCs in order, so it grows with what is
        cached, not with the object's size."""
        runs = _runs(self._present)
        present_crcs = array("I", (self.crcs[i] for first, last in runs for i in range(first, last)))
        return json.dumps({
            "version": CACHE_VERSION, "key": self.key, "etag": self.etag, "size": self.size,
            "block_size": self.block_size, "runs": runs, "crcs": base64.b64encode(present_crcs.tobytes()).decode(),
        }).encode()


class DiskCache:
    """A byte-bounded store of :class:`CacheEntry`, persisted under ``directory`` across restarts; what it
    evicts first is its policy's choice."""

    def __init__(self, directory: Path, size_bytes: int, identity: str, block_size: int,
                 other_usage: Callable[[], tuple[int, int]] = lambda: (0, 0),
                 policy: EvictionPolicy | None = None, min_free_bytes: int = 0) -> None:
        self.directory = directory
        self.size_bytes = size_bytes
        # What the cache leaves free on its filesystem: it evicts to keep it, and stores nothing past it.
        self.min_free_bytes = min_free_bytes
        self.block_size = block_size
        self._identity = identity
        # (bytes taken, bytes to budget) by other files in the directory (the listing index).
        self._other_usage = other_usage
        self._objects = directory / OBJECTS
        # Shard folders made or checked (no link in their place) by this run: an open there needs no check.
        self._ready_shards: set[Path] = set()
        self._lock = threading.Lock()
        self._entries: dict[str, CacheEntry] = {}
        self._policy = policy or LruPolicy()
        self._used = 0  # charges of entries plus reservations under way
        self._unwritten = 0  # the reservations under way alone: bytes the disk's free space does not show yet
        self._floor_reached = False  # a store was refused for the free-disk floor (logged once until one fits)
        self._fixed = 0  # directories, marker and lock
        self.evictions = 0
        self._reindex()

    # -- start-up -------------------------------------------------------------------------------
    def _reindex(self) -> None:
        """Load every valid map, in the order of their last use; delete leftovers of an interrupted run and
        links."""
        self._ensure_dir(self._objects)
        found: list[tuple[float, CacheEntry]] = []
        with os.scandir(self._objects) as subdirs:
            for sub in subdirs:
                if not sub.is_dir(follow_symlinks=False):
                    self._remove_stray(Path(sub.path))
                    continue
                with os.scandir(sub.path) as files:
                    for item in files:
                        entry = self._reindex_file(Path(item.path), item)
                        if entry is not None:
                            found.append((item.stat(follow_symlinks=False).st_mtime, entry))
        for used_at, entry in sorted(found, key=lambda item: item[0]):
            self._entries[entry.digest] = entry
            self._policy.admit(entry.digest, used_at)
            self._used += entry.charge
        self._fixed = self._measure_fixed()
        disk_room = self._disk_room()
        with self._lock:
            self._evict_until(0, disk_room=disk_room)
        log.info("cache %s: %d objects, %d bytes (bound %d)", self.directory, len(self._entries),
                 self.used_bytes, self.size_bytes)

    def _reindex_file(self, path: Path, item: os.DirEntry[str]) -> CacheEntry | None:
        if not item.is_file(follow_symlinks=False) or path.suffix not in (".map", ".data"):
            self._remove_stray(path)
            return None
        if path.suffix == ".data":
            if not os.path.lexists(path.with_suffix(".map")):
                path.unlink(missing_ok=True)
            return None
        entry = self._load_map(path)
        if entry is None:
            path.unlink(missing_ok=True)
            path.with_suffix(".data").unlink(missing_ok=True)
        return entry

    @staticmethod
    def _remove_stray(path: Path) -> None:
        """Anything in ``objects/`` that nccidfs did not write there: a link is removed, never followed."""
        if path.is_symlink() or path.is_file():
            if path.is_symlink():
                log.warning("removing a symbolic link planted in the cache: %s", path)
            path.unlink(missing_ok=True)

    def _measure_fixed(self) -> int:
        """Apparent sizes of what is not an entry: the directories, marker and lock."""
        total = os.lstat(self.directory).st_size + os.lstat(self._objects).st_size
        with os.scandir(self._objects) as subdirs:
            total += sum(sub.stat(follow_symlinks=False).st_size for sub in subdirs)
        for name in (MARKER, LOCK):
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(self.directory / name).st_size
        return total

    def _load_map(self, path: Path) -> CacheEntry | None:
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
            with os.fdopen(fd, "rb") as handle:
                raw = handle.read()
            doc = json.loads(raw)
            size = int(doc["size"])
            if doc["version"] != CACHE_VERSION or doc["block_size"] != block_size_for(size, self.block_size):
                return None
            entry = CacheEntry(path.stem, doc["key"], doc["etag"], size, doc["block_size"], path.with_suffix(""))
            if entry.digest != entry_digest(self._identity, entry.key, entry.etag):
                return None
            stored = array("I", base64.b64decode(doc["crcs"]))
            position = 0
            for first, last in doc["runs"]:
                if not 0 <= first < last <= entry.block_count:
                    return None
                entry._present[first:last] = b"\x01" * (last - first)
                entry.crcs[first:last] = stored[position:position + last - first]
                position += last - first
            data = os.lstat(entry.data_path)
            if position != len(stored) or not stat.S_ISREG(data.st_mode) or data.st_size > entry.size:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        runs = _runs(entry._present)
        if runs and data.st_size < entry.block_span(0, runs[-1][1])[1]:
            return None  # the data file was cut short behind our back
        entry.extent = data.st_size
        entry.map_bytes = len(raw)
        entry.cached_bytes = sum(entry.bytes_in(first, last) for first, last in runs)
        return entry

    # -- pinning --------------------------------------------------------------------------------
    def pin(self, obj: ObjectInfo) -> CacheEntry:
        """The entry for this object version, created empty if new; it cannot be evicted until unpinned."""
        digest = entry_digest(self._identity, obj.key, obj.etag)
        stamp = None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                block = block_size_for(obj.size, self.block_size)
                shard = self._objects / digest[:SHARD_CHARS]
                entry = CacheEntry(digest, obj.key, obj.etag, obj.size, block, shard / digest)
                self._entries[digest] = entry
                self._policy.admit(digest)
            else:
                stamp = self._policy.used(digest)
            entry.md5 = entry.md5 or obj.md5
            entry._pins += 1
        if stamp is not None:
            # Outside the lock: a system call. The entry is pinned, so its map is not unlinked meanwhile.
            with contextlib.suppress(OSError):  # no map yet, or a failed stamp: only the order suffers
                os.utime(entry.map_path, (stamp, stamp), follow_symlinks=False)
        return entry

    def retain(self, entry: CacheEntry) -> bool:
        """Pin an entry already held, if it is still indexed (not evicted); False if it is gone."""
        with self._lock:
            if self._entries.get(entry.digest) is not entry:
                return False
            entry._pins += 1
            return True

    def unpin(self, entry: CacheEntry) -> None:
        other = self._other_usage()[1]
        with self._lock:
            entry._pins -= 1
            if entry._pins > 0:
                return
            fd, entry.fd = entry.fd, None  # closed outside the lock: no pin is left, so nobody else uses it
            if entry.map_bytes == 0:  # never stored anything: leave no trace (no file, if it never opened one)
                self._forget(entry, on_disk=fd is not None)
            else:
                self._evict_until(0, other)
        if fd is not None:
            os.close(fd)

    def _ensure_dir(self, path: Path) -> None:
        """Create a directory of ours; a link in its place is removed, never followed."""
        if os.path.islink(path):
            log.warning("removing a symbolic link planted in the cache: %s", path)
            os.unlink(path)
        try:
            os.mkdir(path, PRIVATE_DIR_MODE)
        except FileExistsError:
            return
        if path.parent != self.directory:
            with self._lock:
                self._fixed += os.lstat(path).st_size

    def _fd(self, entry: CacheEntry) -> int:
        """The entry's data file, opened on first use. Hold ``entry._lock``."""
        if entry.fd is None:
            try:
                entry.fd = self._open_data(entry, check=entry.base.parent not in self._ready_shards)
            except FileNotFoundError:  # the folders were deleted since they were made: make them again
                self._ready_shards.clear()
                entry.fd = self._open_data(entry, check=True)
        return entry.fd

    def _open_data(self, entry: CacheEntry, check: bool) -> int:
        if check:
            self._ensure_dir(self._objects)  # recreated if someone deleted it
            self._ensure_dir(entry.base.parent)
            self._ready_shards.add(entry.base.parent)
        return os.open(entry.data_path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, PRIVATE_FILE_MODE)

    # -- blocks ---------------------------------------------------------------------------------
    def missing_runs(self, entry: CacheEntry, first: int, last: int) -> list[tuple[int, int]]:
        """Runs ``[lo, hi)`` of blocks in ``[first, last)`` that are not present."""
        runs = []
        with entry._lock:
            index = entry._present.find(0, first, last)
            while index >= 0:
                end = entry._present.find(1, index, last)
                end = last if end < 0 else end
                runs.append((index, end))
                index = entry._present.find(0, end, last)
        return runs

    def all_present(self, entry: CacheEntry, first: int, last: int) -> bool:
        """Whether every block of ``[first, last)`` is present."""
        with entry._lock:
            return entry._present.find(0, first, last) < 0

    def is_complete(self, entry: CacheEntry) -> bool:
        """Whether every block of the object is present."""
        return self.all_present(entry, 0, entry.block_count)

    def read_blocks(self, entry: CacheEntry, first: int, last: int) -> bytes | None:
        """Blocks ``[first, last)`` from disk if all are present and pass their CRC, else None."""
        start, stop = entry.block_span(first, last)
        with entry._lock:
            if entry._present.find(0, first, last) >= 0:
                return None
            fd = self._fd(entry)
        data = os.pread(fd, stop - start, start)
        if len(data) == stop - start and _blocks_intact(data, entry.crcs[first:last], entry.block_size):
            return data
        bad = [first + i for i, crc in enumerate(_block_crcs(data, entry.block_size)) if crc != entry.crcs[first + i]]
        log.warning("cache file of %s failed verification (%d blocks); fetching again", entry.key,
                    len(bad) or last - first)
        self._drop_blocks(entry, bad or list(range(first, last)))
        return None

    def store_blocks(self, entry: CacheEntry, first: int, data: Chunk) -> bool:
        """Write blocks starting at ``first`` and mark them present; False if the bound or the disk leaves
        no room (the caller then serves the bytes uncached). The caller holds a pin on the entry.

        The bytes are written outside the entry's lock: a part of a large object takes milliseconds to
        write, and readers of its other blocks must not wait for that. The blocks are unmarked until the
        write is done, so nobody reads them before. What the entry costs is measured under the lock, with
        the marking, so concurrent stores of one entry each count only what they added.
        """
        block = entry.block_size
        last = first + -(-len(data) // block)
        start = first * block
        with entry._lock:
            expected = (max(0, start + len(data) - entry.extent) + _MAP_PER_BLOCK * (last - first) + _MAP_PER_RUN
                        + (0 if entry.map_bytes else _MAP_HEADER + _MAP_PER_KEY_CHAR * len(entry.key)))
        if not self._reserve(expected):
            return False
        crcs = _block_crcs(data, block)
        try:
            with entry._lock:
                fd = self._fd(entry)  # stays open: the caller's pin keeps unpin from closing it
            os.pwrite(fd, data, start)
            with entry._lock:
                before = entry.charge
                self._mark(entry, first, last, crcs)
                actual = entry.charge - before
        except OSError as error:
            with entry._lock:
                before = entry.charge
                self._settle(expected, self._recount(entry) - before)
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("cache disk full while storing %s; serving from S3", entry.key)
            return False
        self._settle(expected, actual)
        return True

    def _mark(self, entry: CacheEntry, first: int, last: int, crcs: array[int]) -> None:
        """Mark blocks present and replace the map; on failure leave them unmarked. Hold ``entry._lock``."""
        was_present = entry._present[first:last]
        old_crcs = entry.crcs[first:last]
        already = sum(entry.bytes_in(i, i + 1) for i in range(first, last) if entry._present[i])
        entry._present[first:last] = b"\x01" * (last - first)
        entry.crcs[first:last] = crcs
        try:
            self._write_map(entry)
        except OSError:
            entry._present[first:last] = was_present
            entry.crcs[first:last] = old_crcs
            raise
        entry.cached_bytes += entry.bytes_in(first, last) - already
        entry.extent = max(entry.extent, entry.block_span(first, last)[1])

    def _recount(self, entry: CacheEntry) -> int:
        """After a failed write: the entry's real charge, from the files. Hold ``entry._lock``."""
        try:
            entry.extent = os.fstat(entry.fd).st_size if entry.fd is not None else 0
        except OSError:
            entry.extent = 0
        return entry.charge

    def verify_bytes(self, entry: CacheEntry, data: Chunk) -> bool:
        """Check the whole object's bytes, fetched but not yet stored, against its MD5; True when the
        store gave none (an S3 multipart upload). Checked in memory, they need not be read back."""
        if entry.md5 is None or len(data) != entry.size:
            return True
        if hashlib.md5(data, usedforsecurity=False).hexdigest() != entry.md5:
            log.error("%s: the bytes S3 sent do not match the ETag's MD5", entry.key)
            return False
        with entry._lock:
            entry.verified = True
        return True

    def verify_whole(self, entry: CacheEntry) -> bool:
        """Check a complete object against its MD5 when the store gave one (an S3 single-part upload).

        A mismatch drops every block, so the object is fetched again rather than served wrong.
        """
        if entry.md5 is None or not self.is_complete(entry):
            return True
        with entry._lock:
            if entry.verified:
                return True
            entry.verified = True
            fd = self._fd(entry)
        digest = hashlib.md5(usedforsecurity=False)
        for offset in range(0, entry.size, MD5_CHUNK):
            digest.update(os.pread(fd, min(MD5_CHUNK, entry.size - offset), offset))
        if digest.hexdigest() == entry.md5:
            return True
        log.error("%s: cached bytes do not match the ETag's MD5; discarding them", entry.key)
        with entry._lock:
            entry.verified = False
        self._drop_blocks(entry, list(range(entry.block_count)))
        return False

    def _write_map(self, entry: CacheEntry) -> None:
        """Replace the map atomically. Hold ``entry._lock``."""
        document = entry.map_document()
        tmp = entry.base.with_suffix(".map.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, PRIVATE_FILE_MODE)
        try:
            try:  # os.write, not a file object: that would cost an fstat, an ioctl and a seek per map
                written = 0
                while written < len(document):
                    written += os.write(fd, document[written:])
                used_at = self._last_used(entry)
                os.utime(fd, (used_at, used_at))  # a write is not a use: the map keeps the last use's time
            finally:
                os.close(fd)
            os.replace(tmp, entry.map_path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        entry.map_bytes = len(document)

    def _last_used(self, entry: CacheEntry) -> float:
        with self._lock:
            return self._policy.last_used(entry.digest)

    def _drop_blocks(self, entry: CacheEntry, blocks: list[int]) -> None:
        with entry._lock:
            before = entry.charge
            freed = sum(entry.bytes_in(i, i + 1) for i in blocks if entry._present[i])
            for i in blocks:
                entry._present[i] = 0
            entry.cached_bytes -= freed
            try:
                self._write_map(entry)
            except OSError as error:
                log.warning("could not rewrite the map of %s: %s", entry.key, error)
            delta = entry.charge - before
        self._settle(0, delta)

    # -- the bound ------------------------------------------------------------------------------
    def _reserve(self, nbytes: int) -> bool:
        other = self._other_usage()[1]
        disk_room = self._disk_room()
        with self._lock:
            if not self._evict_until(nbytes, other, disk_room):
                short_of_disk = disk_room is not None and disk_room - self._unwritten < nbytes
                if short_of_disk and not self._floor_reached:
                    log.warning("cache disk would have less than --cache-min-free (%s) free even with every "
                                "object not open evicted; serving from S3 uncached", format_size(self.min_free_bytes))
                self._floor_reached |= short_of_disk
                return False
            self._floor_reached = False
            self._used += nbytes
            self._unwritten += nbytes
            return True

    def _disk_room(self) -> int | None:
        """Bytes free on the cache's filesystem beyond the floor (negative below it); None without a floor.
        A system call: measured before taking the lock."""
        if not self.min_free_bytes:
            return None
        try:
            disk = os.statvfs(self.directory)
        except OSError as error:
            log.warning("cannot measure the cache disk's free space: %s", error)
            return None
        return disk.f_bavail * disk.f_frsize - self.min_free_bytes

    def rebalance(self) -> None:
        """Evict until everything fits again under the bound and above the floor (after the listing index
        grew)."""
        other = self._other_usage()[1]
        disk_room = self._disk_room()
        with self._lock:
            self._evict_until(0, other, disk_room)

    def _settle(self, reserved: int, actual: int) -> None:
        """Replace a reservation by what the write really cost."""
        other = self._other_usage()[1] if actual > reserved else 0
        with self._lock:
            self._used += actual - reserved
            self._unwritten -= reserved
            if actual > reserved:
                self._evict_until(0, other)

    def _evict_until(self, room: int, other: int | None = None, disk_room: int | None = None) -> bool:
        """Evict unpinned entries, in the policy's order, until ``room`` bytes fit under the bound and above
        the free-disk floor; evict nothing when they would not fit even then. Hold ``_lock``.

        ``other`` is the budget of the listing index and ``disk_room`` what :meth:`_disk_room` measured, both
        by the caller before taking the lock (they are system calls that must not hold every reader up).
        Writes under way are counted as not yet on the disk, and an eviction as freeing what it charged."""
        budget = self.size_bytes - (self._other_usage()[1] if other is None else other) - self._fixed
        if disk_room is not None:
            budget = min(budget, self._used + disk_room - self._unwritten)
        if self._used + room <= budget:
            return True
        evictable = [entry for entry in map(self._entries.__getitem__, self._policy.victims()) if entry._pins == 0]
        if self._used - sum(e.charge for e in evictable) + room > budget:
            return False  # it cannot fit even in an emptied cache: keep what is there
        for entry in evictable:
            self._forget(entry)
            self.evictions += 1
            if self._used + room <= budget:
                return True
        return False

    def _forget(self, entry: CacheEntry, on_disk: bool = True) -> None:
        """Drop an unpinned entry from the index and, if it has files (``on_disk``), from the disk. Hold
        ``_lock``. (An entry that never opened its data file has none: a file left by an interrupted run is
        deleted at start-up. Most reads for one use are such entries, and two unlinks each cost more than
        their reads' own bookkeeping.)"""
        del self._entries[entry.digest]
        self._policy.forget(entry.digest)
        self._used -= entry.charge
        if on_disk:
            entry.map_path.unlink(missing_ok=True)
            entry.data_path.unlink(missing_ok=True)

    # -- reporting ------------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        """Everything the directory holds, as ``du -sb`` would count it."""
        return self._used + self._fixed + self._other_usage()[0]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            complete = sum(1 for e in self._entries.values() if e._present.find(0) < 0)
            objects, evictions = len(self._entries), self.evictions
        return {"directory": str(self.directory), "bound_bytes": self.size_bytes, "used_bytes": self.used_bytes,
                "objects": objects, "complete_objects": complete, "evictions": evictions}


def disk_usage(directory: Path) -> dict[str, Any]:
    """What a cache directory holds, read without a daemon (``nccidfs cache stats``): apparent sizes of
    everything in it, links not followed, so the figure is the one ``du -sb`` prints."""
    used, maps = 0, 0
    pending = [directory]
    while pending:
        path = pending.pop()
        used += os.lstat(path).st_size
        with os.scandir(path) as items:
            for item in items:
                if item.is_dir(follow_symlinks=False):
                    pending.append(Path(item.path))
                else:
                    used += item.stat(follow_symlinks=False).st_size
                    maps += item.name.endswith(".map")
    return {"directory": str(directory), "objects": maps, "used_bytes": used}


def clear_directory(directory: Path, index_files: tuple[str, ...]) -> int:
    """Delete every cached object and the listing index under ``directory``; returns how many objects.

    Only inside a directory that carries the nccidfs marker, and only while no daemon holds its lock.
    """
    if not is_cache_dir(directory):
        raise ConfigError(f"{directory} is not an nccidfs cache directory (it has no {MARKER}); nothing removed")
    lock = CacheLock(directory, {"pid": os.getpid(), "clearing": True})
    try:
        objects = directory / OBJECTS
        count = 0
        if objects.is_dir() and not objects.is_symlink():
            count = disk_usage(objects)["objects"]
            shutil.rmtree(objects)  # never follows links
        for name in index_files:
            (directory / name).unlink(missing_ok=True)
    finally:
        lock.release()
    return count
