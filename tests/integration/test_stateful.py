"""A model-based test: random sequences of bucket changes, reads, restarts and outages against a real mount.

hypothesis drives a real daemon (a subprocess on a real FUSE mount) reading moto through the fault
proxy, while a model of the bucket records every version each key ever had. After every step the
invariants below are checked. CI runs a few examples; more run with::

    NCCIDFS_STATEFUL_EXAMPLES=200 NCCIDFS_STATEFUL_STEPS=60 \
        .venv/bin/python -m pytest tests/integration/test_stateful.py

The machine and its invariants are those of :class:`tests.model.BucketMachine`; here ``stat`` gives the
size, the cache's size is ``du -sb`` of its directory, and a restart may be a crash (SIGKILL).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.faultproxy import FaultProxy
from tests.model import BucketMachine
from tests.mounting import PREFIX, MountedDaemon, create_bucket, daemon_env, du_bytes

pytestmark = pytest.mark.fuse

T = TypeVar("T")


class MountMachine(BucketMachine):
    endpoint: str = ""
    workdir: Path = Path()
    TIMEOUT = 3.0  # --timeout
    CALL_SLACK = 4.0
    CACHE_BYTES = 2 * 1024 * 1024  # --cache-size

    def __init__(self) -> None:
        super().__init__()
        self.run_dir = self.workdir / f"run{time.monotonic_ns()}"
        self.bucket = f"nccid-model-{time.monotonic_ns() % 10**12}"
        self.s3 = create_bucket(self.endpoint, self.bucket, [])
        self.proxy = FaultProxy(self.endpoint).start()
        self.daemon: MountedDaemon | None = None

    def serve(self) -> None:
        self.daemon = MountedDaemon(
            self.run_dir / "mnt", self.proxy.url, self.run_dir / "cache", self.run_dir / "daemon.log",
            bucket=self.bucket, extra=["--cache-size", str(self.CACHE_BYTES), "--timeout", str(self.TIMEOUT),
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

    def store_put(self, key: str, body: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=PREFIX + key, Body=body)

    def store_delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=PREFIX + key)

    def call(self, call: Callable[[], T]) -> tuple[T | int, float]:
        started = time.monotonic()
        try:
            result: T | int = call()
        except OSError as error:
            result = error.errno or 0
        return result, time.monotonic() - started

    def read(self, key: str, offset: int, size: int) -> bytes:
        fd = os.open(self.mount / key, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def read_whole(self, key: str) -> bytes:
        with open(self.mount / key, "rb", buffering=0) as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            return handle.readall()

    def size_after_whole_read(self, key: str, length: int) -> int:
        # The kernel is told of a new size from a thread of the daemon's: give it a moment.
        give_up = time.monotonic() + 1.0
        while (size := os.stat(self.mount / key).st_size) != length and time.monotonic() < give_up:
            time.sleep(0.02)
        return size

    def list_names(self, folder: str) -> list[str]:
        return os.listdir(self.mount / folder)

    def refresh_listings(self) -> None:
        result = subprocess.run([sys.executable, "-m", "nccidfs", "refresh", str(self.mount)], env=daemon_env(),
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr

    def restart_serving(self, crash: bool) -> None:
        assert self.daemon is not None
        if crash:
            self.daemon.kill()
        else:
            self.daemon.stop()
            assert self.daemon.returncode == 0, self.daemon.log()[-2000:]
        self.serve()

    def outage_starts(self, kind: str) -> None:
        if kind == "503":
            self.proxy.fail(503, "SlowDown")
        elif kind == "500":
            self.proxy.fail(500, "InternalError")
        elif kind == "stall":
            self.proxy.stall(60.0)
        else:
            self.proxy.dead()

    def outage_ends(self) -> None:
        self.proxy.clear()

    def cache_bytes(self) -> int:
        return du_bytes(self.run_dir / "cache")


def test_the_mount_keeps_its_promises_across_random_histories(tmp_path: Path, s3_endpoint: str) -> None:
    MountMachine.endpoint = s3_endpoint
    MountMachine.workdir = tmp_path
    run_state_machine_as_test(MountMachine, settings=settings(
        max_examples=int(os.environ.get("NCCIDFS_STATEFUL_EXAMPLES", "4")),
        stateful_step_count=int(os.environ.get("NCCIDFS_STATEFUL_STEPS", "25")),
        deadline=None, suppress_health_check=list(HealthCheck),
        derandomize=not os.environ.get("NCCIDFS_STATEFUL_EXAMPLES")))
    print(f"STATEFUL: {BucketMachine.examples} histories, {BucketMachine.steps} steps, every invariant held")
