"""What the filesystem asks of an object store, as a Protocol: the only seam between the layers above
(namespace, fetcher, views, catalog, cohorts) and a backend.

Everything above it sees :class:`~nccidfs.objects.ObjectInfo`, :class:`~nccidfs.objects.Listing` and the
errors of :mod:`nccidfs.errors`. An object's ``etag`` is an opaque version token: a read names the version
it wants by it, and a store refuses (:class:`~nccidfs.errors.ObjectChanged`) to serve another. Its
``md5``, when the backend knows it, is what the cache checks a whole object's bytes against. Listings
always use a prefix that ends in ``/``; the warehouse's IAM policy refuses any other form.
"""

from __future__ import annotations

from typing import Protocol

from nccidfs.objects import Listing
from nccidfs.store.stats import RequestStats


class ObjectStore(Protocol):
    """What the filesystem asks of the warehouse's object store."""

    @property
    def stats(self) -> RequestStats | None:
        """The counters ``nccidfs status`` and the metrics show; None for a store that counts nothing
        (a wrapper shares the counters of the store it wraps)."""

    def list_dir(self, prefix: str) -> Listing:
        """Every page of one level under ``prefix`` (which ends in ``/``)."""

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        """Every object at any depth under ``prefix``, in one flat paginated listing (no prefixes); only
        keys after ``start_after`` and before ``end`` when given (a run of sibling folders)."""

    def probe(self, prefix: str) -> bool:
        """True when ``prefix`` holds something; raises AccessDenied when it may not be listed."""

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        """Bytes ``[start, end)`` of the version of ``key`` whose ETag is ``etag``: ObjectChanged when that
        version is gone, NotFound when the key is, CorruptData when the range reaches past its end."""
