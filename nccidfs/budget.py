"""A memory budget for work whose size is known before it starts: decoding images for the derived views.

Each builder reserves what its work will take before it starts and gives it back when done, so the sum of
the work under way never passes the budget, however many readers open derived files at once. A builder
that would need more than the whole budget is refused outright; one that does not fit yet waits (within
what is left of its FUSE call) for others to finish.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from nccidfs import deadline
from nccidfs.errors import TransientError


class MemoryBudget:
    def __init__(self, total: int, timeout: float) -> None:
        self.total = total
        self._timeout = timeout
        self._used = 0
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, size: int, what: str) -> Iterator[None]:
        """Hold ``size`` bytes of the budget for the block. Raises ValueError when ``size`` is over the
        whole budget, TransientError when it does not fit within the call's deadline."""
        if size > self.total:
            raise ValueError(f"{what} needs about {size} bytes of memory, over the {self.total} allowed")
        with self._changed:
            if not self._changed.wait_for(lambda: self._used + size <= self.total,
                                          deadline.remaining(self._timeout)):
                raise TransientError(f"{what}: no memory to decode within {self._timeout:g}s")
            self._used += size
        try:
            yield
        finally:
            with self._changed:
                self._used -= size
                self._changed.notify_all()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used
