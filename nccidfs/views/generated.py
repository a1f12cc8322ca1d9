"""Generated files: made from warehouse objects on first open, kept in the disk cache under its bound, keyed
by the ETags of their inputs (a changed input gives a new version; an unchanged one is served from the cache
after a restart).

A generated file goes through a fetcher of its own whose "store" makes bytes instead of fetching them
(:class:`Producers`): only the ranges read are made (a volume's slice has a fixed place, so a range needs
only the images of the slices it covers), memory stays bounded by the fetcher's part size, and blocks,
single flight, read-ahead and the cache's bound work as for any object. A whole file (a PNG) is built once
however many read it (:func:`whole_producer`); what is made is held for its readers within
:data:`MADE_BYTES`, and decoding reserves its memory from one :class:`~nccidfs.budget.MemoryBudget` of
:data:`DECODE_BUDGET`. A file whose making fails is remembered with its reason, which its listing then
gives in a ``.json`` instead of the file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

from cachetools import LRUCache

from nccidfs import deadline
from nccidfs.budget import MemoryBudget
from nccidfs.cache import DiskCache
from nccidfs.config import ReadConfig
from nccidfs.errors import CorruptData, NotFound, TransientError
from nccidfs.fetch import Fetcher, ReadCursor
from nccidfs.objects import Chunk, ObjectInfo
from nccidfs.ranked import RankedPool
from nccidfs.views.registry import OPEN_INVALIDATION_WAIT, Invalidator, Snapshot, VirtualFile

log = logging.getLogger(__name__)
T = TypeVar("T")

# Images read at once to make the views' files, all views together: each is hundreds of KiB that the
# daemon decodes and places, so more at once only share the same CPU (64 made a volume no faster).
READ_THREADS = 32
# Metadata twins read at once to plan a view (a series' size is known only once all its twins are in): a
# few KiB each, so their time is the server's latency, and twice as many at once take a 244-slice
# series' `stat` from 0.58 to 0.42 s at 50 ms a request.
PLAN_THREADS = 64
# Bytes made for open files and kept for their readers (whole PNGs, encoded slices: ranges do not end on
# slice boundaries), all files together.
MADE_BYTES = 48 * 1024 * 1024
# Memory all image decoding may take at once, and what decoding takes per pixel besides the image's bytes:
# its pixels, the display's 8-bit copy and the PNG (the float64 steps of display or rescale go a band of
# rows at a time). Measured 6 to 7 bytes a pixel for 16-bit X-rays of 3000 x 3000 and 4096 x 4096 made into
# PNGs; 16 leaves room, and takes a single 16-bit image up to about 22 million pixels (4730 x 4730), past the
# 3520 x 4280 of the largest detectors. With MADE_BYTES and the rest of the daemon (about 90 MiB), the
# daemon stays under 500 MiB.
DECODE_BUDGET = 384 * 1024 * 1024
WORK_BYTES_PER_PIXEL = 16
# Names, versions and reasons remembered per generated file (each a few hundred bytes).
REMEMBERED_FILES = 100_000
# A generated file's small JSON companion: a series' sidecar, or the reason a file could not be made.
SIDECAR_SUFFIX = ".json"


class ObjectReader:
    """Whole objects through the cache, many at once, within what is left of the calling FUSE call.

    An object asked for again while its read is under way (the image whose slices two parts of a volume
    share, two readers of one series) waits for that read instead of starting another. Reads run in the
    order of their ``rank``: a volume's parts are asked for by several read-ahead threads at once, and
    the part read first must be made first."""

    def __init__(self, fetcher: Fetcher, timeout: float) -> None:
        self._fetcher = fetcher
        self._timeout = timeout
        self._pools = {True: RankedPool(PLAN_THREADS, "plan"), False: RankedPool(READ_THREADS, "derive")}
        self._lock = threading.Lock()
        # By the object's key, ETag and what is made of its bytes.
        self._reading: dict[tuple[str, str, Callable[[bytes], Any]], _Reading] = {}

    def shutdown(self) -> None:
        for pool in self._pools.values():
            pool.shutdown()

    def read_many(self, objects: Sequence[ObjectInfo], keep: bool = True, rank: int = 0) -> list[bytes]:
        """The objects' bytes, in order, each read in one of this reader's threads. Kept in the cache (stored
        once they are returned: the twins a file is planned from); ``keep=False`` for the images a generated
        file is made from: they are read for that once and not stored, the cache keeps the file made.
        ``rank``: where in its file the caller is (0 for a file made whole, or planned from twins)."""
        return self.read_each(objects, _as_read, keep, rank)

    def read_each(self, objects: Sequence[ObjectInfo], then: Callable[[bytes], T], keep: bool = True,
                  rank: int = 0) -> list[T]:
        """As :meth:`read_many`, with ``then`` applied to each object's bytes in the thread that read them:
        the twins of a series are parsed while the rest are still on their way, not all after the last."""
        read = self._fetcher.read_store_later if keep else self._fetcher.read_once
        futures: list[Future[T]] = []
        try:
            for obj in objects:
                futures.append(self._join(obj, read, then, rank, self._pools[keep]))
            return [future.result(timeout=deadline.remaining(self._timeout)) for future in futures]
        except FutureTimeout:
            raise TransientError(f"reading {len(objects)} objects took over {self._timeout:g}s") from None
        finally:
            for obj in objects[:len(futures)]:
                self._leave(obj, then)

    def _join(self, obj: ObjectInfo, read: Callable[[ObjectInfo], bytes], then: Callable[[bytes], T],
              rank: int, pool: RankedPool) -> Future[T]:
        """The read of ``obj`` (and ``then`` of its bytes) under way, or a new one."""
        with self._lock:
            reading = self._reading.get((obj.key, obj.etag, then))
            if reading is None:
                future = pool.submit(rank, lambda: then(read(obj)))
                reading = self._reading[(obj.key, obj.etag, then)] = _Reading(future)
            reading.waiters += 1
            return reading.future

    def _leave(self, obj: ObjectInfo, then: Callable[[bytes], Any]) -> None:
        """One waiter less; the last one forgets the read, and cancels it if it has not started."""
        with self._lock:
            reading = self._reading[(obj.key, obj.etag, then)]
            reading.waiters -= 1
            if reading.waiters:
                return
            del self._reading[(obj.key, obj.etag, then)]
        reading.future.cancel()


def _as_read(data: bytes) -> bytes:
    return data


@dataclass
class _Reading:
    """A read under way and how many callers wait for it."""

    future: Future[Any]
    waiters: int = 0


Producer = Callable[[int, int], Chunk]


class Sidecar(Snapshot):
    """A small generated JSON file held in memory. Read with direct I/O: its size changes with its series
    (a reason appears), and the kernel must not cut it to a size it was told before."""

    direct_io = True


class Producers:
    """The storage seam for generated files: ``get_range`` makes the bytes asked for instead of fetching
    them, so the fetcher and the disk cache treat a generated file as any object (blocks kept under the
    bound, single flight, read-ahead). A producer is registered while its file is open; every open of the
    same version shares the first one's producer, so a whole file is built once for all its readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producers: dict[tuple[str, str], tuple[Producer, int]] = {}

    def add(self, obj: ObjectInfo, produce: Producer) -> None:
        with self._lock:
            kept, opened = self._producers.get((obj.key, obj.etag), (produce, 0))
            self._producers[(obj.key, obj.etag)] = (kept, opened + 1)

    def remove(self, obj: ObjectInfo) -> None:
        with self._lock:
            produce, opened = self._producers.pop((obj.key, obj.etag))
            if opened > 1:
                self._producers[(obj.key, obj.etag)] = (produce, opened - 1)

    def get_range(self, key: str, start: int, end: int, etag: str) -> Chunk:
        with self._lock:
            found = self._producers.get((key, etag))
        if found is None:
            raise NotFound(f"{key}: not open")
        try:
            return found[0](start, end)
        except ValueError as error:  # an image pydicom cannot decode, or one that does not match its twin
            raise CorruptData(f"{key}: {error}") from None


class GeneratedFile:
    """An open generated file: read through its own fetcher, so made once and then served from the cache.
    Its size is exact, so the kernel may cache pages and programs may mmap it; only the first open after
    its size changed reads with direct I/O, so the kernel cannot cut or pad it to the old size."""

    def __init__(self, generated: Generated, obj: ObjectInfo, direct_io: bool) -> None:
        self._generated = generated
        self._obj = obj
        self._entry = generated.fetcher.pin(obj)
        self._cursor = ReadCursor()
        self.direct_io = direct_io

    def read(self, offset: int, size: int) -> Chunk:
        return self._generated.fetcher.read(self._entry, offset, size, self._cursor)

    def release(self) -> None:
        self._generated.fetcher.unpin(self._entry)
        self._generated.producers.remove(self._obj)


def version_of(inputs: Sequence[ObjectInfo]) -> str:
    """A generated file's version: changes exactly when one of its inputs' ETags does."""
    return hashlib.sha256("\0".join(f"{o.key}\0{o.etag}" for o in inputs).encode()).hexdigest()


class Generated:
    """Generated files, kept in the disk cache under its bound and keyed by the ETags of their inputs.

    It also keeps, per file name, what the kernel must hear about: the size last listed (a new size is
    invalidated in the kernel at once, and the next open waits for that), and the reason a version failed
    (so its listing gives the reason instead of the file). ``name`` is the path below ``prefix``."""

    def __init__(self, cache: DiskCache, config: ReadConfig, timeout: float, prefix: str,
                 invalidate: Invalidator = lambda path, wait: None) -> None:
        self.cache = cache
        self.producers = Producers()
        self.fetcher = Fetcher(self.producers, cache, config, timeout)
        self.budget = MemoryBudget(DECODE_BUDGET, timeout)
        self.made = Made(MADE_BYTES)
        self._prefix = prefix
        self._invalidate = invalidate
        self._lock = threading.Lock()
        self._sizes: LRUCache[str, int] = LRUCache(maxsize=REMEMBERED_FILES)
        self._resized: LRUCache[str, bool] = LRUCache(maxsize=REMEMBERED_FILES)
        self._failed: LRUCache[tuple[str, str], str] = LRUCache(maxsize=REMEMBERED_FILES)

    def shutdown(self) -> None:
        """Stop the fetcher that makes the files' blocks."""
        self.fetcher.shutdown()

    def _path(self, name: str) -> str:
        return "/" + self._prefix + name

    def listed(self, name: str, size: int) -> None:
        """``name`` is shown with ``size``; a size other than the last shown is forgotten by the kernel."""
        with self._lock:
            before = self._sizes.get(name)
            self._sizes[name] = size
            resized = before is not None and before != size
            if resized:
                self._resized[name] = True
        if resized:
            self._invalidate(self._path(name), 0.0)

    def failure(self, name: str, inputs: Sequence[ObjectInfo]) -> str | None:
        """Why this version of the file could not be made, if it was tried and failed."""
        with self._lock:
            return self._failed.get((name, version_of(inputs)))

    def open(self, name: str, inputs: Sequence[ObjectInfo], size: int, produce: Producer) -> VirtualFile:
        version = version_of(inputs)
        obj = ObjectInfo(self._prefix + name, size, version, 0.0)
        with self._lock:
            resized = self._resized.pop(name, False)
        if resized:
            self._invalidate(self._path(name), OPEN_INVALIDATION_WAIT)
        self.producers.add(obj, self._guarded(name, version, produce))
        return GeneratedFile(self, obj, direct_io=resized)

    def _guarded(self, name: str, version: str, produce: Producer) -> Producer:
        """``produce``, remembering why it failed: the file is then listed with the reason instead."""

        def guarded(start: int, end: int) -> Chunk:
            try:
                return produce(start, end)
            except ValueError as error:
                with self._lock:
                    first = (name, version) not in self._failed
                    self._failed[(name, version)] = str(error)
                if first:
                    log.warning("%s: %s; listed with this reason from now on", name, error)
                    stem = name.rsplit(".", 1)[0]
                    for path in (name, stem + SIDECAR_SUFFIX):
                        self._invalidate(self._path(path), 0.0)
                raise

        return guarded


class Made:
    """Bytes made for generated files, kept for their readers in one LRU bounded by bytes: however many
    files are open, what they hold between reads stays within MADE_BYTES. What is dropped is made again
    when asked for (most ranges are then served from the disk cache instead)."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._kept: LRUCache[tuple[str, ...], bytes] = LRUCache(maxsize=size, getsizeof=len)

    def get(self, key: tuple[str, ...]) -> bytes | None:
        with self._lock:
            return self._kept.get(key)

    def put(self, key: tuple[str, ...], data: bytes) -> None:
        with self._lock, suppress(ValueError):  # heavier than the whole LRU: not kept
            self._kept[key] = data


def whole_producer(build: Callable[[], bytes], made: Made, scope: tuple[str, ...]) -> Producer:
    """Bytes of a file made whole (a PNG): built once, by the first range asked for, while the ranges
    asked for at the same time (parts of a read-ahead, other readers) wait for it; kept in ``made`` under
    ``scope`` and sliced."""
    lock = threading.Lock()

    def produce(start: int, end: int) -> bytes:
        with lock:
            data = made.get(scope)
            if data is None:
                data = build()
                made.put(scope, data)
        return data[start:end]

    return produce
