"""A deadline per FUSE call, so that one call never waits on S3 longer than ``--timeout`` in all.

A lookup may need two listings and a read several parts; each waits only for what is left of the
call's deadline, not a fresh timeout of its own. The adapter opens the deadline around each call; code
below asks :func:`remaining`. Work started for the call (a GET, a listing) goes on in its pool after
the caller gives up, and its result is kept for the next caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Give the calling thread ``seconds`` for everything inside; nested calls keep the outer deadline."""
    outer: float | None = getattr(_local, "until", None)
    if outer is None:
        _local.until = time.monotonic() + seconds
    try:
        yield
    finally:
        if outer is None:
            _local.until = None


def remaining(default: float) -> float:
    """Seconds left for the current call, or ``default`` outside a bounded call (background work)."""
    until: float | None = getattr(_local, "until", None)
    if until is None:
        return default
    return max(0.0, until - time.monotonic())
