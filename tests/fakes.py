"""In-memory stores at the storage seam, for unit tests of the namespace, cache and fetcher."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from nccidfs.errors import AccessDenied, NotFound, ObjectChanged, TransientError
from nccidfs.index import ListingIndex
from nccidfs.objects import Listing, ObjectInfo


class MemoryStore:
    """A dict of key -> bytes behaving like the warehouse: delimiter listings, ranged GETs pinned by ETag."""

    def __init__(self, objects: dict[str, bytes] | None = None, denied_prefixes: tuple[str, ...] = (),
                 latency: float = 0.0, list_latency: float = 0.0) -> None:
        self.objects = dict(objects or {})
        self.denied_prefixes = denied_prefixes
        self.latency = latency
        self.list_latency = list_latency
        self.requests: Counter[str] = Counter()
        self.ranges: list[tuple[str, int, int]] = []
        self._lock = threading.Lock()

    def info(self, key: str) -> ObjectInfo:
        body = self.objects[key]
        return ObjectInfo(key, len(body), hashlib.md5(body).hexdigest(), 1_600_000_000.0)

    def _check(self, prefix: str) -> None:
        if self.list_latency:
            time.sleep(self.list_latency)
        if prefix in self.denied_prefixes:
            raise AccessDenied(f"list {prefix}")

    def list_dir(self, prefix: str) -> Listing:
        self._check(prefix)
        with self._lock:
            self.requests["list"] += 1
        prefixes: set[str] = set()
        objects = []
        for key in sorted(self.objects):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if "/" in rest:
                prefixes.add(prefix + rest.split("/", 1)[0] + "/")
            else:
                objects.append(self.info(key))
        return Listing(tuple(sorted(prefixes)), tuple(objects))

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        self._check(prefix)
        with self._lock:
            self.requests["list"] += 1
        return Listing((), tuple(self.info(key) for key in sorted(self.objects) if key.startswith(prefix)
                                 and key > start_after and (end is None or key < end)))

    def probe(self, prefix: str) -> bool:
        self._check(prefix)
        return any(key.startswith(prefix) for key in self.objects)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.requests["get"] += 1
            self.ranges.append((key, start, end))
        if key not in self.objects:
            raise NotFound(key)
        if self.info(key).etag != etag:
            raise ObjectChanged(key)
        return self.objects[key][start:end]

    def get_head(self, key: str, limit: int) -> bytes:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.requests["get"] += 1
            self.ranges.append((key, 0, limit))
        if key not in self.objects:
            raise NotFound(key)
        return self.objects[key][:limit]


def scratch_index() -> ListingIndex:
    """An empty listing index in a directory of its own, for namespaces built outside a tmp_path."""
    return ListingIndex(Path(tempfile.mkdtemp(prefix="nccidfs-index-")) / "index.db", {})


class FailingStore(MemoryStore):
    """A MemoryStore with an outage switch: every request then fails (``down``) or hangs (``stall``)."""

    def __init__(self, objects: dict[str, bytes] | None = None, **kwargs: object) -> None:
        super().__init__(objects, **kwargs)  # type: ignore[arg-type]
        self.down = False
        self.stall = 0.0

    def _outage(self, what: str) -> None:
        if self.stall:
            time.sleep(self.stall)
        if self.down:
            raise TransientError(f"{what}: 503 SlowDown")

    def list_dir(self, prefix: str) -> Listing:
        self._outage(f"list {prefix}")
        return super().list_dir(prefix)

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        self._outage(f"list {prefix}")
        return super().list_tree(prefix, start_after, end)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        self._outage(f"get {key}")
        return super().get_range(key, start, end, etag)

    def get_head(self, key: str, limit: int) -> bytes:
        self._outage(f"get {key}")
        return super().get_head(key, limit)
