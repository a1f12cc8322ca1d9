"""A deadline per FUSE call, so that one call never waits on S3 longer than ``--timeout`` in all.

A lookup may need two listings and a read several parts; each waits only for what is left of the
call's deadline, not a fresh timeout of its own. The adapter opens the deadline around each call; code
below asks :func:`remaining`. Work started for the call (a GET, a listing) goes on in its pool after
the caller gives up, and its result is kept for the next caller.
"""

from __future__ import annotations

import threading
import time

_local = threading.local()


class bounded:  # noqa: N801 - used as a function: ``with deadline.bounded(30):``
    """Give the calling thread ``seconds`` for everything inside; nested calls keep the outer deadline.

    A class rather than a generator-based context manager: it wraps every FUSE call, so its cost counts.
    """

    __slots__ = ("_seconds", "_outermost")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._outermost = False

    def __enter__(self) -> None:
        if getattr(_local, "until", None) is None:
            _local.until = time.monotonic() + self._seconds
            self._outermost = True

    def __exit__(self, *exc: object) -> None:
        if self._outermost:
            _local.until = None


def remaining(default: float) -> float:
    """Seconds left for the current call, or ``default`` outside a bounded call (background work)."""
    until: float | None = getattr(_local, "until", None)
    if until is None:
        return default
    return max(0.0, until - time.monotonic())
