"""Series-aware prefetch: when a ``.dcm`` is read whole, fetch the rest of its series in the background.

Tools such as dcm2niix, SimpleITK and viewers walk a series file by file; fetching the series ahead of
them turns a run of small serial reads into parallel bulk downloads. The prefetcher works one series at a
time: reading an image in another series cancels what is still queued for the old one. It starts only
when a reader goes past an image's header, so header scans never pull pixel data. It skips series
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


class SeriesPrefetcher:
    def __init__(self, namespace: Namespace, cache: DiskCache, fetcher: Fetcher, threads: int) -> None:
        self._namespace = namespace
        self._cache = cache
        self._fetcher = fetcher
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._series = ""
        self._generation = 0
        self.objects_prefetched = 0
        self.bytes_prefetched = 0

    def reading(self, path: str, obj: ObjectInfo) -> None:
        """Read listener of :class:`~nccidfs.fs.FileSystem`: start on the first image read in a new series."""
        if not path.endswith(IMAGE_SUFFIX):
            return
        series, name = path.rsplit("/", 1)
        with self._lock:
            if series == self._series:
                return
            self._series = series
            self._generation += 1
            generation = self._generation
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="prefetch")
            pool = self._pool
        try:
            images = [e for e in self._namespace.list(series).values() if e.obj is not None
                      and e.name.endswith(IMAGE_SUFFIX)]
        except NccidfsError:
            return
        total = sum(e.size for e in images)
        if total > self._cache.size_bytes // 2:
            log.debug("series %s (%d bytes) is over half the cache; not prefetching", series, total)
            return
        # Readers usually walk forward from the image they opened: fetch from there, then wrap around.
        names = [e.name for e in images]
        start = names.index(name) + 1 if name in names else 0
        for image in images[start:] + images[:start]:
            if image.obj is not None and image.name != name:
                pool.submit(self._fetch, generation, image.obj)

    def _fetch(self, generation: int, obj: ObjectInfo) -> None:
        if generation != self._generation:
            return  # the reader moved to another series
        entry = self._cache.pin(obj)
        try:
            fetched = self._fetcher.fetch_all(entry)
        except NccidfsError as error:
            log.debug("prefetch of %s failed: %s", obj.key, error)
            return
        finally:
            self._cache.unpin(entry)
        with self._lock:
            if fetched:
                self.objects_prefetched += 1
                self.bytes_prefetched += fetched

    def shutdown(self) -> None:
        with self._lock:
            self._generation += 1
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
