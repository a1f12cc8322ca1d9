"""The fetcher: turns reads of object byte ranges into ranged GETs, through the disk cache.

- A read waits only for the blocks it needs; they are fetched in the caller's priority pool as one
  ranged GET per missing run (single flight: a block already being fetched is waited for, not fetched
  again).
- A reader of the whole file (a first read of :data:`WHOLE_READ` or more from offset 0) gets an object of
  up to ``part_size`` in one GET, checked against its MD5 in memory before any byte is served, and a
  larger object a read-ahead window of four parts at once.
- Any other sequential reader gets a read-ahead window that starts at ``initial_window``; windows double
  up to ``max_window``, fetched in the background as parallel GETs of at most ``part_size``. A window
  slides: each part the reader uses up is replaced by the next at once. The kernel sends a sequential
  reader's read-ahead as several requests at once, answered by several threads, so they arrive out of
  order: a read within ``reorder_slack`` of the furthest one, or inside the window fetched ahead, still
  belongs to the same reader's stream, and only a read elsewhere starts the window again.
- Bytes just fetched are served from memory; only other reads go to the cache file.
- Every wait is bounded: by the part's own deadline (fixed when its GET starts, so a second reader of a
  stalled part does not wait a whole deadline again) and by what is left of the FUSE call's deadline.
- A failed fetch is remembered for a moment, so the kernel's immediate retry fails at once.

The fetcher owns everything about requests under way (parts in flight, deadlines, failure memory); the
cache only holds blocks, and is asked which blocks are present, never reached into. Readers pin the
object they read through the fetcher (:meth:`Fetcher.pin`, :meth:`Fetcher.pinned`). Talks to a
:class:`RangeSource` (an object store, or the makers of generated files) and a
:class:`~nccidfs.cache.DiskCache` only; the order in which its locks and the cache's are taken is in
:mod:`nccidfs.cache`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Protocol

from cachetools import TTLCache

from nccidfs import deadline
from nccidfs.cache import CacheEntry, DiskCache
from nccidfs.config import ReadConfig
from nccidfs.errors import CorruptData, NccidfsError, TransientError
from nccidfs.objects import Chunk, ObjectInfo

log = logging.getLogger(__name__)

# Seconds for which a failed fetch fails the next reads of the same object at once, and for how many
# objects at most.
FAILURE_MEMORY = 2.0
FAILURES_REMEMBERED = 10_000
# Reads of cached blocks that fail their CRC fetch them again; a read gives up after this many tries.
READ_ATTEMPTS = 3
# A reader of a large object through from its start gets a read-ahead window of this many parts at once.
WHOLE_READER_PARTS = 4
# A first read this large is the kernel's read-ahead for a reader of the whole file.
WHOLE_READ = 128 * 1024
# Bytes read with :meth:`Fetcher.read_store_later` that wait to be stored; past this a reader stores its own.
STORE_LATER_BYTES = 16 * 1024**2


class RangeSource(Protocol):
    """What the fetcher reads from: an :class:`~nccidfs.store.protocol.ObjectStore`, or the makers of
    generated files (:class:`~nccidfs.views.generated.Producers`), whose bytes may be a view."""

    def get_range(self, key: str, start: int, end: int, etag: str) -> Chunk:
        """Bytes ``[start, end)`` of the version of ``key`` whose ETag is ``etag``."""


@dataclass(eq=False)
class InflightPart:
    """A ranged GET under way for blocks ``[first, last)`` of one entry; its future yields the bytes, which
    are stored in the cache once ``settled`` is set."""

    first: int
    last: int
    future: Future[Chunk]
    deadline: float
    settled: threading.Event = field(default_factory=threading.Event)


def _uncovered(first: int, last: int, parts: list[InflightPart]) -> list[tuple[int, int]]:
    """The runs of ``[first, last)`` that no part in flight covers."""
    runs = [(first, last)]
    for part in parts:
        runs = [piece for lo, hi in runs for piece in ((lo, min(hi, part.first)), (max(lo, part.last), hi))
                if piece[0] < piece[1]]
    return runs


@dataclass
class ReadCursor:
    """Per open file: where the furthest read of a sequential reader ended, and how far ahead we fetch."""

    next_offset: int = 0
    window: int = 0
    ahead_until: int = 0


def _idle_priority() -> None:
    """Run the calling thread under SCHED_IDLE (Linux keeps a policy per thread): only on a core nothing
    else wants. The background stores of the metadata twins are file creations, costly system calls; at
    the readers' own priority they took a third of the CPU time of a cold volume read on two cores. What
    waits for them is bounded (:data:`STORE_LATER_BYTES`): past it a reader stores its own object."""
    with contextlib.suppress(OSError):  # a sandbox may refuse it: the stores then only compete, as before
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


class Fetcher:
    def __init__(self, store: RangeSource, cache: DiskCache, config: ReadConfig, deadline: float) -> None:
        self._store = store
        self._cache = cache
        self._config = config
        self._deadline = deadline
        self._foreground = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="fetch")
        self._background = ThreadPoolExecutor(config.fetch_threads, thread_name_prefix="readahead")
        self._storer = ThreadPoolExecutor(1, thread_name_prefix="store", initializer=_idle_priority)
        self._waiting_bytes = 0  # read_store_later's, not stored yet (guarded by _counter_lock)
        self._counter_lock = threading.Lock()
        self._in_flight: dict[int, tuple[str, int]] = {}
        self._parts_lock = threading.Lock()
        self._parts: dict[str, list[InflightPart]] = {}  # by entry digest
        self._failures: TTLCache[str, NccidfsError] = TTLCache(maxsize=FAILURES_REMEMBERED, ttl=FAILURE_MEMORY)
        # Told the key of an object whose cached bytes failed their MD5 and were dropped.
        self.on_discard: Callable[[str], None] = lambda key: None
        # Reads served wholly from the cache, and reads that had to fetch.
        self.hits = 0
        self.misses = 0

    def in_flight(self) -> list[dict[str, Any]]:
        """The ranged GETs under way: key and bytes asked for."""
        with self._counter_lock:
            return [{"key": key, "bytes": size} for key, size in self._in_flight.values()]

    def shutdown(self) -> None:
        self._foreground.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)
        self._storer.shutdown(wait=False, cancel_futures=True)

    # -- pins -----------------------------------------------------------------------------------
    def pin(self, obj: ObjectInfo) -> CacheEntry:
        """The cache entry to read an object version through (an open file holds one): it is not evicted
        until :meth:`unpin`."""
        return self._cache.pin(obj)

    def unpin(self, entry: CacheEntry) -> None:
        self._cache.unpin(entry)

    @contextlib.contextmanager
    def pinned(self, obj: ObjectInfo) -> Iterator[CacheEntry]:
        """The object's entry, pinned for the ``with`` block."""
        entry = self._cache.pin(obj)
        try:
            yield entry
        finally:
            self._cache.unpin(entry)

    # -- reading --------------------------------------------------------------------------------
    def read(self, entry: CacheEntry, offset: int, size: int, cursor: ReadCursor | None = None) -> Chunk:
        """Bytes ``[offset, offset + size)`` of the entry's object (short only at its end)."""
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        block = entry.block_size
        first, last = offset // block, -(-end // block)
        fetch_last = last
        if cursor is not None:
            fetch_last = self._read_ahead(entry, offset, size, end, cursor)
        for _attempt in range(READ_ATTEMPTS):
            parts = self._ensure_or_fail_fast(entry, first, last, fetch_last, self._foreground)
            data = self._assemble(entry, first, last, parts)
            if data is not None:
                start = first * block
                return data[offset - start:end - start]
        raise TransientError(f"{entry.key}: cached blocks kept failing verification")

    def _ensure_or_fail_fast(self, entry: CacheEntry, first: int, last: int, fetch_last: int,
                             pool: Executor) -> list[InflightPart]:
        """Like ``_ensure`` of ``[first, fetch_last)`` in ``pool`` when any block of ``[first,
        last)`` is missing, but a failure is remembered for a moment.

        When a read-ahead page fails, the kernel asks again for the single page at once; answering that
        from the remembered failure keeps the time to EIO at one deadline instead of two.
        """
        missing = not self._cache.all_present(entry, first, last)
        with self._counter_lock:
            if missing:
                self.misses += 1
            else:
                self.hits += 1
        if not missing:
            return []
        with self._parts_lock:
            failure = self._failures.get(entry.digest)
        if failure is not None:
            raise failure
        try:
            waits, started = self._ensure(entry, first, fetch_last, pool)
            return waits + started
        except NccidfsError as error:
            if isinstance(error, TransientError):
                with self._parts_lock:
                    self._failures[entry.digest] = error
            raise

    def read_start(self, obj: ObjectInfo, size: int) -> bytes:
        """The first ``size`` bytes of an object that no file handle holds open, pinned while read."""
        with self.pinned(obj) as entry:
            return bytes(self.read(entry, 0, size))  # bytes already: no copy

    def read_once(self, obj: ObjectInfo) -> bytes:
        """A whole object read for one use, not kept: the images a generated file is made from (the file
        made is what the cache keeps; storing its images too would write every byte twice). Served from the
        cache or from a GET under way when either has the object; else one GET in the calling thread,
        checked against its MD5 as any whole object is, and not stored."""
        return self._read_whole(obj)[0]

    def read_store_later(self, obj: ObjectInfo) -> bytes:
        """A whole object as :meth:`read_once` reads it, then stored in the cache by a thread of its own:
        for a reader that needs the bytes at once and the cache to keep them (the metadata twins a view is
        planned from), which then waits for no file to be made. Within :data:`STORE_LATER_BYTES` waiting,
        else stored before it is returned."""
        data, fetched = self._read_whole(obj)
        if fetched:
            with self._counter_lock:
                later = self._waiting_bytes + len(data) <= STORE_LATER_BYTES
                self._waiting_bytes += len(data) if later else 0
            if later:
                self._storer.submit(self._store_whole, obj, data, len(data))
            else:
                self._store_whole(obj, data, 0)
        return data

    def _read_whole(self, obj: ObjectInfo) -> tuple[bytes, bool]:
        """The object's bytes, and whether they were fetched for this call (not from the cache or a GET
        under way)."""
        with self.pinned(obj) as entry:
            if self._held_or_coming(entry):
                return bytes(self.read(entry, 0, entry.size)), False
            data = bytes(self._store.get_range(entry.key, 0, entry.size, entry.etag))  # no copy from a store
            if self._config.verify and not self._cache.verify_bytes(entry, data):
                self.on_discard(entry.key)
                raise CorruptData(f"{entry.key}: the bytes S3 sent do not match the ETag's MD5")
            return data, True

    def _held_or_coming(self, entry: CacheEntry) -> bool:
        """Whether the cache holds the whole object, or a GET of part of it is under way."""
        with self._parts_lock:
            flying = bool(self._parts.get(entry.digest))
        return flying or self._cache.is_complete(entry)

    def _store_whole(self, obj: ObjectInfo, data: bytes, waiting: int) -> None:
        """Store a whole object fetched and checked already, unless the cache has it or a GET of it is
        under way; ``waiting``: its bytes counted as waiting, released once done."""
        try:
            with self.pinned(obj) as entry:
                if not self._held_or_coming(entry) and self._cache.verify_bytes(entry, data):
                    self._cache.store_blocks(entry, 0, data)
        except OSError as error:  # only the cache misses it: the reader has its bytes
            log.warning("could not store %s in the cache: %s", obj.key, error)
        finally:
            with self._counter_lock:
                self._waiting_bytes -= waiting

    def fetch_blocks(self, entry: CacheEntry, first: int, last: int) -> int:
        """Fetch the missing blocks of ``[first, last)`` in the background pool and wait until they are
        stored (those already in flight too); returns the bytes this call downloaded."""
        waits, started = self._ensure(entry, first, min(last, entry.block_count), self._background)
        for part in waits + started:
            part.settled.wait(max(0.0, part.deadline - time.monotonic()))
        return sum(len(part.future.result()) for part in started)

    def _read_ahead(self, entry: CacheEntry, offset: int, size: int, end: int, cursor: ReadCursor) -> int:
        """Grow the window on sequential reads and keep ``window`` bytes fetched ahead of the furthest.

        Returns the block the caller's own fetch should reach: the whole object, in one GET, when a first
        read from its start asks for :data:`WHOLE_READ` bytes or more (the kernel's read-ahead of a reader
        that reads the file through, where a header scan's first read is a few KiB) and the object fits
        in one part; else the end of the read. A larger object read through gets a window of several parts at once.
        """
        block = entry.block_size
        through = offset == 0 and cursor.next_offset == 0 and size >= WHOLE_READ
        if through and entry.size <= self._config.part_size:
            cursor.next_offset = cursor.ahead_until = entry.size
            return entry.block_count
        reached = cursor.next_offset  # the end of the stream's furthest read; 0 before any read
        slack = self._config.reorder_slack
        in_stream = reached > 0 and reached - slack <= offset <= max(reached + slack, cursor.ahead_until)
        if not (through or in_stream):
            cursor.window, cursor.ahead_until, cursor.next_offset = 0, 0, end
        elif end > reached:
            # A reader of the whole file starts with a window of several parts; any other, with the initial one.
            start_window = WHOLE_READER_PARTS * self._config.part_size if through else self._config.initial_window
            cursor.window = min(max(cursor.window * 2, start_window), self._config.max_window)
            cursor.next_offset = end
        last = -(-end // block)
        # The window slides: once the reader has used up a part of it, the next part is asked for, so the
        # GETs of a reader of a large object overlap instead of starting in waves.
        reached = cursor.next_offset
        refill_below = max(cursor.window // 2, cursor.window - self._config.part_size)
        if not cursor.window or reached >= entry.size or cursor.ahead_until - reached > refill_below:
            return last
        start = max(reached, cursor.ahead_until)
        stop = min(reached + cursor.window, entry.size)
        cursor.ahead_until = stop
        self._ensure(entry, start // block, -(-stop // block), self._background, wait=False)
        return last

    # -- planning -------------------------------------------------------------------------------
    def _ensure(self, entry: CacheEntry, first: int, last: int, pool: Executor,
                wait: bool = True) -> tuple[list[InflightPart], list[InflightPart]]:
        """Start GETs for the missing blocks of ``[first, last)``; return the parts already in flight that
        cover some of them, and the parts started here."""
        part_blocks = max(1, self._config.part_size // entry.block_size)
        new: list[InflightPart] = []
        with self._parts_lock:
            # Under the parts lock: a part leaves the list only once its blocks are marked, so each block
            # is seen either present, or in flight, or missing (never between the two and fetched twice).
            missing = self._cache.missing_runs(entry, first, last)
            flying = self._parts.setdefault(entry.digest, [])
            waits = [p for p in flying if p.first < last and p.last > first]
            for run_first, run_last in missing:
                for lo_run, hi_run in _uncovered(run_first, run_last, waits):
                    for lo in range(lo_run, hi_run, part_blocks):
                        part = InflightPart(lo, min(lo + part_blocks, hi_run), Future(),
                                            time.monotonic() + self._deadline)
                        flying.append(part)
                        new.append(part)
            if not flying:
                del self._parts[entry.digest]
        for part in new:
            pool.submit(self._fetch_part, entry, part)
        if wait:
            for part in waits + new:
                timeout = min(part.deadline - time.monotonic(), deadline.remaining(self._deadline))
                try:
                    part.future.result(timeout=max(0.0, timeout))
                except FutureTimeout:
                    self._abandon(entry, part)
                    raise TransientError(f"{entry.key}: no answer from S3 within {self._deadline:g}s") from None
        return waits, new

    def _abandon(self, entry: CacheEntry, part: InflightPart) -> None:
        """Stop sharing a part past its deadline, so the next reader starts a fresh GET instead of waiting."""
        with self._parts_lock:
            flying = self._parts.get(entry.digest)
            if flying is not None and part in flying:
                flying.remove(part)
                if not flying:
                    del self._parts[entry.digest]

    def _fetch_part(self, entry: CacheEntry, part: InflightPart) -> None:
        """GET the part, hand its bytes to the readers waiting, then store them.

        The part holds a pin of its own, so a reader that closes the file meanwhile cannot make the entry
        go away under the write. The readers are served before the write; until the bytes are stored the
        part stays listed as in flight, so a later reader takes them from it instead of from S3.
        """
        start, stop = entry.block_span(part.first, part.last)
        with self._counter_lock:
            self._in_flight[id(part)] = (entry.key, stop - start)
        pinned = self._cache.retain(entry)
        try:
            try:
                data = self._store.get_range(entry.key, start, stop, entry.etag)
                whole = part.first == 0 and part.last >= entry.block_count
                if whole and self._config.verify and not self._cache.verify_bytes(entry, data):
                    self.on_discard(entry.key)
                    raise CorruptData(f"{entry.key}: the bytes S3 sent do not match the ETag's MD5")
            except BaseException as error:
                self._finish(entry, part)
                part.future.set_exception(error)
                return
            part.future.set_result(data)
            try:
                stored = pinned and self._cache.store_blocks(entry, part.first, data)
            except OSError as error:
                log.warning("could not cache %s [%d, %d): %s", entry.key, start, stop, error)
                stored = False
            finally:
                self._finish(entry, part)
            if not stored:
                log.debug("no cache room for %s [%d, %d); served uncached", entry.key, start, stop)
            elif self._config.verify and not whole and self._cache.is_complete(entry) and self._cache.retain(entry):
                self._background.submit(self._verify, entry)
        finally:
            if pinned:
                self._cache.unpin(entry)

    def _verify(self, entry: CacheEntry) -> None:
        """The MD5 check of a completed object, off the reader's path (it reads the whole object)."""
        try:
            if not self._cache.verify_whole(entry):
                self.on_discard(entry.key)
        finally:
            self._cache.unpin(entry)

    def _finish(self, entry: CacheEntry, part: InflightPart) -> None:
        self._abandon(entry, part)
        with self._counter_lock:
            self._in_flight.pop(id(part), None)
        part.settled.set()

    def _assemble(self, entry: CacheEntry, first: int, last: int, parts: list[InflightPart]) -> Chunk | None:
        """Blocks ``[first, last)`` from the bytes of the parts just fetched, the rest from the cache file."""
        pieces: list[Chunk] = []
        block = first
        while block < last:
            part = next((p for p in parts if p.first <= block < p.last and p.future.done()), None)
            if part is not None:
                stop = min(part.last, last)
                data = part.future.result()
                pieces.append(data[(block - part.first) * entry.block_size:(stop - part.first) * entry.block_size])
                block = stop
                continue
            run_last = block + 1
            while run_last < last and not any(p.first <= run_last < p.last for p in parts):
                run_last += 1
            cached_run = self._cache.read_blocks(entry, block, run_last)
            if cached_run is None:
                return None
            pieces.append(cached_run)
            block = run_last
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)
