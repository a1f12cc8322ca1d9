"""Time as the code that waits on it sees it: the one seam where tests put a clock they move by hand.

Listing ages are wall-clock seconds (they are kept in the on-disk index across restarts); timeouts and
back-offs are monotonic seconds. Code that waits on a timer takes a :class:`Clock` instead of calling
:mod:`time` itself, so a unit test can move time past a TTL or a timeout without sleeping through it.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch: for ages that outlive the process."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary start that never goes back: for timeouts within this process."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...


class RealClock:
    """The system's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


REAL_CLOCK: Clock = RealClock()
