"""One running mount: the filesystem of :mod:`nccidfs.assembly` served through FUSE, and the side
services of a live daemon.

Side services start only once the mount is up (in FUSE's ``init``), never before a fork: the control
socket (``refresh``, ``status``), signals (SIGHUP drops cached listings, or ends a demo whose terminal
closed; SIGUSR1 reopens the log file after logrotate; SIGINT, where the command took it, ends the
mount as SIGTERM does, and the command then exits 130), and raising the mount's read-ahead to 1 MiB
when running as root (it roughly doubles sequential reads on libfuse3).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nccidfs import __version__, cachedir, control, interrupts
from nccidfs.assembly import assemble
from nccidfs.config import Config
from nccidfs.control import ControlServer
from nccidfs.errors import NccidfsError
from nccidfs.log import reopen_log_file, strip_credentials
from nccidfs.objects import Listing
from nccidfs.store.protocol import ObjectStore

if TYPE_CHECKING:
    from nccidfs import exposition

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024
# The cyclic collector's first threshold (Python's default: 700 allocations). A walk allocates a tuple per
# key; at the default the collector ran about 1,700 times during a walk of 522,000 files and held the
# interpreter lock for 1.5 s of it, its full passes for up to 90 ms at once, stalling every other call.
GC_YOUNG_THRESHOLD = 20_000
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)


# glibc mallopt parameters, and the values set: few arenas (threads otherwise each keep freed listings in
# their own), blocks from 4 MiB mapped and so returned at once, free memory trimmed only past 64 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MALLOC_ARENAS = 2
MALLOC_MMAP_FROM = 4 * 1024 * 1024
MALLOC_TRIM_PAST = 64 * 1024 * 1024


def tune_malloc() -> None:
    """Keep the daemon's memory flat: few malloc arenas (threads otherwise each keep freed listings in
    their own), large blocks mapped and returned at once, and trimming only past 64 MiB."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
        libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_FROM)
        libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_PAST)
    except (OSError, AttributeError):
        log.debug("mallopt is not available; keeping the allocator's defaults")


def notify_systemd(message: bytes) -> None:
    """sd_notify without libsystemd: one datagram to $NOTIFY_SOCKET, when systemd started us (Type=notify)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # an abstract socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message, address)
    except OSError as error:
        log.warning("could not notify systemd: %s", error)


def lock_cache_dir(config: Config) -> cachedir.CacheLock:
    """Check, mark and lock the cache directory for this mount; taken before a fork, the lock passes to
    the child that serves the mount."""
    directory = cachedir.prepare(config.cache.directory)
    return cachedir.CacheLock(directory, {"pid": os.getpid(), "mountpoint": str(config.mount.mountpoint)})


class Daemon:
    """One mount's daemon: the assembled filesystem (``parts``), its side services and its lifecycle."""

    def __init__(self, config: Config, store: ObjectStore, folders: list[str] | Listing,
                 cache_lock: cachedir.CacheLock | None = None) -> None:
        self.config = config
        self.store = store
        self.started = time.time()
        tune_malloc()
        self.cache_lock = cache_lock or lock_cache_dir(config)
        self.cache_lock.record({"pid": os.getpid(), "mountpoint": str(config.mount.mountpoint)})
        self.parts = assemble(config, store, folders, self.cache_lock.path, self.status)
        self.control_path = config.cache.control_socket
        self._control: ControlServer | None = None
        self._record: Path | None = None
        self._metrics: exposition.Exposition | None = None
        self._exposition_lock = threading.Lock()
        self._signal_pipe = os.pipe()
        self._main_thread = threading.get_ident()
        self.hangup_ends = False  # a demo: SIGHUP (its terminal closed) ends it rather than refreshing
        self.stopped_by: int | None = None

    # -- status and commands ----------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        parts = self.parts
        cache = {**parts.cache.stats(), "hits": parts.fetcher.hits, "misses": parts.fetcher.misses}
        lookups = cache["hits"] + cache["misses"]
        stats = self.store.stats  # a cohort's store shares the S3 store's counters
        requests = stats.snapshot() if stats is not None else {}
        prefetch = parts.prefetcher
        return {
            "version": __version__, "pid": os.getpid(), "mountpoint": str(self.config.mount.mountpoint),
            "bucket": self.config.s3.bucket, "prefix": self.config.s3.prefix, "region": self.config.s3.region,
            "view": self.config.mount.view or None,
            "endpoint_url": strip_credentials(self.config.s3.endpoint_url or "") or None,
            "uptime_seconds": round(time.time() - self.started, 1),
            "control_socket": str(self.control_path),
            "cache": {**cache, "hit_ratio": round(cache["hits"] / lookups, 4) if lookups else None},
            "s3": requests,
            "listings": {"entries_in_memory": parts.namespace.cached_entries(), "directories_indexed":
                         parts.index.count(), "ttl_seconds": self.config.mount.listing_ttl},
            "open_files": parts.fs.open_count(),
            "in_flight": parts.fetcher.in_flight(),
            "prefetch": None if prefetch is None else {
                "objects": prefetch.objects_prefetched, "bytes": prefetch.bytes_prefetched},
            "derived": {"blocks_built": parts.generated.fetcher.misses, "blocks_cached": parts.generated.fetcher.hits},
        }

    def metrics(self) -> str:
        """The Prometheus text exposition of this daemon's figures."""
        return self._exposition().text()

    def _exposition(self) -> exposition.Exposition:
        from nccidfs import exposition

        with self._exposition_lock:
            if self._metrics is None:
                stats = self.store.stats  # a cohort's store shares the S3 store's counters
                s3 = stats.latencies if stats is not None else None
                self._metrics = exposition.Exposition(exposition.DaemonCollector(self.status, s3))
            return self._metrics

    def refresh(self, path: str = "/") -> int:
        dropped = self.parts.refresh(path)
        log.info("refresh %s: dropped %d cached listings", path, dropped)
        return dropped

    # -- lifecycle ------------------------------------------------------------------------------
    def on_mounted(self) -> None:
        """Called from FUSE's init: start the side services."""
        try:
            self.control_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # a runtime dir, maybe
            self._control = ControlServer(self.control_path, {
                "status": lambda request: self.status(),
                "refresh": lambda request: {"dropped": self.refresh(str(request.get("path") or "/"))},
                "catalog": lambda request: self.parts.catalog.start(request.get("folders"), again=True,
                                                                   relist=bool(request.get("relist"))),
                "catalog-progress": lambda request: self.parts.catalog.progress(),
                "metrics": lambda request: {"text": self.metrics()},
            })
            self._control.start()
            self._record = control.publish(self.config.mount.mountpoint, self.control_path)
        except (OSError, NccidfsError) as error:
            log.error("no control socket, so 'nccidfs status' and 'refresh' will not work: %s", error)
        self._serve_metrics()
        threading.Thread(target=self._on_signals, name="signals", daemon=True).start()
        threading.Thread(target=self._raise_read_ahead, name="read-ahead", daemon=True).start()
        notify_systemd(b"READY=1\nSTATUS=mounted " + str(self.config.mount.mountpoint).encode())

    def _serve_metrics(self) -> None:
        address = self.config.mount.metrics_addr
        if address is None:
            return
        try:
            self._exposition().serve(*address)
            log.info("metrics at http://%s:%d/metrics", *address)
        except OSError as error:
            log.error("metrics not served at %s:%d: %s", *address, error.strerror or error)

    def _on_signals(self) -> None:
        """Act on each signal number that Python's C-level handler writes to the wake-up pipe."""
        while True:
            for number in os.read(self._signal_pipe[0], 64):
                if number == signal.SIGUSR1:
                    reopen_log_file()
                elif not self.hangup_ends:
                    self.refresh("/")
                elif self.stopped_by is None:
                    self._stop(number)

    def _stop(self, number: int) -> None:
        """End the mount as libfuse ends it on SIGTERM (its handler, in the thread that runs its loop),
        remembering which signal asked for it."""
        log.info("%s received: unmounting", signal.Signals(number).name)
        self.stopped_by = number
        signal.pthread_kill(self._main_thread, signal.SIGTERM)

    def _raise_read_ahead(self) -> None:
        """Raise the mount's bdi read-ahead; needs root, and is skipped quietly without it."""
        if os.geteuid() != 0:
            return
        try:
            device = os.stat(self.config.mount.mountpoint).st_dev
            knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
            knob.write_text(str(READ_AHEAD_KB))
            log.info("read-ahead of the mount raised to %d KiB", READ_AHEAD_KB)
        except OSError as error:
            log.info("could not raise the mount's read-ahead: %s", error)

    def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Mount in the foreground of this process and serve until unmounted or signalled."""
        from nccidfs import fuseops

        def ready() -> None:
            self.on_mounted()
            if on_ready is not None:
                on_ready()

        # The main thread stays inside libfuse, so a Python handler never runs; but its C-level part writes
        # the signal number to the wake-up pipe, which a thread reads. Having a handler also stops libfuse
        # from installing its own, which would end the mount on SIGHUP. SIGTERM is left to libfuse, and
        # SIGINT comes through nccidfs.interrupts where the command took it.
        self._main_thread = threading.get_ident()
        for number in HANDLED_SIGNALS:
            signal.signal(number, lambda signum, frame: None)
        interrupts.on_interrupt(lambda: self._stop(signal.SIGINT))
        os.set_blocking(self._signal_pipe[1], False)
        signal.set_wakeup_fd(self._signal_pipe[1], warn_on_full_buffer=False)
        try:
            mount = self.config.mount
            operations = fuseops.FuseOperations(self.parts.fs, ready, self.config.s3.deadline, uid=mount.uid,
                                                gid=mount.gid, file_mode=mount.file_mode, dir_mode=mount.dir_mode)
            _settle_collector()
            fuseops.run_mount(operations, mount)
        finally:
            interrupts.on_interrupt(None)
            self.shutdown()
        log.info("unmounted %s", self.config.mount.mountpoint)
        if self.stopped_by == signal.SIGINT:
            raise KeyboardInterrupt  # the command exits 130, as for Ctrl-C anywhere else

    def shutdown(self) -> None:
        """Withdraw the side services, shut the filesystem's parts down and let the cache directory go."""
        notify_systemd(b"STOPPING=1")
        if self._record is not None:
            control.withdraw(self._record)
        if self._control is not None:
            self._control.close()
        self.parts.close()
        self.cache_lock.release()


def _settle_collector() -> None:
    """Leave what start-up built (the SDK's service models, modules, the client) out of the collector's
    passes, since it lives as long as the daemon, and collect young objects less often: together they
    cut its time during a walk from 1.5 s to about 0.1 s, and its longest pause from 90 to 38 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
