"""The storage seam of a frozen view: a cohort's listings from its manifest, the warehouse as of a date.

Both are :class:`~nccidfs.store.protocol.ObjectStore` s wrapped around the real one, so the namespace, the views
and the fetcher work unchanged on top of them:

- :class:`FrozenStore` answers every listing from a :class:`~nccidfs.cohort.tree.FrozenTree` and never
  lists S3. Reads go to S3 pinned to the manifest's ETag (``If-Match``, as every ranged GET): an object
  changed since the cohort was frozen fails with EIO, a deleted one with ENOENT, each with one log line
  naming it, and never serves other bytes. Its error is not :class:`~nccidfs.errors.ObjectChanged`, so
  the filesystem does not look for a newer version as it does on a live mount.
- :class:`AsOfStore` lists S3 as usual and leaves out objects last modified after the date.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import urlsplit

from nccidfs.cohort.tree import FrozenTree
from nccidfs.config import S3Config
from nccidfs.errors import ConfigError, NccidfsError, NotFound, ObjectChanged
from nccidfs.objects import Listing
from nccidfs.store.protocol import ObjectStore
from nccidfs.store.stats import RequestStats

T = TypeVar("T")

log = logging.getLogger(__name__)


class FrozenObjectChanged(NccidfsError):
    """An object of a cohort no longer has the manifest's ETag (EIO): the cohort cannot be served whole."""


def parse_as_of(text: str) -> float:
    """``2021-06-30`` (the whole day, UTC) or an ISO 8601 time, as seconds since the epoch."""
    try:
        if len(text) == len("2021-06-30"):
            day = dt.date.fromisoformat(text)
            return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp() - 1e-3
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--as-of {text!r}: use a date such as 2021-06-30 or a time such as "
                          "2021-06-30T12:00:00Z") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def endpoint_host(s3: S3Config) -> str:
    """The endpoint's host (and port), without scheme or credentials: the warehouse's identity."""
    if s3.endpoint_url is None:
        return f"s3.{s3.region}.amazonaws.com"
    return urlsplit(s3.endpoint_url).netloc.rpartition("@")[2]


class _Wrapped:
    """A store around another, sharing its request counters."""

    def __init__(self, inner: ObjectStore) -> None:
        self._inner = inner
        self.stats: RequestStats | None = inner.stats

    def probe(self, prefix: str) -> bool:
        return bool(self.list_tree(prefix).objects)

    def list_dir(self, prefix: str) -> Listing:
        raise NotImplementedError

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        raise NotImplementedError

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        raise NotImplementedError

    def get_head(self, key: str, limit: int) -> bytes:
        """The first ``limit`` bytes of ``key`` as this view shows it (the catalog reads metadata twins by
        name): the version its folder's listing holds, pinned to that ETag, or NotFound where the view has
        none. A dated view lists the folder for it; a cohort's listing is in memory."""
        folder = key[:key.rfind("/") + 1]
        for obj in self.list_dir(folder).objects:
            if obj.key == key:
                return self.get_range(key, 0, min(limit, obj.size), obj.etag) if obj.size else b""
        raise NotFound(f"{key}: not in this view")


class ChangeReport:
    """A cohort's read pinned to its manifest ETag, its failure made the cohort's own: EIO for an object
    changed since, ENOENT for one deleted, each with one ERROR line naming it per run of the daemon."""

    def __init__(self) -> None:
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def read(self, key: str, etag: str, read: Callable[[], T]) -> T:
        try:
            return read()
        except ObjectChanged:
            self._report(key, f"changed since the cohort was frozen (its ETag is no longer {etag})")
            raise FrozenObjectChanged(f"{key}: changed since the cohort was frozen") from None
        except NotFound:
            self._report(key, "deleted since the cohort was frozen")
            raise

    def _report(self, key: str, what: str) -> None:
        with self._lock:
            if key in self._reported:
                return
            self._reported.add(key)
        log.error("cohort object %s %s; it is not served", key, what)


# One for the daemon: a cohort mount's store and its cohorts folder name a failed object once between them.
REPORT = ChangeReport()


class FrozenStore(_Wrapped):
    def __init__(self, tree: FrozenTree, inner: ObjectStore) -> None:
        super().__init__(inner)
        self._tree = tree

    def list_dir(self, prefix: str) -> Listing:
        return self._tree.list_dir(prefix)

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        return self._tree.list_tree(prefix, start_after, end)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        return REPORT.read(key, etag, lambda: self._inner.get_range(key, start, end, etag))


class AsOfStore(_Wrapped):
    def __init__(self, inner: ObjectStore, as_of: float) -> None:
        super().__init__(inner)
        self._as_of = as_of

    def _older(self, listing: Listing) -> Listing:
        return Listing(listing.prefixes, tuple(obj for obj in listing.objects if obj.mtime <= self._as_of))

    def list_dir(self, prefix: str) -> Listing:
        return self._older(self._inner.list_dir(prefix))

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        return self._older(self._inner.list_tree(prefix, start_after, end))

    def probe(self, prefix: str) -> bool:
        return self._inner.probe(prefix)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        return self._inner.get_range(key, start, end, etag)
