"""Latencies recorded as calls happen, for the daemon's Prometheus metrics (see :mod:`nccidfs.exposition`).

A call lands in one bucket of a fixed histogram under a lock, about a microsecond, beside the tens of
microseconds of the call itself. This module imports nothing beyond the standard library, so the store
and the FUSE adapter can record into it whether or not the daemon is ever scraped.
"""

from __future__ import annotations

import bisect
import errno
import threading
from collections import Counter

# Upper bounds (seconds) of the latency buckets: a cached call in under a millisecond, a GET of a large
# part in seconds, a call that ran into --timeout (30 s by default) in the last.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Latencies:
    """Calls by kind: how many, how long in all, and how many within each bound of LATENCY_BUCKETS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def observe(self, kind: str, seconds: float) -> None:
        place = bisect.bisect_left(LATENCY_BUCKETS, seconds)
        with self._lock:
            counts = self._buckets.get(kind)
            if counts is None:
                counts = self._buckets[kind] = [0] * (len(LATENCY_BUCKETS) + 1)
            counts[place] += 1
            self._sums[kind] = self._sums.get(kind, 0.0) + seconds

    def snapshot(self) -> dict[str, tuple[list[int], float]]:
        """Per kind: the count in each bucket (the last past every bound), and the sum of seconds."""
        with self._lock:
            return {kind: (list(counts), self._sums[kind]) for kind, counts in self._buckets.items()}


class CallStats:
    """Filesystem calls of the FUSE adapter: latencies by operation, and the errors returned, by errno."""

    def __init__(self) -> None:
        self.latencies = Latencies()
        self._lock = threading.Lock()
        self._errors: Counter[int] = Counter()

    def record(self, operation: str, seconds: float, code: int) -> None:
        self.latencies.observe(operation, seconds)
        if code:
            with self._lock:
                self._errors[code] += 1

    def errors(self) -> dict[str, int]:
        with self._lock:
            return {errno.errorcode.get(code, str(code)): count for code, count in self._errors.items()}


# The daemon's filesystem calls (one mount per process).
FILESYSTEM = CallStats()
