"""A clock that moves only when a test moves it, for code that waits on timers (see nccidfs.clock)."""

from __future__ import annotations

import threading
import time

# Any fixed start will do for the monotonic clock; the wall clock starts at the system's time, so that
# times written to disk (listing ages, mtimes) look like the real ones.
MONOTONIC_START = 1_000.0


class FakeClock:
    """Both clocks advance together, by :meth:`advance` or by a :meth:`sleep`, which returns at once."""

    def __init__(self) -> None:
        self._wall = time.time()
        self._monotonic = MONOTONIC_START
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def time(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._monotonic

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._wall += seconds
            self._monotonic += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
