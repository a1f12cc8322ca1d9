"""A model of the bucket for the state-machine tests, what a read or a listing may show against it, and
the machine that drives both.

The same machine checks the filesystem core driven directly (tests/unit/test_core_stateful.py) and a
real mount (tests/integration/test_stateful.py): both must keep these promises.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterable
from typing import TypeVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.mounting import CACHE_SLACK

T = TypeVar("T")

KEYS = (
    "ct/P1/S1/R1/a.dcm", "ct/P1/S1/R1/b.dcm", "ct/P1/S1/R2/c.dcm", "ct/P2/S9/R9/d.dcm",
    "data/P1/status_2020-01-01.json", "lead.txt",
)
# Keys that must never show in the mount: the root's own marker, empty and dot segments, a folder marker.
ODD_KEYS = ("", "/x.txt", "../z", "ct/P1/S1/R1/", "ct/P1/./y.dcm")
# Folders the machines list, '' being the root.
FOLDERS = ("", "ct", "ct/P1", "ct/P1/S1", "ct/P1/S1/R1", "data/P1")
# Kinds of outage: S3 answers 503 or 500, stalls past every timeout, or is gone (connections refused).
OUTAGES = ("503", "500", "stall", "dead")
# The largest object the machines put.
MAX_BODY = 200_000
# Served from the cache during an outage: "at once".
CACHED_DURING_OUTAGE_S = 1.0
# What a read or a listing may fail with: the key is gone (ENOENT), or S3 failed or changed under it (EIO).
READ_ERRNOS = {errno.ENOENT, errno.EIO}


def names_under(folder: str, keys: Iterable[str]) -> set[str]:
    """The names that ``keys`` make directly under ``folder`` ('' is the root), odd ones left out."""
    prefix = f"{folder}/" if folder else ""
    names = {key[len(prefix):].split("/", 1)[0] for key in keys if key.startswith(prefix)}
    return names - {"", ".", ".."}


class BucketModel:
    """Every version each key ever had, the odd keys put, and which keys' listings are fresh (listed
    again since their last change)."""

    def __init__(self) -> None:
        self.versions: dict[str, list[bytes]] = {key: [] for key in KEYS}
        self.current: dict[str, bytes | None] = dict.fromkeys(KEYS)
        self.odd: set[str] = set()
        self.fresh: set[str] = set()

    def put(self, key: str, body: bytes) -> None:
        self.versions[key].append(body)
        self.current[key] = body
        self.fresh.discard(key)

    def delete(self, key: str) -> None:
        self.current[key] = None
        self.fresh.discard(key)

    def put_odd(self, odd: str) -> None:
        self.odd.add(odd)
        self.fresh.clear()

    def names_ever(self, folder: str) -> set[str]:
        """Every name any key ever made under ``folder``."""
        return names_under(folder, set(KEYS) | self.odd)

    def names_now(self, folder: str) -> set[str]:
        return names_under(folder, {key for key in KEYS if self.current[key] is not None} | self.odd)

    def check_read(self, key: str, got: bytes | int, outage: bool, expect: Callable[[bytes], bytes]) -> None:
        """What a read of ``key`` gave (its bytes, or the errno it failed with) is one version's bytes as
        ``expect`` cuts them; once the key's listing is fresh and S3 answers, the current version's, and a
        deleted key is ENOENT."""
        fresh = key in self.fresh and not outage
        current = self.current[key]
        if isinstance(got, int):
            assert got in READ_ERRNOS, f"{key}: errno {got}"
            if fresh:
                assert current is None and got == errno.ENOENT, f"{key} is fresh and current: errno {got}"
            return
        assert any(got == expect(version) for version in self.versions[key]), f"{key}: bytes of no version"
        if fresh:
            assert current is not None and got == expect(current), f"{key}: not the current version"

    def check_listing(self, folder: str, names: Iterable[str], outage: bool) -> None:
        """A listing never shows a name no key made; once every key under it is fresh, exactly those now."""
        shown = set(names)
        assert shown <= self.names_ever(folder), f"{folder}: {sorted(shown)}"
        under = [key for key in KEYS if key.startswith(f"{folder}/" if folder else "")]
        if not outage and all(key in self.fresh for key in under):
            assert shown == self.names_now(folder), f"{folder} is fresh: {sorted(shown)}"


class BucketMachine(RuleBasedStateMachine):
    """Random histories of bucket changes, reads, refreshes, restarts and outages, checked against the
    model after every step. A subclass says how the bucket is changed and the filesystem read: through a
    real mount, or by driving the core directly.

    Invariants:
    - every byte read is a byte of one version of the object; once the key's listing is fresh (a refresh
      after its last change, S3 answering), of its current version, and a deleted key gives ENOENT;
    - the size the filesystem gives agrees with the length of what a whole read returned;
    - a listing never shows a name that no key made, nor any odd key (empty, ``.``, ``..`` segments);
    - the cache directory never holds more than its bound plus the stated slack;
    - no call takes longer than the timeout plus a slack;
    - during an outage, the object read whole just before it is still served from the cache, at once.
    """

    TIMEOUT: float
    # A call may wait for the timeout; the margin covers process scheduling on a loaded 2-core machine.
    CALL_SLACK: float
    CACHE_BYTES: int
    # How much was walked, reported at the end of the run.
    examples = 0
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        BucketMachine.examples += 1
        self.model = BucketModel()
        self.outage = False
        self.last_whole: tuple[str, bytes] | None = None
        self.serving = False

    # -- what a subclass provides -----------------------------------------------------------------
    def store_put(self, key: str, body: bytes) -> None:
        raise NotImplementedError

    def store_delete(self, key: str) -> None:
        raise NotImplementedError

    def serve(self) -> None:
        """Start serving the bucket (mount, or assemble the core)."""
        raise NotImplementedError

    def call(self, call: Callable[[], T]) -> tuple[T | int, float]:
        """What ``call`` returned, or the errno a reader would get for its error; and how long it took."""
        raise NotImplementedError

    def read(self, key: str, offset: int, size: int) -> bytes:
        raise NotImplementedError

    def read_whole(self, key: str) -> bytes:
        raise NotImplementedError

    def size_after_whole_read(self, key: str, length: int) -> int:
        """The size the filesystem gives ``key`` once a whole read of ``length`` bytes returned."""
        raise NotImplementedError

    def list_names(self, folder: str) -> list[str]:
        raise NotImplementedError

    def refresh_listings(self) -> None:
        raise NotImplementedError

    def restart_serving(self, crash: bool) -> None:
        raise NotImplementedError

    def outage_starts(self, kind: str) -> None:
        raise NotImplementedError

    def outage_ends(self) -> None:
        raise NotImplementedError

    def cache_bytes(self) -> int:
        raise NotImplementedError

    # -- set-up -----------------------------------------------------------------------------------
    @initialize(seeds=st.lists(st.integers(0, 2**16), min_size=len(KEYS), max_size=len(KEYS)))
    def start(self, seeds: list[int]) -> None:
        for key, seed in zip(KEYS, seeds, strict=True):
            self._put(key, seed % MAX_BODY, seed)
        self.serve()
        self.serving = True
        self.model.fresh = set(KEYS)

    def _put(self, key: str, size: int, seed: int) -> None:
        body = random.Random(seed).randbytes(size)
        self.store_put(key, body)
        self.model.put(key, body)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    # -- changes to the bucket --------------------------------------------------------------------
    @rule(key=st.sampled_from(KEYS), size=st.integers(0, MAX_BODY), seed=st.integers(0, 2**16))
    def put(self, key: str, size: int, seed: int) -> None:
        self._put(key, size, seed)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: str) -> None:
        self.store_delete(key)
        self.model.delete(key)
        if self.last_whole and self.last_whole[0] == key:
            self.last_whole = None

    @rule(odd=st.sampled_from(ODD_KEYS))
    def put_odd_key(self, odd: str) -> None:
        self.store_put(odd, b"odd")
        self.model.put_odd(odd)

    # -- reading ----------------------------------------------------------------------------------
    def _check_bytes(self, key: str, got: bytes | int, seconds: float, expect: Callable[[bytes], bytes]) -> None:
        assert seconds < self.TIMEOUT + self.CALL_SLACK, f"{key}: a call took {seconds:.1f}s"
        self.model.check_read(key, got, self.outage, expect)

    @rule(key=st.sampled_from(KEYS), offset=st.integers(0, MAX_BODY + 10_000), size=st.integers(1, 150_000))
    def read_some(self, key: str, offset: int, size: int) -> None:
        got, seconds = self.call(lambda: self.read(key, offset, size))
        self._check_bytes(key, got, seconds, lambda body: body[offset:offset + size])
        self.last_whole = None

    @rule(key=st.sampled_from(KEYS))
    def read_all(self, key: str) -> None:
        got, seconds = self.call(lambda: self.read_whole(key))
        self._check_bytes(key, got, seconds, lambda body: body)
        self.last_whole = None
        if isinstance(got, bytes):
            if not self.outage:
                self.last_whole = (key, got)
            size = self.size_after_whole_read(key, len(got))
            assert size == len(got), f"{key}: the filesystem says {size}, a whole read gave {len(got)} bytes"

    @rule(folder=st.sampled_from(FOLDERS))
    def list_folder(self, folder: str) -> None:
        names, seconds = self.call(lambda: self.list_names(folder))
        assert seconds < self.TIMEOUT + self.CALL_SLACK
        if isinstance(names, int):
            assert names in READ_ERRNOS, names
            return
        self.model.check_listing(folder, names, self.outage)

    @precondition(lambda self: self.outage and self.last_whole is not None)
    @rule()
    def cached_file_during_outage(self) -> None:
        assert self.last_whole is not None
        key, body = self.last_whole
        got, seconds = self.call(lambda: self.read_whole(key))
        assert got == body, f"{key}: cached bytes not served during the outage: {got!r:.80}"
        assert seconds < CACHED_DURING_OUTAGE_S, f"{key}: cached file took {seconds:.2f}s during the outage"

    # -- the daemon's life ------------------------------------------------------------------------
    @precondition(lambda self: not self.outage)
    @rule()
    def refresh(self) -> None:
        self.refresh_listings()
        self.model.fresh = set(KEYS)
        self.last_whole = None

    @precondition(lambda self: not self.outage)
    @rule(crash=st.booleans())
    def restart(self, crash: bool) -> None:
        self.restart_serving(crash)

    @precondition(lambda self: not self.outage)
    @rule(kind=st.sampled_from(OUTAGES))
    def outage_on(self, kind: str) -> None:
        self.outage = True
        self.outage_starts(kind)

    @precondition(lambda self: self.outage)
    @rule()
    def outage_off(self) -> None:
        self.outage_ends()
        self.outage = False

    # -- invariants -------------------------------------------------------------------------------
    @invariant()
    def cache_within_its_bound(self) -> None:
        BucketMachine.steps += 1
        if not self.serving:
            return
        used = self.cache_bytes()
        assert used <= self.CACHE_BYTES + CACHE_SLACK, f"cache dir holds {used} bytes, bound {self.CACHE_BYTES}"

    @invariant()
    def root_shows_no_odd_name(self) -> None:
        if not self.serving:
            return
        names, _ = self.call(lambda: self.list_names(""))
        if isinstance(names, list):
            assert set(names) <= self.model.names_ever(""), names
