"""Which cached objects make room first: least recently used, in the same order after a restart.

A use is a pin: an open, a prefetch or a generated file reading the object. The order is kept in
memory, and on disk as each map file's modification time, from which a restart rebuilds it. Writing
that time costs one ``utime``, so a pin records it at most once per :data:`STAMP_INTERVAL` per object;
the order after a restart is therefore exact to that interval. A map rewritten by a write carries the
last use too (the cache stamps it), so a write is not a use: an object read long ago and written to by
a read-ahead since is still old.

A policy holds no lock of its own: :class:`~nccidfs.cache.DiskCache` calls it under its index lock. A
new policy (by size, by frequency) is another class with the methods of :class:`EvictionPolicy`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

# Seconds between two recordings on disk of one object's last use.
STAMP_INTERVAL = 60.0


class EvictionPolicy(Protocol):
    def admit(self, digest: str, used_at: float | None = None) -> None:
        """Track an entry: a new one (used now) or one found on disk at start-up (used at ``used_at``)."""

    def used(self, digest: str) -> float | None:
        """Record a use; returns the time to record on disk when that is due, else None."""

    def last_used(self, digest: str) -> float:
        """When the entry was last used: the time a rewritten map must keep."""

    def forget(self, digest: str) -> None:
        """Stop tracking an evicted entry."""

    def victims(self) -> list[str]:
        """Every tracked entry, the first to evict first."""


class LruPolicy:
    """Least recently used first, its recency kept across restarts by the maps' modification times."""

    def __init__(self, stamp_interval: float = STAMP_INTERVAL, clock: Callable[[], float] = time.time) -> None:
        self._stamp_interval = stamp_interval
        self._clock = clock
        self._used: OrderedDict[str, float] = OrderedDict()  # digest -> last use, oldest first
        self._stamped: dict[str, float] = {}  # digest -> the last use recorded on disk

    def admit(self, digest: str, used_at: float | None = None) -> None:
        """Found on disk (``used_at``, admitted oldest first) or new (now, with its first map to come)."""
        when = self._clock() if used_at is None else used_at
        self._used[digest] = self._stamped[digest] = when
        self._used.move_to_end(digest)

    def used(self, digest: str) -> float | None:
        now = self._clock()
        self._used[digest] = now
        self._used.move_to_end(digest)
        if now - self._stamped.get(digest, 0.0) < self._stamp_interval:
            return None
        self._stamped[digest] = now
        return now

    def last_used(self, digest: str) -> float:
        return self._used.get(digest, self._clock())

    def forget(self, digest: str) -> None:
        self._used.pop(digest, None)
        self._stamped.pop(digest, None)

    def victims(self) -> list[str]:
        return list(self._used)
