"""Ctrl-C for a command that mounts in the foreground (``-f``, ``demo``): taken by one thread, so that the
command can exit 130 for it and 0 for SIGTERM.

libfuse ends its loop alike on SIGINT, SIGTERM and SIGHUP and cannot say which came, and mfusepy hands it
SIGINT whatever handler Python had. So SIGINT is blocked in every thread from the start, before any thread
exists, and one thread waits for it: before the mount is up it raises KeyboardInterrupt in the main thread
as Python would; once a daemon serves, that daemon ends the mount and remembers why.
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Callable

_handler: Callable[[], None] | None = None


def take_interrupts() -> None:
    """Block SIGINT in this (main) thread and every thread started after it; one thread acts on it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    threading.Thread(target=_wait, name="interrupts", daemon=True).start()


def on_interrupt(handler: Callable[[], None] | None) -> None:
    """What Ctrl-C does from now on; None: KeyboardInterrupt in the main thread."""
    global _handler
    _handler = handler


def _wait() -> None:
    while True:
        signal.sigwait({signal.SIGINT})
        (_handler or _thread.interrupt_main)()
