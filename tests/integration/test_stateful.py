"""A model-based test: random sequences of bucket changes, reads, restarts and outages against a real mount.

hypothesis drives a real daemon (a subprocess on a real FUSE mount) reading moto through the fault
proxy, while a model of the bucket records every version each key ever had. After every step the
invariants below are checked. CI runs a few examples; more run with::

    NCCIDFS_STATEFUL_EXAMPLES=200 NCCIDFS_STATEFUL_STEPS=60 \
        .venv/bin/python -m pytest tests/integration/test_stateful.py

Invariants:
- every byte read is a byte of one version of the object; once the key's listing is fresh (a refresh
  after its last change, S3 answering), of its current version, and a deleted key gives ENOENT;
- ``stat`` agrees with the length of what a whole read returned;
- a listing never shows a name that no key made, nor any odd key (empty, ``.``, ``..`` segments);
- the cache directory (``du -sb``) never exceeds ``--cache-size`` plus the stated slack;
- no call takes longer than ``--timeout`` plus a slack;
- during an outage, the object read whole just before it is still served from the cache, at once.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.faultproxy import FaultProxy
from tests.model import FOLDERS, KEYS, ODD_KEYS, READ_ERRNOS, BucketModel
from tests.mounting import CACHE_SLACK, PREFIX, MountedDaemon, create_bucket, daemon_env, du_bytes

pytestmark = pytest.mark.fuse

T = TypeVar("T")
CACHE_SIZE = 2 * 1024 * 1024
TIMEOUT = 3.0
# A FUSE call may wait for --timeout; the margin covers process scheduling on a loaded 2-core machine.
CALL_SLACK = 4.0
# Served from the cache during an outage: "at once".
CACHED_DURING_OUTAGE_S = 1.0
def timed(call: Callable[[], T]) -> tuple[T | OSError, float]:
    started = time.monotonic()
    try:
        result: T | OSError = call()
    except OSError as error:
        result = error
    return result, time.monotonic() - started


def read_range(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def read_whole(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        return handle.readall()


class MountMachine(RuleBasedStateMachine):
    endpoint: str = ""
    workdir: Path = Path()
    # How much was walked, reported at the end of the run.
    examples = 0
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        MountMachine.examples += 1
        self.model = BucketModel()
        self.outage = False
        self.last_whole: tuple[str, bytes] | None = None
        self.run_dir = self.workdir / f"run{time.monotonic_ns()}"
        self.bucket = f"nccid-model-{time.monotonic_ns() % 10**12}"
        self.s3 = create_bucket(self.endpoint, self.bucket, [])
        self.proxy = FaultProxy(self.endpoint).start()
        self.daemon: MountedDaemon | None = None

    # -- set-up and tear-down ---------------------------------------------------------------------
    @initialize(seeds=st.lists(st.integers(0, 2**16), min_size=len(KEYS), max_size=len(KEYS)))
    def start(self, seeds: list[int]) -> None:
        for key, seed in zip(KEYS, seeds, strict=True):
            self._put(key, seed % 200_000, seed)
        self._mount()
        self.model.fresh = set(KEYS)

    def _mount(self) -> None:
        self.daemon = MountedDaemon(
            self.run_dir / "mnt", self.proxy.url, self.run_dir / "cache", self.run_dir / "daemon.log",
            bucket=self.bucket, extra=["--cache-size", str(CACHE_SIZE), "--timeout", str(TIMEOUT),
                                       "--listing-ttl", "1", "--log-level", "info"])
        self.daemon.__enter__()

    def teardown(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        self.proxy.stop()

    @property
    def mount(self) -> Path:
        assert self.daemon is not None
        return self.daemon.mountpoint

    def _put(self, key: str, size: int, seed: int) -> None:
        body = random.Random(seed).randbytes(size)
        self.s3.put_object(Bucket=self.bucket, Key=PREFIX + key, Body=body)
        self.model.put(key, body)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    # -- changes to the bucket --------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), size=st.integers(0, 200_000), seed=st.integers(0, 2**16))
    def put(self, key: str, size: int, seed: int) -> None:
        self._put(key, size, seed)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=PREFIX + key)
        self.model.delete(key)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    @rule(odd=st.sampled_from(ODD_KEYS))
    def put_odd_key(self, odd: str) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=PREFIX + odd, Body=b"odd")
        self.model.put_odd(odd)

    # -- reading ----------------------------------------------------------------------------------
    def _check_bytes(self, key: str, got: bytes | OSError, seconds: float, expect: Callable[[bytes], bytes]) -> None:
        assert seconds < TIMEOUT + CALL_SLACK, f"{key}: a call took {seconds:.1f}s"
        self.model.check_read(key, got.errno if isinstance(got, OSError) else got, self.outage, expect)

    @rule(key=st.sampled_from(KEYS), offset=st.integers(0, 210_000), size=st.integers(1, 150_000))
    def read_some(self, key: str, offset: int, size: int) -> None:
        got, seconds = timed(lambda: read_range(self.mount / key, offset, size))
        self._check_bytes(key, got, seconds, lambda body: body[offset:offset + size])
        self.last_whole = None

    @rule(key=st.sampled_from(KEYS))
    def read_all(self, key: str) -> None:
        got, seconds = timed(lambda: read_whole(self.mount / key))
        self._check_bytes(key, got, seconds, lambda body: body)
        self.last_whole = None
        if isinstance(got, bytes):
            if not self.outage:
                self.last_whole = (key, got)
            # The kernel is told of a new size from a thread of the daemon's: give it a moment.
            give_up = time.monotonic() + 1.0
            while (size := os.stat(self.mount / key).st_size) != len(got) and time.monotonic() < give_up:
                time.sleep(0.02)
            assert size == len(got), f"{key}: stat says {size}, a whole read gave {len(got)} bytes"

    @rule(folder=st.sampled_from(FOLDERS))
    def list_folder(self, folder: str) -> None:
        names, seconds = timed(lambda: os.listdir(self.mount / folder))
        assert seconds < TIMEOUT + CALL_SLACK
        if isinstance(names, OSError):
            assert names.errno in READ_ERRNOS, names
            return
        self.model.check_listing(folder, names, self.outage)

    @precondition(lambda self: self.outage and self.last_whole is not None)
    @rule()
    def cached_file_during_outage(self) -> None:
        assert self.last_whole is not None
        key, body = self.last_whole
        got, seconds = timed(lambda: read_whole(self.mount / key))
        assert got == body, f"{key}: cached bytes not served during the outage: {got!r:.80}"
        assert seconds < CACHED_DURING_OUTAGE_S, f"{key}: cached file took {seconds:.2f}s during the outage"

    # -- the daemon's life ------------------------------------------------------------------------
    @precondition(lambda self: not self.outage)
    @rule()
    def refresh(self) -> None:
        result = subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(self.mount)], env=daemon_env(),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        self.model.fresh = set(KEYS)
        self.last_whole = None

    @precondition(lambda self: not self.outage)
    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        assert self.daemon is not None
        if crash:
            self.daemon.kill()
        else:
            self.daemon.stop()
            assert self.daemon.returncode == 0, self.daemon.log()[-2000:]
        self._mount()

    @precondition(lambda self: not self.outage)
    @rule(kind=st.sampled_from(("503", "500", "stall", "dead")))
    def outage_on(self, kind: str) -> None:
        self.outage = True
        if kind == "503":
            self.proxy.fail(503, "SlowDown")
        elif kind == "500":
            self.proxy.fail(500, "InternalError")
        elif kind == "stall":
            self.proxy.stall(60.0)
        else:
            self.proxy.dead()

    @precondition(lambda self: self.outage)
    @rule()
    def outage_off(self) -> None:
        self.proxy.clear()
        self.outage = False

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def cache_within_its_bound(self) -> None:
        MountMachine.steps += 1
        if self.daemon is None:
            return
        used = du_bytes(self.run_dir / "cache")
        assert used <= CACHE_SIZE + CACHE_SLACK, f"cache dir holds {used} bytes, bound {CACHE_SIZE}"

    @invariant()
    def root_shows_no_odd_name(self) -> None:
        if self.daemon is None:
            return
        names, _ = timed(lambda: os.listdir(self.mount))
        if isinstance(names, list):
            assert set(names) <= self.model.names_ever(""), names


def test_the_mount_keeps_its_promises_across_random_histories(tmp_path: Path, s3_endpoint: str) -> None:
    MountMachine.endpoint = s3_endpoint
    MountMachine.workdir = tmp_path
    run_state_machine_as_test(MountMachine, settings=settings(
        max_examples=int(os.environ.get("NCCIDFS_STATEFUL_EXAMPLES", "4")),
        stateful_step_count=int(os.environ.get("NCCIDFS_STATEFUL_STEPS", "25")),
        deadline=None, suppress_health_check=list(HealthCheck),
        derandomize=not os.environ.get("NCCIDFS_STATEFUL_EXAMPLES")))
    print(f"STATEFUL: {MountMachine.examples} histories, {MountMachine.steps} steps, every invariant held")
