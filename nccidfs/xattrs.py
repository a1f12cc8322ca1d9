"""DICOM tags of a mounted ``.dcm`` as ``user.dicom.<Keyword>`` extended attributes, without downloading it.

The tags come from the image's ``-metadata`` JSON twin (a few KiB, cached like any file). Where there is
no readable twin, or it gives no tags (it is no DICOM JSON object), the image's header is read with
ranged reads that start at 64 KiB and double until the header is whole. Parsed tags are kept in a small
LRU keyed by the object version.

Each request's work is bounded: a twin larger than :data:`MAX_TWIN_BYTES` is not read, and a header is
read at most :data:`MAX_HEADER_BYTES` deep (and, if deflated, inflated at most
:data:`~nccidfs.dicom.MAX_INFLATED_HEADER_BYTES`). Past either bound the image has no tags from that
source, and the log says so once per object version.
"""

from __future__ import annotations

import logging
import threading

from cachetools import LRUCache

from nccidfs.dicom import tags_from_dicom_header, tags_from_metadata_json
from nccidfs.errors import AccessDenied, NotFound
from nccidfs.fetch import Fetcher
from nccidfs.layout import twin_of
from nccidfs.namespace import Namespace
from nccidfs.objects import ObjectInfo

log = logging.getLogger(__name__)

FIRST_HEADER_READ = 64 * 1024
# A warehouse twin is a few KiB and a header a few tens of KiB; anything far larger is not worth a download.
MAX_TWIN_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 1024 * 1024
# Images whose parsed tags are kept (a few KiB each).
REMEMBERED_TAGS = 4096


class TagReader:
    """An image's tags from its twin, else from its header; kept per object version."""

    def __init__(self, namespace: Namespace, fetcher: Fetcher) -> None:
        self._namespace = namespace
        self._fetcher = fetcher
        self._lock = threading.Lock()
        self._tags: LRUCache[tuple[str, str], dict[str, str]] = LRUCache(maxsize=REMEMBERED_TAGS)

    def tags(self, path: str, obj: ObjectInfo) -> dict[str, str]:
        """The image's tags; an empty dict for files that are not DICOM images."""
        twin = twin_of(path)
        if twin is None:
            return {}
        with self._lock:
            cached = self._tags.get((obj.key, obj.etag))
        if cached is not None:
            return cached
        tags = self._from_twin(twin)
        if not tags:  # no twin, or one that is no DICOM JSON object (null, [], nested past parsing)
            tags = self._from_header(obj)
        with self._lock:
            self._tags[(obj.key, obj.etag)] = tags
        return tags

    def _read(self, obj: ObjectInfo, size: int) -> bytes:
        return self._fetcher.read_start(obj, size)

    def _from_twin(self, twin: str) -> dict[str, str] | None:
        try:
            entry = self._namespace.lookup(twin)
        except (NotFound, AccessDenied):
            return None
        if entry.obj is None:
            return None
        if entry.obj.size > MAX_TWIN_BYTES:
            log.warning("%s: metadata twin of %d bytes is over the %d byte limit; not read for tags", twin,
                        entry.obj.size, MAX_TWIN_BYTES)
            return None
        return tags_from_metadata_json(self._read(entry.obj, entry.obj.size))

    def _from_header(self, obj: ObjectInfo) -> dict[str, str]:
        size = FIRST_HEADER_READ
        while True:
            size = min(size, obj.size, MAX_HEADER_BYTES)
            tags = tags_from_dicom_header(self._read(obj, size), complete=size == obj.size)
            if tags is not None:
                return tags
            if size == MAX_HEADER_BYTES:
                log.warning("%s: no DICOM header within its first %d bytes; no tags", obj.key, MAX_HEADER_BYTES)
                return {}
            size *= 2
