"""Mounted fault tests: a real nccidfs daemon reads from moto through FaultProxy, which breaks S3 on purpose.

Whatever S3 does, a read through the mount must return exactly the object's bytes or fail (EIO, or
EACCES/ENOENT for a refusal), within the daemon's deadline plus a margin, and never hang. Every read runs
in a thread with a timeout so that a hang fails the test instead of freezing it, and each test prints
``FAULTS: <test> reads=.. wrong=.. hangs=.. max_eio_s=..`` (collect them with ``pytest -s``).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.faultproxy import FaultProxy
from tests.mounting import MountedDaemon, create_bucket, daemon_env

SERIES = "ct/Covid1/1.2/1.3"
IMG0, IMG1, IMG2, IMG3 = (f"{SERIES}/img{i}.dcm" for i in range(4))
# Alone in its series: opening a file of SERIES (which may prefetch the whole series) leaves it uncached.
LONE = "ct/Covid2/2.4/2.5/img0.dcm"
STATUS = "data/Covid1/status_2020-05-01.json"
SIZES = {IMG0: 64 * 1024, IMG1: 300 * 1024 + 17, IMG2: 1024 * 1024 + 5, IMG3: 3 * 1024 * 1024 - 3,
         LONE: 700 * 1024 + 3}
FILES = {name: random.Random(name).randbytes(size) for name, size in SIZES.items()}
FILES[STATUS] = b'{"Covid1": {"status": "positive", "date": "2020-05-01"}}\n'
# A refusal (403/404) is not worth retrying: it must reach the reader this fast.
REFUSAL_BOUND_S = 5.0


def deadline_option() -> tuple[list[str], float]:
    """A shorter S3 deadline when the daemon has a flag for it, else its 30 s default."""
    help_text = subprocess.run([sys.executable, "-m", "nccidfs", "--help"], capture_output=True, text=True,
                               env=daemon_env(), check=True).stdout
    for flag in ("--deadline", "--timeout"):
        if re.search(rf"{flag}\b", help_text):
            return [flag, "10"], 10.0
    return [], 30.0


DEADLINE_ARGS, DEADLINE_S = deadline_option()
EIO_BOUND_S = DEADLINE_S + 5
# Past this a read counts as hung; well beyond the bound, so a slow EIO is measured rather than cut off.
HANG_S = 2 * DEADLINE_S + 15


def read_file(path: Path) -> bytes:
    """The whole file, asking the kernel to drop its cached pages first so that the daemon answers."""
    with open(path, "rb", buffering=0) as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return handle.readall()


def pread(path: Path, offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)``, dropping the kernel's cached pages of that range first."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(repr=False)
class Outcome:
    """What one bounded call through the mount gave: data, or an errno, or nothing in time (hung)."""

    data: Any = None
    error: int | None = None
    seconds: float = 0.0
    hung: bool = False

    def __repr__(self) -> str:
        if self.hung:
            return f"<hung for {self.seconds:.1f}s>"
        if self.error is not None:
            return f"<{errno.errorcode.get(self.error, self.error)} after {self.seconds:.1f}s>"
        size = f"{len(self.data)} bytes" if isinstance(self.data, bytes) else repr(self.data)
        return f"<{size} after {self.seconds:.1f}s>"


class FaultLog:
    """Runs calls through the mount with a timeout and tallies reads, wrong results, hangs and slowest EIO."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.reads = self.wrong = self.hangs = 0
        self.max_eio_s = 0.0
        self.errors: Counter[str] = Counter()
        self.notes: dict[str, object] = {}
        self._lock = threading.Lock()

    def run_many(self, calls: Sequence[tuple[Callable[[], Any], Sequence[Any]]],
                 timeout: float = HANG_S) -> list[Outcome]:
        """Run every call in its own thread at once; a result not among its accepted values is wrong."""
        boxes: list[list[Outcome | BaseException]] = [[] for _ in calls]

        def target(call: Callable[[], Any], box: list[Outcome | BaseException]) -> None:
            started = time.monotonic()
            try:
                data = call()
            except OSError as error:
                box.append(Outcome(error=error.errno, seconds=time.monotonic() - started))
            except BaseException as error:  # a bug in the test: re-raised below
                box.append(error)
            else:
                box.append(Outcome(data=data, seconds=time.monotonic() - started))

        threads = [threading.Thread(target=target, args=(call, box), daemon=True)
                   for (call, _), box in zip(calls, boxes, strict=True)]
        for thread in threads:
            thread.start()
        stop_at = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, stop_at - time.monotonic()))
        outcomes: list[Outcome] = []
        for (_, accept), box in zip(calls, boxes, strict=True):
            result = box[0] if box else Outcome(seconds=timeout, hung=True)
            if isinstance(result, BaseException):
                raise result
            self._tally(result, accept)
            outcomes.append(result)
        return outcomes

    def run(self, call: Callable[[], Any], *accept: Any, timeout: float = HANG_S) -> Outcome:
        return self.run_many([(call, accept)], timeout)[0]

    def read(self, path: Path, *accept: bytes, timeout: float = HANG_S) -> Outcome:
        return self.run(lambda: read_file(path), *accept, timeout=timeout)

    def _tally(self, outcome: Outcome, accept: Sequence[Any]) -> None:
        with self._lock:
            self.reads += 1
            self.hangs += outcome.hung
            if outcome.error is not None:
                self.errors[errno.errorcode.get(outcome.error, str(outcome.error))] += 1
                if outcome.error == errno.EIO:
                    self.max_eio_s = max(self.max_eio_s, outcome.seconds)
            elif not outcome.hung and outcome.data not in accept:
                self.wrong += 1

    def summary(self) -> str:
        extra = "".join(f" {key}={value}" for key, value in {"errors": dict(self.errors), **self.notes}.items())
        return (f"FAULTS: {self.name} reads={self.reads} wrong={self.wrong} hangs={self.hangs} "
                f"max_eio_s={self.max_eio_s:.1f}{extra}")


@dataclass
class Rig:
    """A seeded bucket on moto, the proxy in front of it, and the daemon mounted through the proxy."""

    proxy: FaultProxy
    daemon: MountedDaemon
    s3: Any  # boto3 client straight to moto, bypassing the proxy
    bucket: str
    workdir: Path

    def path(self, name: str) -> Path:
        return self.daemon.mountpoint / name

    def remount(self, log_name: str) -> MountedDaemon:
        """A new daemon on the same mount point and cache directory (not yet started)."""
        return mount_daemon(self.proxy, self.workdir, self.bucket, log_name)


def key(name: str) -> str:
    return f"training/{name}"


def mount_daemon(proxy: FaultProxy, workdir: Path, bucket: str, log_name: str) -> MountedDaemon:
    return MountedDaemon(workdir / "mnt", proxy.url, workdir / "cache", workdir / log_name, bucket=bucket,
                         extra=DEADLINE_ARGS)


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> Iterator[FaultLog]:
    log = FaultLog(request.node.name)
    yield log
    print(f"\n{log.summary()}")


@pytest.fixture
def rig(s3_endpoint: str, bucket_name: str, workdir: Path) -> Iterator[Rig]:
    s3 = create_bucket(s3_endpoint, bucket_name, [(key(name), body) for name, body in FILES.items()])
    with FaultProxy(s3_endpoint) as proxy, mount_daemon(proxy, workdir, bucket_name, "daemon.log") as daemon:
        try:
            yield Rig(proxy, daemon, s3, bucket_name, workdir)
        finally:
            proxy.stop()  # cut stalled requests first, so that the daemon can exit at once


def assert_all_files_read_back(rig: Rig, faults: FaultLog) -> None:
    for name, body in FILES.items():
        outcome = faults.read(rig.path(name), body)
        assert outcome.data == body, f"{name}: {outcome}"


@pytest.mark.fuse
@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_transient_errors_are_retried(rig: Rig, faults: FaultLog, status: int, code: str) -> None:
    rule = rig.proxy.fail(status, code, times=2, op="get")
    assert_all_files_read_back(rig, faults)
    assert rule.hits == 2


@pytest.mark.fuse
@pytest.mark.parametrize("fault", ["reset", "truncate"])
def test_broken_body_is_fetched_again(rig: Rig, faults: FaultLog, fault: str) -> None:
    if fault == "reset":
        rule = rig.proxy.reset_after(10_000, times=1, op="get")
    else:
        rule = rig.proxy.truncate(times=1, op="get")
    assert_all_files_read_back(rig, faults)
    assert rule.hits == 1


@pytest.mark.fuse
@pytest.mark.parametrize(("status", "code"), [(500, "InternalError"), (503, "SlowDown")])
def test_persistent_error_is_eio_and_the_mount_survives(rig: Rig, faults: FaultLog, status: int,
                                                        code: str) -> None:
    rig.proxy.fail(status, code, key=key(IMG2))  # before any read, so that no prefetch caches it
    assert faults.read(rig.path(IMG0), FILES[IMG0]).data == FILES[IMG0]
    rig.proxy.reset_counts()
    outcome = faults.read(rig.path(IMG2), FILES[IMG2])
    faults.notes["gets"] = rig.proxy.counts()["GetObject(range)"]
    assert outcome.error == errno.EIO, outcome
    assert outcome.seconds < EIO_BOUND_S
    for name in (IMG0, LONE):  # one cached, one not
        assert faults.read(rig.path(name), FILES[name]).data == FILES[name]


@pytest.mark.fuse
def test_stall_beyond_the_deadline_is_eio(rig: Rig, faults: FaultLog) -> None:
    rig.proxy.stall(HANG_S + 60, key=key(IMG2))
    outcome = faults.read(rig.path(IMG2), FILES[IMG2])
    assert not outcome.hung, f"no answer within {HANG_S:.0f}s"
    assert outcome.error == errno.EIO, outcome
    assert outcome.seconds < EIO_BOUND_S
    assert faults.read(rig.path(LONE), FILES[LONE]).data == FILES[LONE]


@pytest.mark.fuse
def test_dead_endpoint_serves_cached_files(rig: Rig, faults: FaultLog) -> None:
    cached = (IMG0, IMG2, STATUS)
    for name in cached:
        assert faults.read(rig.path(name), FILES[name]).data == FILES[name]
    assert os.stat(rig.path(LONE)).st_size == len(FILES[LONE])  # listed, so only its GETs can fail
    rig.proxy.dead()
    for name in cached:
        outcome = faults.read(rig.path(name), FILES[name])
        assert outcome.data == FILES[name], f"{name}: {outcome}"
    outcome = faults.read(rig.path(LONE), FILES[LONE])
    assert outcome.error == errno.EIO, outcome
    assert outcome.seconds < EIO_BOUND_S


@pytest.mark.fuse
def test_failed_listing_is_eio_not_empty(rig: Rig, faults: FaultLog) -> None:
    # A patient's folder is listed in one flat listing of its whole subtree: make that listing fail.
    directory = rig.path("ct/Covid1")
    rule = rig.proxy.fail(500, "InternalError", op="list", pattern=r"^training/ct/Covid1/$")
    outcome = faults.run(lambda: os.listdir(directory), ["1.2"])
    assert outcome.error == errno.EIO, outcome
    assert outcome.seconds < EIO_BOUND_S
    assert rule.hits > 0
    rig.proxy.clear()
    assert faults.run(lambda: os.listdir(directory), ["1.2"]).data == ["1.2"]


@pytest.mark.fuse
@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (404, "NoSuchKey")])
def test_refused_object_fails_fast(rig: Rig, faults: FaultLog, status: int, code: str) -> None:
    rig.proxy.fail(status, code, key=key(IMG1))
    outcome = faults.read(rig.path(IMG1), FILES[IMG1])
    assert outcome.error in (errno.EIO, errno.EACCES, errno.ENOENT), outcome
    assert outcome.seconds < REFUSAL_BOUND_S


@pytest.mark.fuse
@pytest.mark.parametrize("factor", [2.0, 0.5], ids=["longer", "shorter"])
def test_replaced_object_is_old_or_new_never_mixed(rig: Rig, faults: FaultLog, factor: float) -> None:
    old = FILES[IMG1]
    new = random.Random(f"new {factor}").randbytes(int(len(old) * factor))
    assert os.stat(rig.path(IMG1)).st_size == len(old)
    assert faults.run(lambda: pread(rig.path(IMG1), 0, 64 * 1024), old[:64 * 1024]).data == old[:64 * 1024]
    rig.s3.put_object(Bucket=rig.bucket, Key=key(IMG1), Body=new)
    path, window = rig.path(IMG1), slice(128 * 1024, 256 * 1024)
    probes = [(partial(read_file, path), old, new), (partial(read_file, path), old, new),
              (partial(pread, path, window.start, window.stop - window.start), old[window], new[window])]
    results = faults.notes["results"] = [describe(faults.run(call, *versions), *versions)
                                         for call, *versions in probes]
    mixed = [result for result in results if result not in ("old", "new", *errno.errorcode.values())]
    assert not mixed


def describe(outcome: Outcome, old: bytes, new: bytes) -> str:
    """``old``, ``new``, an errno name, or how a mixed result lines up with each version."""
    if outcome.hung or outcome.error is not None:
        return "hung" if outcome.hung else errno.errorcode.get(outcome.error or 0, str(outcome.error))
    data: bytes = outcome.data
    if data in (old, new):
        return "old" if data == old else "new"

    def common(other: bytes) -> int:
        pairs = enumerate(zip(data, other, strict=False))
        return next((i for i, (x, y) in pairs if x != y), min(len(data), len(other)))

    zeros = len(data) - len(data.rstrip(b"\0"))
    return (f"{len(data)} bytes (old {len(old)}, new {len(new)}): the first {common(old)} as old, "
            f"the first {common(new)} as new, ending in {zeros} zero bytes")


@pytest.mark.fuse
def test_sigkill_mid_download_then_restart(rig: Rig, faults: FaultLog) -> None:
    rig.proxy.throttle(512 * 1024, op="get")
    cache_dir = rig.daemon.cache_dir
    downloads = [(partial(read_file, rig.path(name)), [FILES[name]]) for name in (IMG2, IMG3)]
    readers = threading.Thread(target=faults.run_many, args=(downloads,))
    readers.start()
    # Kill once a large object is cached (two images read at once make no series walk: nothing else is
    # prefetched), mid-way through the other.
    stop_at = time.monotonic() + 20
    while not list(cache_dir.rglob("*.map")) and time.monotonic() < stop_at:
        time.sleep(0.05)
    assert list(cache_dir.rglob("*.map")), "no large object reached the cache within 20 s"
    sent = faults.notes["bytes_before_kill"] = rig.proxy.counts()["bytes"]
    assert sent < sum(len(FILES[name]) for name in (IMG0, IMG1, IMG2, IMG3)), "downloads finished before the kill"
    rig.daemon.kill()
    readers.join(HANG_S)
    assert not readers.is_alive()
    rig.proxy.clear()
    rig.proxy.reset_counts()
    with rig.remount("daemon-restart.log"):
        for name, body in FILES.items():
            outcome = faults.read(rig.path(name), body)
            assert outcome.data is not None and sha256(outcome.data) == sha256(body), f"{name}: {outcome.error}"
        faults.notes["bytes_after_restart"] = rig.proxy.counts()["bytes"]
    assert not list(cache_dir.rglob("*.tmp"))
    assert faults.wrong == 0  # the reads cut by the kill may fail, but not with wrong bytes


@pytest.mark.fuse
def test_concurrent_overlapping_reads(rig: Rig, faults: FaultLog) -> None:
    rig.proxy.stall(0.05, op="get")  # slower GETs make readers meet on the same in-flight blocks
    names = (IMG1, IMG2, IMG3)
    rng = random.Random(16)
    for _round in range(12):
        calls = []
        for _thread in range(16):
            name = rng.choice(names)
            offset = rng.randrange(len(FILES[name]))
            size = rng.choice((4096, 70_000, 300_000, 1024 * 1024))
            calls.append((partial(pread, rig.path(name), offset, size), [FILES[name][offset:offset + size]]))
        faults.run_many(calls)
    assert (faults.wrong, faults.hangs, dict(faults.errors)) == (0, 0, {})
