"""One filesystem from a config and a store: which parts there are, how they are wired, how they stop.

The daemon serves what :func:`assemble` returns through FUSE, and the unit tests drive the very same
object without a mount, so the two cannot drift apart. Every view under ``/.nccidfs/`` is registered
here, ``status.json`` included: the core knows no layer by name.

:meth:`Assembly.close` shuts down every pool the parts started, in an order where nothing is closed
under work that still uses it: first series prefetch and a catalog build under way (stopped, and waited
for: it lists through the namespace and writes to the catalog database), then the pools that only read
(derived files, the object fetcher), then the namespace, whose listings under way are waited for because
they write to the listing index, and last the two databases.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nccidfs.cache import DiskCache
from nccidfs.catalog_build import Bucket
from nccidfs.catalog_db import CatalogDB
from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.config import STATUS_FILE, Config
from nccidfs.fetch import Fetcher
from nccidfs.fs import FileSystem
from nccidfs.index import INDEX_FILE, ListingIndex
from nccidfs.log import strip_credentials
from nccidfs.namespace import Namespace
from nccidfs.objects import Listing
from nccidfs.prefetch import SeriesPrefetcher
from nccidfs.store.protocol import ObjectStore
from nccidfs.views.catalog import CatalogBuilder, CatalogView
from nccidfs.views.cohorts import CohortView
from nccidfs.views.generated import Generated, ObjectReader
from nccidfs.views.images import ImageView
from nccidfs.views.patients import PatientView
from nccidfs.views.registry import CONTROL
from nccidfs.views.status import StatusFile
from nccidfs.views.volumes import VolumeView

# Called when status.json is opened (or looked up): the figures it shows.
StatusProvider = Callable[[], dict[str, Any]]


@dataclass
class Assembly:
    """The parts of one filesystem; ``fs`` is the core that a FUSE adapter (or a test) drives."""

    fs: FileSystem
    namespace: Namespace
    index: ListingIndex
    catalog_db: CatalogDB
    cache: DiskCache
    fetcher: Fetcher
    reader: ObjectReader
    generated: Generated
    catalog: CatalogBuilder
    prefetcher: SeriesPrefetcher | None

    def refresh(self, path: str = "/") -> int:
        """Drop the cached listings at and below ``path`` (the catalog then knows it may be stale);
        returns how many were dropped."""
        dropped = self.namespace.invalidate(path)
        self.catalog.mark_stale()
        return dropped

    def close(self) -> None:
        """Shut down every pool: users of the namespace first, the namespace before the index it writes to."""
        if self.prefetcher is not None:
            self.prefetcher.shutdown()
        self.catalog.close()
        self.reader.shutdown()
        self.generated.shutdown()
        self.fetcher.shutdown()
        self.namespace.shutdown()
        self.index.close()
        self.catalog_db.close()


def _usage_beside(index: ListingIndex, catalog_db: CatalogDB) -> Callable[[], tuple[int, int]]:
    """What the cache's bound leaves to the files beside the objects: the listing index and the catalog."""

    def usage() -> tuple[int, int]:
        listings, catalog = index.disk_usage(), catalog_db.disk_usage()
        return listings[0] + catalog[0], listings[1] + catalog[1]

    return usage


def assemble(config: Config, store: ObjectStore, folders: list[str] | Listing, directory: Path,
             status: StatusProvider, clock: Clock = REAL_CLOCK) -> Assembly:
    """The filesystem over ``store`` that ``config`` describes, with its cache, index and catalog in
    ``directory`` (prepared and locked by the caller). ``folders`` is the prefix's own listing when it
    may be listed, else the folders that may be; ``status`` feeds ``status.json``."""
    s3 = config.s3
    endpoint = strip_credentials(s3.endpoint_url or f"aws:{s3.region}")
    warehouse = {"endpoint": endpoint, "bucket": s3.bucket, "prefix": s3.prefix}
    # A cohort's or a date's listings are not the bucket's: they are kept apart from a plain mount's.
    view = {"view": config.mount.view} if config.mount.view else {}
    index = ListingIndex(directory / INDEX_FILE, {**warehouse, **view})
    namespace = Namespace(store, s3.prefix, folders, config.mount.listing_ttl, config.mount.max_listing_entries,
                          index, s3.deadline, clock)
    catalog_db = CatalogDB(directory, warehouse)
    cache = DiskCache(directory, config.cache.size_bytes, f"{endpoint}\0{s3.bucket}", config.read.block_size,
                      _usage_beside(index, catalog_db), min_free_bytes=config.cache.min_free_bytes)
    index.after_write = catalog_db.after_write = cache.rebalance
    fetcher = Fetcher(store, cache, config.read, s3.deadline)
    fs = FileSystem(namespace, cache, fetcher)
    fetcher.on_discard = fs.discarded
    control = fs.control
    reader = ObjectReader(fetcher, s3.deadline)
    generated = Generated(cache, config.read, s3.deadline, f"{CONTROL}/",
                          lambda path, wait: control.invalidate(path, wait))
    assert isinstance(store, Bucket), "the catalog reads metadata twins by name"
    catalog = CatalogBuilder(namespace, index, store, catalog_db)
    control.register(STATUS_FILE, StatusFile(lambda: fs.with_kernel(status()), namespace.mount_time))
    control.register("patients", PatientView(namespace))
    control.register(VolumeView.NAME, VolumeView(namespace, reader, generated))
    control.register(ImageView.NAME, ImageView(namespace, reader, generated))
    control.register(CatalogView.NAME, CatalogView(catalog, catalog_db, namespace.mount_time))
    control.register(CohortView.NAME, CohortView.of_mount(directory, s3, fetcher, namespace.mount_time))
    prefetcher = None
    if config.read.prefetch:
        prefetcher = SeriesPrefetcher(namespace, cache, fetcher, config.read.prefetch_threads)
        fs.add_open_listener(prefetcher.opened)
        fs.add_read_listener(prefetcher.reading)
    return Assembly(fs, namespace, index, catalog_db, cache, fetcher, reader, generated, catalog, prefetcher)
