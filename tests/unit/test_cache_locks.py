"""The lock order that nccidfs.cache's docstring states, checked under concurrent reads, writes, evictions
and pins: every lock of the fetcher and the cache is replaced by one that knows its rank and records any
acquisition while a lock of the same or a later rank is held by the same thread."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from nccidfs.cache import CacheEntry, DiskCache
from nccidfs.cachedir import prepare
from nccidfs.config import ReadConfig
from nccidfs.fetch import Fetcher, ReadCursor
from tests.fakes import MemoryStore

BLOCK = 4096
OBJECTS = {f"training/ct/p{i}/s/{i}.dcm": os.urandom(BLOCK * (6 + i % 5) + i) for i in range(12)}
# The order of nccidfs.cache's docstring, outermost first.
PARTS, ENTRY, CACHE, COUNTERS = 1, 2, 3, 4
WORKERS = 6
OPERATIONS = 60
# Far more than the workers need (about a second); a deadlock fails the test after it.
RUN_SECONDS = 30.0


class RankedLock:
    """A lock with a rank; taking it while holding one of the same or a later rank is a violation."""

    held = threading.local()

    def __init__(self, rank: int, violations: list[str], taken: Counter[int]) -> None:
        self.rank = rank
        self._lock = threading.Lock()
        self._violations = violations
        self._taken = taken

    def _stack(self) -> list[int]:
        if not hasattr(self.held, "ranks"):
            self.held.ranks = []
        stack: list[int] = self.held.ranks
        return stack

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        stack = self._stack()
        if any(rank >= self.rank for rank in stack):
            self._violations.append(f"rank {self.rank} taken while holding {stack}")
        acquired = self._lock.acquire(blocking, timeout)
        if acquired:
            stack.append(self.rank)
            self._taken[self.rank] += 1
        return acquired

    def release(self) -> None:
        stack = self._stack()
        del stack[len(stack) - 1 - stack[::-1].index(self.rank)]
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()


class Ranked:
    """The fetcher and cache under test, every lock ranked, and what the locks saw."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bound: int) -> None:
        self.violations: list[str] = []
        self.taken: Counter[int] = Counter()
        original_init = CacheEntry.__init__

        def ranked_init(entry: CacheEntry, *args: Any, **kwargs: Any) -> None:
            original_init(entry, *args, **kwargs)
            entry._lock = self.lock(ENTRY)  # type: ignore[assignment]

        monkeypatch.setattr(CacheEntry, "__init__", ranked_init)
        self.store = MemoryStore(OBJECTS, latency=0.001)
        self.cache = DiskCache(prepare(tmp_path / "cache"), bound, "b", BLOCK)
        self.cache._lock = self.lock(CACHE)  # type: ignore[assignment]
        config = ReadConfig(block_size=BLOCK, initial_window=BLOCK * 2, max_window=BLOCK * 8, part_size=BLOCK * 4,
                            fetch_threads=4)
        self.fetcher = Fetcher(self.store, self.cache, config, 10.0)
        self.fetcher._parts_lock = self.lock(PARTS)  # type: ignore[assignment]
        self.fetcher._counter_lock = self.lock(COUNTERS)  # type: ignore[assignment]

    def lock(self, rank: int) -> RankedLock:
        return RankedLock(rank, self.violations, self.taken)


@pytest.fixture
def ranked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ranked]:
    # Room for about three of the twelve objects: most writes evict.
    under_test = Ranked(tmp_path, monkeypatch, bound=BLOCK * 40)
    yield under_test
    under_test.fetcher.shutdown()


def work(ranked: Ranked, seed: int, failures: list[BaseException]) -> None:
    """Reads at random offsets through open files, whole-object reads, prefetches, bare pins and
    rebalances, as the filesystem, the prefetcher and the views do."""
    rng = random.Random(seed)
    fetcher, cache = ranked.fetcher, ranked.cache
    try:
        for _ in range(OPERATIONS):
            key = rng.choice(list(OBJECTS))
            body, info = OBJECTS[key], ranked.store.info(key)
            action = rng.randrange(5)
            if action == 0:
                assert fetcher.read_start(info, len(body)) == body
            elif action == 1:
                with fetcher.pinned(info) as entry:
                    fetcher.fetch_blocks(entry, 0, entry.block_count)
            elif action == 2:
                entry = fetcher.pin(info)
                cache.stats()
                fetcher.unpin(entry)
            elif action == 3:
                cache.rebalance()
            else:
                with fetcher.pinned(info) as entry:
                    cursor = ReadCursor()
                    offset = rng.randrange(len(body))
                    for start in range(offset, min(len(body), offset + BLOCK * 6), BLOCK):
                        assert fetcher.read(entry, start, BLOCK, cursor) == body[start:start + BLOCK]
    except BaseException as error:  # handed to the test's thread
        failures.append(error)


@pytest.mark.parametrize("seed", range(3))
def test_locks_are_taken_in_the_documented_order_under_concurrent_use(ranked: Ranked, seed: int) -> None:
    failures: list[BaseException] = []
    threads = [threading.Thread(target=work, args=(ranked, seed * WORKERS + i, failures), daemon=True)
               for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + RUN_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not ranked.violations, ranked.violations[:5]
    assert not any(thread.is_alive() for thread in threads), "a worker hung: a deadlock?"
    assert not failures, failures[0]
    assert set(ranked.taken) == {PARTS, ENTRY, CACHE, COUNTERS}, "every lock was exercised"
    assert ranked.cache.evictions > 0, "the cache never evicted: the test did not test eviction"


def test_a_lock_taken_out_of_order_is_caught(ranked: Ranked) -> None:
    entry = ranked.fetcher.pin(ranked.store.info(next(iter(OBJECTS))))
    with ranked.cache._lock, entry._lock:
        pass
    ranked.fetcher.unpin(entry)
    assert ranked.violations == [f"rank {ENTRY} taken while holding [{CACHE}]"]
