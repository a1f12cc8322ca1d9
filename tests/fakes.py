"""Stores at the storage seam for unit tests of the namespace, cache and fetcher: an in-memory one, kept
honest against the S3 store by tests/conformance, and a wrapper that injects faults into any store."""

from __future__ import annotations

import hashlib
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nccidfs.errors import AccessDenied, CorruptData, NccidfsError, NotFound, ObjectChanged, TransientError
from nccidfs.index import ListingIndex
from nccidfs.objects import Listing, ObjectInfo
from nccidfs.store.protocol import ObjectStore
from nccidfs.store.stats import GET, LIST, RequestStats

# The time every object of a MemoryStore was last modified.
MTIME = 1_600_000_000.0


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
        self.stats = RequestStats()
        # Keys uploaded in this many parts: their ETag is then of S3's multipart form and no MD5.
        self.parts: dict[str, int] = {}
        self._lock = threading.Lock()

    def info(self, key: str) -> ObjectInfo:
        """An object as a listing gives it; its ETag is its MD5, as an S3 single-part upload's, unless it
        was uploaded in parts."""
        body = self.objects[key]
        md5 = hashlib.md5(body).hexdigest()
        parts = self.parts.get(key, 1)
        return ObjectInfo(key, len(body), f"{md5}-{parts}", MTIME) if parts > 1 else ObjectInfo(
            key, len(body), md5, MTIME, md5)

    def _check(self, prefix: str) -> None:
        if self.list_latency:
            time.sleep(self.list_latency)
        if prefix in self.denied_prefixes:
            raise AccessDenied(f"list {prefix}")
        self.stats.record(LIST)

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
        if end > len(self.objects[key]):
            raise CorruptData(f"get {key}: the range reaches past the object's end")
        data = self.objects[key][start:end]
        self.stats.record(GET, len(data))
        return data

    def get_head(self, key: str, limit: int) -> bytes:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.requests["get"] += 1
            self.ranges.append((key, 0, limit))
        if key not in self.objects:
            raise NotFound(key)
        data = self.objects[key][:limit]
        self.stats.record(GET, len(data))
        return data


def scratch_index() -> ListingIndex:
    """An empty listing index in a directory of its own, for namespaces built outside a tmp_path."""
    return ListingIndex(Path(tempfile.mkdtemp(prefix="nccidfs-index-")) / "index.db", {})


OPERATIONS = ("list", "probe", "get")


@dataclass
class Fault:
    """Requests of ``op`` (any when None) for keys or prefixes starting with ``key`` first hang ``stall``
    seconds, then fail with ``error`` (when given); ``times`` requests in all, or every one when None.
    ``hits`` counts the requests it met."""

    op: str | None = None
    key: str = ""
    error: type[NccidfsError] | None = TransientError
    stall: float = 0.0
    times: int | None = None
    hits: int = 0

    def meets(self, op: str, key: str) -> bool:
        return self.op in (None, op) and key.startswith(self.key) and (self.times is None or self.hits < self.times)


class FailingStore:
    """Any store with faults injected at the seam: per operation and per key (:meth:`fail`), or for every
    request at once: ``down`` (each fails, as in a 503 outage) and ``stall`` (each first hangs).

    A dict of objects (with MemoryStore's keyword arguments) wraps a new :class:`MemoryStore`. The wrapped
    store's own attributes (a MemoryStore's ``objects``, ``requests`` and ``ranges``) are read through this one.
    """

    def __init__(self, inner: ObjectStore | dict[str, bytes] | None = None, **memory: Any) -> None:
        wrapped = inner is None or isinstance(inner, dict)
        self.inner: Any = MemoryStore(inner, **memory) if wrapped else inner
        self.down = False
        self.stall = 0.0
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet: no recursion through this method
            raise AttributeError(name)
        return getattr(self.inner, name)

    def fail(self, op: str | None = None, key: str = "", error: type[NccidfsError] | None = TransientError,
             stall: float = 0.0, times: int | None = None) -> Fault:
        """Add a fault (see :class:`Fault`); the earliest added that meets a request decides it."""
        if op is not None and op not in OPERATIONS:
            raise ValueError(f"{op!r} is none of {OPERATIONS}")
        fault = Fault(op, key, error, stall, times)
        with self._lock:
            self.faults.append(fault)
        return fault

    def _outage(self, op: str, key: str, what: str) -> None:
        with self._lock:
            fault = next((f for f in self.faults if f.meets(op, key)), None)
            if fault is not None:
                fault.hits += 1
        stall = self.stall + (fault.stall if fault else 0.0)
        if stall:
            time.sleep(stall)
        if self.down:
            raise TransientError(f"{what}: 503 SlowDown")
        if fault is not None and fault.error is not None:
            raise fault.error(f"{what}: injected {fault.error.__name__}")

    @property
    def stats(self) -> RequestStats | None:
        stats: RequestStats | None = self.inner.stats
        return stats

    def list_dir(self, prefix: str) -> Listing:
        self._outage("list", prefix, f"list {prefix}")
        listing: Listing = self.inner.list_dir(prefix)
        return listing

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        self._outage("list", prefix, f"list {prefix}")
        listing: Listing = self.inner.list_tree(prefix, start_after, end)
        return listing

    def probe(self, prefix: str) -> bool:
        self._outage("probe", prefix, f"probe {prefix}")
        return bool(self.inner.probe(prefix))

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        self._outage("get", key, f"get {key}")
        data: bytes = self.inner.get_range(key, start, end, etag)
        return data

    def get_head(self, key: str, limit: int) -> bytes:
        self._outage("get", key, f"get {key}")
        data: bytes = self.inner.get_head(key, limit)
        return data
