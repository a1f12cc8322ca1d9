"""Counters of a store's requests, bytes and errors, shared by ``nccidfs status`` and the metrics."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from nccidfs.metrics import Latencies

# The kinds of request a store counts, by the names of S3's operations, which ``nccidfs status`` and the
# metrics have always shown: a listing page and a GET of a byte range.
LIST = "ListObjectsV2"
GET = "GetObject"


class RequestStats:
    """Thread-safe counters of requests, bytes and errors, for ``status`` and the benchmark."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.bytes_fetched = 0
        self.latencies = Latencies()  # for the daemon's metrics

    def record(self, kind: str, nbytes: int = 0, error: str | None = None, seconds: float | None = None) -> None:
        """Count one request of ``kind`` (and its bytes, or its error code); ``seconds`` also times it."""
        if seconds is not None:
            self.latencies.observe(kind, seconds)
        with self._lock:
            self.requests[kind] += 1
            self.bytes_fetched += nbytes
            if error:
                self.errors[error] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "errors": dict(self.errors),
                    "bytes_fetched": self.bytes_fetched}
