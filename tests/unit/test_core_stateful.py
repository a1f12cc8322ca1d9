"""The state machine of tests/integration/test_stateful.py run against the filesystem core, without FUSE.

hypothesis drives the core as :func:`nccidfs.assembly.assemble` builds it for the daemon, over an
in-memory bucket behind a failing store, while the model of tests/model.py records every version each
key ever had. Each call is bounded as the FUSE adapter bounds it. Invariants after every step:
- every byte read is a byte of one version of the object; once the key's listing is fresh (a refresh
  after its last change, S3 answering), of its current version, and a deleted key is ENOENT;
- the size a lookup gives agrees with the length of what a whole read returned;
- a listing never shows a name that no key made, nor any odd key (empty, ``.``, ``..`` segments);
- the cache holds no more than its bound plus the stated slack;
- no call takes longer than the timeout plus a slack;
- during an outage, the object read whole just before it is still served from the cache, at once.
Time passes on a fake clock, so listings age past their TTL without a sleep.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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

from nccidfs import deadline
from nccidfs.assembly import Assembly
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from tests.clock import FakeClock
from tests.core import LISTING_TTL, PREFIX, TIMEOUT, assemble_core
from tests.fakes import FailingStore
from tests.model import FOLDERS, KEYS, ODD_KEYS, READ_ERRNOS, BucketModel
from tests.mounting import CACHE_SLACK

T = TypeVar("T")
CACHE_BYTES = 2 * 1024 * 1024
# A call may wait for the timeout; the margin covers scheduling on a loaded 2-core machine.
CALL_SLACK = 2.0
# Served from the cache during an outage: "at once".
CACHED_DURING_OUTAGE_S = 1.0
# A stalled store answers after this long: well past a call's timeout.
STALL_SECONDS = 2 * TIMEOUT
READ_SIZE = 65536


def timed(call: Callable[[], T]) -> tuple[T | int, float]:
    """What ``call`` returned, or the errno the FUSE adapter would give for its error; and how long it took."""
    started = time.monotonic()
    try:
        with deadline.bounded(TIMEOUT):
            result: T | int = call()
    except NccidfsError as error:
        result = to_errno(error)
    return result, time.monotonic() - started


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


class CoreMachine(RuleBasedStateMachine):
    workdir: Path = Path()

    def __init__(self) -> None:
        super().__init__()
        self.model = BucketModel()
        self.store = FailingStore()
        self.clock = FakeClock()
        self.outage = False
        self.last_whole: tuple[str, bytes] | None = None
        self.run_dir = self.workdir / f"run{time.monotonic_ns()}"
        self.core: Assembly | None = None

    # -- set-up and tear-down ---------------------------------------------------------------------
    @initialize(seeds=st.lists(st.integers(0, 2**16), min_size=len(KEYS), max_size=len(KEYS)))
    def start(self, seeds: list[int]) -> None:
        for key, seed in zip(KEYS, seeds, strict=True):
            self._put(key, seed % 200_000, seed)
        self._assemble()
        self.model.fresh = set(KEYS)

    def _assemble(self) -> None:
        self.core = assemble_core(self.run_dir, self.store, clock=self.clock, cache_bytes=CACHE_BYTES)

    def teardown(self) -> None:
        self.store.down, self.store.stall = False, 0.0
        if self.core is not None:
            self.core.close()

    @property
    def fs(self) -> FileSystem:
        assert self.core is not None
        return self.core.fs

    def _put(self, key: str, size: int, seed: int) -> None:
        body = random.Random(seed).randbytes(size)
        self.store.objects[PREFIX + key] = body
        self.model.put(key, body)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    # -- changes to the bucket, and time --------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), size=st.integers(0, 200_000), seed=st.integers(0, 2**16))
    def put(self, key: str, size: int, seed: int) -> None:
        self._put(key, size, seed)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.store.objects.pop(PREFIX + key, None)
        self.model.delete(key)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    @rule(odd=st.sampled_from(ODD_KEYS))
    def put_odd_key(self, odd: str) -> None:
        self.store.objects[PREFIX + odd] = b"odd"
        self.model.put_odd(odd)

    @rule()
    def listings_age(self) -> None:
        self.clock.advance(LISTING_TTL)

    # -- reading ----------------------------------------------------------------------------------
    def _check_bytes(self, key: str, got: bytes | int, seconds: float, expect: Callable[[bytes], bytes]) -> None:
        assert seconds < TIMEOUT + CALL_SLACK, f"{key}: a call took {seconds:.1f}s"
        self.model.check_read(key, got, self.outage, expect)

    @rule(key=st.sampled_from(KEYS), offset=st.integers(0, 210_000), size=st.integers(1, 150_000))
    def read_some(self, key: str, offset: int, size: int) -> None:
        got, seconds = timed(lambda: read(self.fs, f"/{key}", offset, size))
        self._check_bytes(key, got, seconds, lambda body: body[offset:offset + size])
        self.last_whole = None

    @rule(key=st.sampled_from(KEYS))
    def read_all(self, key: str) -> None:
        got, seconds = timed(lambda: read(self.fs, f"/{key}", 0, 1 << 30))
        self._check_bytes(key, got, seconds, lambda body: body)
        self.last_whole = None
        if isinstance(got, bytes):
            if not self.outage:
                self.last_whole = (key, got)
            size, _ = timed(lambda: self.fs.lookup(f"/{key}").size)
            assert size in (len(got), *READ_ERRNOS), f"{key}: lookup says {size}, a whole read gave {len(got)}"

    @rule(folder=st.sampled_from(FOLDERS))
    def list_folder(self, folder: str) -> None:
        entries, seconds = timed(lambda: self.fs.readdir(f"/{folder}"))
        assert seconds < TIMEOUT + CALL_SLACK
        if isinstance(entries, int):
            assert entries in READ_ERRNOS, entries
            return
        self.model.check_listing(folder, [entry.name for entry in entries], self.outage)

    @precondition(lambda self: self.outage and self.last_whole is not None)
    @rule()
    def cached_file_during_outage(self) -> None:
        assert self.last_whole is not None
        key, body = self.last_whole
        got, seconds = timed(lambda: read(self.fs, f"/{key}", 0, 1 << 30))
        assert got == body, f"{key}: cached bytes not served during the outage: {got!r:.80}"
        assert seconds < CACHED_DURING_OUTAGE_S, f"{key}: cached file took {seconds:.2f}s during the outage"

    # -- the daemon's life ------------------------------------------------------------------------
    @precondition(lambda self: not self.outage)
    @rule()
    def refresh(self) -> None:
        assert self.core is not None
        self.core.refresh("/")
        self.model.fresh = set(KEYS)
        self.last_whole = None

    @precondition(lambda self: not self.outage)
    @rule()
    def restart(self) -> None:
        assert self.core is not None
        self.core.close()
        self._assemble()

    @precondition(lambda self: not self.outage)
    @rule(stall=st.booleans())
    def outage_on(self, stall: bool) -> None:
        self.outage = True
        if stall:
            self.store.stall = STALL_SECONDS
        else:
            self.store.down = True

    @precondition(lambda self: self.outage)
    @rule()
    def outage_off(self) -> None:
        self.store.down, self.store.stall = False, 0.0
        self.outage = False

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def cache_within_its_bound(self) -> None:
        if self.core is None:
            return
        used = sum(entry.stat().st_size for entry in (self.run_dir / "cache").rglob("*") if entry.is_file())
        assert used <= CACHE_BYTES + CACHE_SLACK, f"cache dir holds {used} bytes, bound {CACHE_BYTES}"

    @invariant()
    def root_shows_no_odd_name(self) -> None:
        if self.core is None:
            return
        entries, _ = timed(lambda: self.fs.readdir("/"))
        if isinstance(entries, list):
            assert {entry.name for entry in entries} <= self.model.names_ever(""), entries


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
