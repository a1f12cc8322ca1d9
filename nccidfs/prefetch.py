"""Series-aware prefetch: fetch the other images of a series in the background, as far as the reader goes.

It acts only for a reader that walks a series: :data:`IN_ORDER` images of one series opened one after
the other in name order. Then it fetches the first block (the header) of every image in that series, so
a header scan finds its headers already here; and once an image of that series is read past its header,
the whole series. A reader that opens images at random (a training job's data loader) never makes a
walk, so it costs no bytes and no work beyond one dictionary look-up per open.

Tools such as dcm2niix, SimpleITK and viewers walk a series file by file; fetching the series ahead of
them turns a run of small serial reads into parallel bulk downloads. The prefetcher works one series at a
time: a walk in another series cancels what is still queued for the old one. Whole images are fetched
only once a reader goes past a header, so header scans never pull pixel data. It skips series larger
than half the cache, so prefetching never evicts most of what a reader is using.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from cachetools import LRUCache

from nccidfs.cache import DiskCache
from nccidfs.errors import NccidfsError
from nccidfs.fetch import Fetcher
from nccidfs.layout import is_image
from nccidfs.namespace import Namespace
from nccidfs.objects import ObjectInfo

log = logging.getLogger(__name__)

HEADERS, WHOLE = "headers", "whole"
# Images of one series opened in a row, in name order, that make a series walk. Three: a random reader of
# a 50-image series makes one by chance about once in 2,500 opens; a header scan waits for two serial opens.
IN_ORDER = 3
# Series whose image order is kept (a few hundred names each), and series whose last opened place is.
ORDERED_SERIES = 64
WALKED_SERIES = 1024
# The place before the first: no first open continues a walk.
NONE_OPENED = -2
# A series larger than this share of the cache is not fetched whole: it would evict most of what is read.
MAX_SERIES_SHARE = 0.5


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
        # Per series: its image names in order (with their places) and the last place opened, with the run
        # of consecutive places that led to it.
        self._orders: LRUCache[str, dict[str, int]] = LRUCache(maxsize=ORDERED_SERIES)
        self._walks: LRUCache[str, tuple[int, int]] = LRUCache(maxsize=WALKED_SERIES)
        self._generation = 0
        self.objects_prefetched = 0
        self.bytes_prefetched = 0

    def opened(self, path: str, obj: ObjectInfo) -> None:
        """Open listener: once the reader walks the series, fetch the first block of each of its images,
        so a header scan runs in parallel rather than one request at a time."""
        if is_image(path) and self._walking(*path.rsplit("/", 1)):
            self._start(path, HEADERS)

    def reading(self, path: str, obj: ObjectInfo) -> None:
        """Read listener: an image of a walked series is being read whole, so fetch the whole series."""
        with self._lock:
            walked = path.rsplit("/", 1)[0] in self._stages
        if walked:
            self._start(path, WHOLE)

    def _walking(self, series: str, name: str) -> bool:
        """Record an open; True once the last :data:`IN_ORDER` opens in this series were consecutive images."""
        with self._lock:
            order = self._orders.get(series)
        if order is None or name not in order:
            try:
                names = sorted(e.name for e in self._namespace.list(series).values()
                               if e.obj is not None and is_image(e.name))
            except NccidfsError:
                return False
            order = {image: place for place, image in enumerate(names)}
        with self._lock:
            self._orders[series] = order
            place = order.get(name)
            if place is None:
                return False
            last, run = self._walks.get(series, (NONE_OPENED, 0))
            run = run + 1 if place == last + 1 else 1
            self._walks[series] = (place, run)
            return run >= IN_ORDER

    def _start(self, path: str, stage: str) -> None:
        if not is_image(path):
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
                      and is_image(e.name)]
        except NccidfsError:
            return
        total = sum(obj.size for obj in images)
        if stage == WHOLE and total > self._cache.size_bytes * MAX_SERIES_SHARE:
            log.debug("series %s (%d bytes) is over half the cache; not prefetching", series, total)
            return
        # The reader walks forward in name order: fetch what lies ahead of the image it opened.
        for obj in sorted(images, key=lambda obj: obj.key):
            if obj.key.rsplit("/", 1)[1] > name:
                pool.submit(self._fetch, generation, series, obj, stage)

    def _fetch(self, generation: int, series: str, obj: ObjectInfo, stage: str) -> None:
        with self._lock:
            if generation != self._generation:
                return  # the reader moved to another series
            if stage == HEADERS and self._stages.get(series) == WHOLE:
                return  # the whole image is queued too: one GET instead of two
        try:
            with self._fetcher.pinned(obj) as entry:
                fetched = self._fetcher.fetch_blocks(entry, 0, 1 if stage == HEADERS else entry.block_count)
        except NccidfsError as error:
            log.debug("prefetch of %s failed: %s", obj.key, error)
            return
        with self._lock:
            if fetched:
                self.objects_prefetched += stage == WHOLE
                self.bytes_prefetched += fetched

    def shutdown(self) -> None:
        with self._lock:
            self._generation += 1
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
