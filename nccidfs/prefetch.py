"""Series-aware prefetch: fetch the other images of a series in the background, as far as the reader goes.

Opening a ``.dcm`` fetches the first block (the header) of every image in its series: a header scan then
finds its headers already here. Reading an image past its header fetches the whole series.

Tools such as dcm2niix, SimpleITK and viewers walk a series file by file; fetching the series ahead of
them turns a run of small serial reads into parallel bulk downloads. The prefetcher works one series at a
time: opening an image in another series cancels what is still queued for the old one. Whole images are
fetched only once a reader goes past a header, so header scans never pull pixel data. It skips series
larger than half the cache, so prefetching never evicts most of what a reader is using.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from nccidfs.cache import DiskCache
from nccidfs.errors import NccidfsError
from nccidfs.fetch import Fetcher
from nccidfs.namespace import Namespace
from nccidfs.objects import ObjectInfo

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".dcm"
HEADERS, WHOLE = "headers", "whole"


class SeriesPrefetcher:
    """Two stages per series: headers when an image is opened, whole images once one is read whole."""

    def __init__(self, namespace: Namespace, cache: DiskCache, fetcher: Fetcher, threads: int) -> None:
        self._namespace = namespace
        self._cache = cache
        self._fetcher = fetcher
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stages: dict[str, str] = {}  # the current series' path -> the stage it reached
        self._generation = 0
        self.objects_prefetched = 0
        self.bytes_prefetched = 0

    def opened(self, path: str, obj: ObjectInfo) -> None:
        """Open listener: fetch the first block of every image of the series, so a header scan runs in
        parallel rather than one request at a time."""
        self._start(path, HEADERS)

    def reading(self, path: str, obj: ObjectInfo) -> None:
        """Read listener: an image is being read whole, so fetch the whole series."""
        self._start(path, WHOLE)

    def _start(self, path: str, stage: str) -> None:
        if not path.endswith(IMAGE_SUFFIX):
            return
        series, name = path.rsplit("/", 1)
        with self._lock:
            reached = self._stages.get(series)
            if reached in (WHOLE, stage):
                return
            if reached is None:  # a new series: whatever is queued for the old one is dropped
                self._generation += 1
                self._stages = {}
            self._stages[series] = stage
            generation = self._generation
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prefetch")
            pool = self._pool
        try:
            images = [e.obj for e in self._namespace.list(series).values() if e.obj is not None
                      and e.name.endswith(IMAGE_SUFFIX)]
        except NccidfsError:
            return
        total = sum(obj.size for obj in images)
        if stage == WHOLE and total > self._cache.size_bytes // 2:
            log.debug("series %s (%d bytes) is over half the cache; not prefetching", series, total)
            return
        # Readers usually walk forward from the image they opened: fetch from there, then wrap around.
        names = [obj.key.rsplit("/", 1)[1] for obj in images]
        start = names.index(name) + 1 if name in names else 0
        for obj in images[start:] + images[:start]:
            if not obj.key.endswith("/" + name):
                pool.submit(self._fetch, generation, series, obj, stage)

    def _fetch(self, generation: int, series: str, obj: ObjectInfo, stage: str) -> None:
        with self._lock:
            if generation != self._generation:
                return  # the reader moved to another series
            if stage == HEADERS and self._stages.get(series) == WHOLE:
                return  # the whole image is queued too: one GET instead of two
        entry = self._cache.pin(obj)
        try:
            fetched = self._fetcher.fetch_blocks(entry, 0, 1 if stage == HEADERS else entry.block_count)
        except NccidfsError as error:
            log.debug("prefetch of %s failed: %s", obj.key, error)
            return
        finally:
            self._cache.unpin(entry)
        with self._lock:
            if fetched:
                self.objects_prefetched += stage == WHOLE
                self.bytes_prefetched += fetched

    def shutdown(self) -> None:
        with self._lock:
            self._generation += 1
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
