"""The state machine of tests/integration/test_stateful.py run against the filesystem core, without FUSE.

hypothesis drives the core as :func:`nccidfs.assembly.assemble` builds it for the daemon, over an
in-memory bucket behind a failing store, with the machine and invariants of
:class:`tests.model.BucketMachine`. Each call is bounded as the FUSE adapter bounds it and its error
becomes the errno the adapter would give; a lookup gives the size; time passes on a fake clock, so
listings age past their TTL without a sleep. A restart is always a clean one: the core lives in this
process, so a crash cannot be had without the daemon.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule, run_state_machine_as_test

from nccidfs import deadline
from nccidfs.assembly import Assembly
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from tests.clock import FakeClock
from tests.core import LISTING_TTL, PREFIX, TIMEOUT, assemble_core
from tests.fakes import FailingStore
from tests.model import BucketMachine, BucketModel

T = TypeVar("T")
# A stalled store answers after this long: well past a call's timeout.
STALL_SECONDS = 2 * TIMEOUT
READ_SIZE = 65536


def read(filesystem: FileSystem, path: str, offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)`` of ``path`` as a reader gets them: open, reads until the end or
    ``size``, release."""
    handle = filesystem.open(path).handle
    try:
        chunks, done = [], 0
        while done < size and (chunk := filesystem.read(handle, offset + done, min(READ_SIZE, size - done))):
            chunks.append(chunk)
            done += len(chunk)
        return b"".join(chunks)
    finally:
        filesystem.release(handle)


class CoreMachine(BucketMachine):
    workdir: Path = Path()
    TIMEOUT = TIMEOUT
    CALL_SLACK = 2.0
    CACHE_BYTES = 2 * 1024 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.store = FailingStore()
        self.clock = FakeClock()
        self.run_dir = self.workdir / f"run{time.monotonic_ns()}"
        self.core: Assembly | None = None

    def serve(self) -> None:
        self.core = assemble_core(self.run_dir, self.store, clock=self.clock, cache_bytes=self.CACHE_BYTES)

    def teardown(self) -> None:
        self.outage_ends()
        if self.core is not None:
            self.core.close()

    @property
    def fs(self) -> FileSystem:
        assert self.core is not None
        return self.core.fs

    def store_put(self, key: str, body: bytes) -> None:
        self.store.objects[PREFIX + key] = body

    def store_delete(self, key: str) -> None:
        self.store.objects.pop(PREFIX + key, None)

    @rule()
    def listings_age(self) -> None:
        self.clock.advance(LISTING_TTL)

    def call(self, call: Callable[[], T]) -> tuple[T | int, float]:
        started = time.monotonic()
        try:
            with deadline.bounded(self.TIMEOUT):
                result: T | int = call()
        except NccidfsError as error:
            result = to_errno(error)
        return result, time.monotonic() - started

    def read(self, key: str, offset: int, size: int) -> bytes:
        return read(self.fs, f"/{key}", offset, size)

    def read_whole(self, key: str) -> bytes:
        return read(self.fs, f"/{key}", 0, 1 << 30)

    def size_after_whole_read(self, key: str, length: int) -> int:
        with deadline.bounded(self.TIMEOUT):
            return self.fs.lookup(f"/{key}").size

    def list_names(self, folder: str) -> list[str]:
        return [entry.name for entry in self.fs.readdir(f"/{folder}")]

    def refresh_listings(self) -> None:
        assert self.core is not None
        self.core.refresh("/")

    def restart_serving(self, crash: bool) -> None:
        assert self.core is not None
        self.core.close()
        self.serve()

    def outage_starts(self, kind: str) -> None:
        if kind == "stall":
            self.store.stall = STALL_SECONDS
        else:
            self.store.down = True

    def outage_ends(self) -> None:
        self.store.down, self.store.stall = False, 0.0

    def cache_bytes(self) -> int:
        """The cache's bytes on disk, from a scan that no file vanished during (a temporary file renamed
        by a write finishing meanwhile): such a scan is made again, never counted short."""
        while True:
            try:
                return sum(entry.stat().st_size for entry in (self.run_dir / "cache").rglob("*") if entry.is_file())
            except FileNotFoundError:
                continue


def test_the_core_keeps_the_mounts_promises_across_random_histories(tmp_path: Path) -> None:
    CoreMachine.workdir = tmp_path
    run_state_machine_as_test(CoreMachine, settings=settings(
        max_examples=int(os.environ.get("NCCIDFS_STATEFUL_EXAMPLES", "10")),
        stateful_step_count=int(os.environ.get("NCCIDFS_STATEFUL_STEPS", "30")),
        deadline=None, suppress_health_check=list(HealthCheck),
        derandomize=not os.environ.get("NCCIDFS_STATEFUL_EXAMPLES")))


def test_the_model_names_what_the_keys_make_and_nothing_odd() -> None:
    model = BucketModel()
    assert model.names_ever("") == {"ct", "data", "lead.txt"}
    assert model.names_now("ct") == set()
    model.current["ct/P2/S9/R9/d.dcm"] = b"x"
    model.odd.update({"/x.txt", "ct/P1/./y.dcm"})
    assert model.names_now("") == {"ct"}
    assert model.names_now("ct") == {"P1", "P2"}
    assert model.names_now("ct/P1") == set()
