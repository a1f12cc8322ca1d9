from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nccidfs import fetch
from nccidfs.cache import DiskCache
from nccidfs.cachedir import prepare
from nccidfs.config import ReadConfig
from nccidfs.errors import CorruptData, ObjectChanged, TransientError
from nccidfs.fetch import WHOLE_READ, Fetcher, ReadCursor
from tests.fakes import FailingStore, MemoryStore

BLOCK = 4096
BODY = os.urandom(BLOCK * 40 + 123)
KEY = "training/xray/Covid1/s/t/x.dcm"


def make(tmp_path: Path, store: MemoryStore | FailingStore, cache_size: int = 1 << 24, deadline: float = 5.0,
         max_window: int = BLOCK * 16, **read: int | bool) -> tuple[Fetcher, DiskCache]:
    config = ReadConfig(block_size=BLOCK, initial_window=BLOCK * 4, max_window=max_window, part_size=BLOCK * 8,
                        fetch_threads=4, **read)
    cache = DiskCache(prepare(tmp_path / "cache"), cache_size, "b", BLOCK)
    return Fetcher(store, cache, config, deadline), cache


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reads=st.lists(st.tuples(st.integers(0, len(BODY) + 10), st.integers(1, BLOCK * 12)), min_size=1,
                      max_size=12))
def test_random_reads_return_the_object_bytes(tmp_path: Path, reads: list[tuple[int, int]]) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path / str(time.monotonic_ns()), store)
    entry = cache.pin(store.info(KEY))
    cursor = ReadCursor()
    for offset, size in reads:
        assert fetcher.read(entry, offset, size, cursor) == BODY[offset:offset + size]
    cache.unpin(entry)
    fetcher.shutdown()


def test_first_read_fetches_only_the_blocks_it_needs(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    assert fetcher.read(entry, 0, 1000, ReadCursor()) == BODY[:1000]
    assert store.ranges == [(KEY, 0, BLOCK)]


def test_sequential_reads_grow_a_read_ahead_window(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    cursor = ReadCursor()
    offset = 0
    while offset < len(BODY):
        assert fetcher.read(entry, offset, BLOCK, cursor) == BODY[offset:offset + BLOCK]
        offset += BLOCK
    assert cursor.window == BLOCK * 16
    assert store.requests["get"] < 40 // 2, "read-ahead should batch blocks into larger GETs"
    fetched = sorted((start, end) for _, start, end in store.ranges)
    assert all(a[1] <= b[0] for a, b in zip(fetched, fetched[1:], strict=False)), "no byte fetched twice"


def test_a_full_window_stays_ahead_of_a_sequential_reader(tmp_path: Path) -> None:
    """Once the window is at its largest, a part used up is asked for again at once: the bytes fetched
    ahead of the reader never drop below the window less one part (a refill at half the window would let
    them fall to half, and the GETs would come in waves)."""
    body = os.urandom(BLOCK * 200)
    store = MemoryStore({KEY: body})
    fetcher, cache = make(tmp_path, store, max_window=BLOCK * 32)
    entry = cache.pin(store.info(KEY))
    cursor = ReadCursor()
    lowest = len(body)
    for offset in range(0, BLOCK * 150, BLOCK):
        assert fetcher.read(entry, offset, BLOCK, cursor) == body[offset:offset + BLOCK]
        if cursor.window == BLOCK * 32:
            lowest = min(lowest, cursor.ahead_until - cursor.next_offset)
    assert lowest >= BLOCK * (32 - 8)
    fetched = sorted((start, end) for _, start, end in store.ranges)
    assert all(a[1] <= b[0] for a, b in zip(fetched, fetched[1:], strict=False)), "no byte fetched twice"


def test_reads_that_arrive_out_of_order_keep_the_read_ahead_window(tmp_path: Path) -> None:
    """The kernel sends a sequential reader's read-ahead as several requests at once, answered by several
    threads, so they arrive out of order: the window grows as for reads in order, the bytes fetched ahead
    stay ahead, and only a read away from the stream starts it again."""
    body = os.urandom(BLOCK * 200)
    store = MemoryStore({KEY: body})
    fetcher, cache = make(tmp_path, store, max_window=BLOCK * 32, reorder_slack=BLOCK * 4)
    entry = cache.pin(store.info(KEY))
    cursor = ReadCursor()
    lowest = len(body)
    for first in range(0, 120, 4):  # each group of four blocks arrives in the order 1, 0, 3, 2
        for block in (first + 1, first, first + 3, first + 2):
            assert fetcher.read(entry, block * BLOCK, BLOCK, cursor) == body[block * BLOCK:(block + 1) * BLOCK]
            if cursor.window == BLOCK * 32:
                lowest = min(lowest, cursor.ahead_until - cursor.next_offset)
    assert cursor.window == BLOCK * 32
    assert lowest >= BLOCK * (32 - 8)
    fetched = sorted((start, end) for _, start, end in store.ranges)
    assert all(a[1] <= b[0] for a, b in zip(fetched, fetched[1:], strict=False)), "no byte fetched twice"
    fetcher.read(entry, BLOCK * 190, BLOCK, cursor)  # past the window fetched ahead and the slack: another reader
    assert cursor.window == 0
    fetcher.read(entry, BLOCK * 196, BLOCK, cursor)  # ahead, but further than the slack allows
    assert cursor.window == 0
    fetcher.read(entry, BLOCK * 10, BLOCK, cursor)  # further back than the slack allows
    assert cursor.window == 0 and cursor.next_offset == BLOCK * 11


def test_concurrent_readers_share_one_download(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY}, latency=0.2)
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(fetcher.read(entry, 0, BLOCK * 6)))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [BODY[:BLOCK * 6]] * 8
    assert store.requests["get"] == 1


def test_fetch_blocks_completes_the_object(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    fetcher.read(entry, BLOCK * 3, 10)
    assert fetcher.fetch_blocks(entry, 0, entry.block_count) == len(BODY) - BLOCK
    assert cache.is_complete(entry)
    before = store.requests["get"]
    assert fetcher.read(entry, 0, len(BODY)) == BODY
    assert store.requests["get"] == before


def test_reads_are_served_uncached_when_the_cache_has_no_room(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store, cache_size=3 * BLOCK)  # about the directories alone
    entry = cache.pin(store.info(KEY))
    assert fetcher.read(entry, 100, BLOCK * 5) == BODY[100:100 + BLOCK * 5]
    assert cache.used_bytes <= cache.size_bytes


def test_a_slow_store_gives_an_error_within_the_deadline(tmp_path: Path) -> None:
    store = FailingStore({KEY: BODY})
    store.fail("get", KEY, error=None, stall=3.0)
    fetcher, cache = make(tmp_path, store, deadline=0.5)
    entry = cache.pin(store.info(KEY))
    started = time.monotonic()
    with pytest.raises(TransientError):
        fetcher.read(entry, 0, 10)
    assert time.monotonic() - started < 1.5


def test_a_replaced_object_is_an_error_not_mixed_bytes(tmp_path: Path) -> None:
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    assert fetcher.read(entry, 0, 10) == BODY[:10]
    store.objects[KEY] = b"new" + BODY
    with pytest.raises(ObjectChanged):
        fetcher.read(entry, BLOCK * 10, 10)


def test_a_whole_file_reader_gets_a_small_object_in_one_get(tmp_path: Path) -> None:
    small = BODY[:BLOCK * 6 + 7]  # fits in one part (8 blocks)
    store = MemoryStore({KEY: small})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    cursor = ReadCursor()
    assert fetcher.read(entry, 0, WHOLE_READ, cursor) == small
    assert fetcher.fetch_blocks(entry, 0, entry.block_count) == 0  # waits for the part to be stored
    assert store.ranges == [(KEY, 0, len(small))]
    assert cache.is_complete(entry) and entry.verified  # checked against its MD5 on the way in
    cache.unpin(entry)
    fetcher.shutdown()


class ZeroingStore(MemoryStore):
    """Sends zeros of the right length for the right ETag: bytes damaged on the way."""

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        return bytes(len(super().get_range(key, start, end, etag)))


def test_an_object_whose_bytes_miss_their_md5_is_an_error_and_not_cached(tmp_path: Path) -> None:
    store = ZeroingStore({KEY: BODY[:BLOCK * 6 + 7]})
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    discarded: list[str] = []
    fetcher.on_discard = discarded.append
    with pytest.raises(CorruptData):
        fetcher.read(entry, 0, WHOLE_READ, ReadCursor())
    assert discarded == [KEY]
    assert entry.cached_bytes == 0 and not list((tmp_path / "cache").rglob("*.data"))
    cache.unpin(entry)
    fetcher.shutdown()


def test_with_verification_off_an_object_is_served_and_cached_as_s3_sent_it(tmp_path: Path) -> None:
    """--no-verify trades the MD5 check for CPU: the same damaged answer is then served, not refused."""
    size = BLOCK * 6 + 7
    store = ZeroingStore({KEY: BODY[:size]})
    fetcher, cache = make(tmp_path, store, verify=False)
    entry = cache.pin(store.info(KEY))
    assert fetcher.read(entry, 0, WHOLE_READ, ReadCursor()) == bytes(size)
    cache.unpin(entry)
    fetcher.shutdown()


def test_an_object_read_once_is_not_stored_and_one_in_the_cache_is_not_fetched(tmp_path: Path) -> None:
    """The images a generated file is made from: the file made is kept, not its images too."""
    store = MemoryStore({KEY: BODY, OTHER: BODY[:BLOCK * 3]})
    fetcher, cache = make(tmp_path, store)
    assert fetcher.read_once(store.info(KEY)) == BODY
    assert store.ranges == [(KEY, 0, len(BODY))]  # one GET of the whole object
    assert not list((tmp_path / "cache").rglob("*.data")) and cache.stats()["objects"] == 0
    assert fetcher.read_start(store.info(OTHER), BLOCK * 3) == BODY[:BLOCK * 3]
    gets = len(store.ranges)
    assert fetcher.read_once(store.info(OTHER)) == BODY[:BLOCK * 3]  # cached: no GET
    assert len(store.ranges) == gets
    fetcher.shutdown()


def test_an_object_read_to_store_later_is_returned_then_stored_once(tmp_path: Path) -> None:
    """The twins a view is planned from: the reader has the bytes at once, the cache has them a moment later,
    and a second read sends no GET."""
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    assert fetcher.read_store_later(store.info(KEY)) == BODY
    assert store.ranges == [(KEY, 0, len(BODY))]
    fetcher._storer.submit(lambda: None).result(timeout=5)  # the store, queued first, is done
    entry = cache.pin(store.info(KEY))
    assert cache.is_complete(entry) and cache.verify_whole(entry)
    cache.unpin(entry)
    assert fetcher.read_store_later(store.info(KEY)) == BODY
    assert len(store.ranges) == 1
    fetcher.shutdown()


def test_objects_read_to_store_later_are_stored_by_a_thread_that_runs_only_on_idle_cores(tmp_path: Path) -> None:
    """The stores are file creations, costly system calls: a reader waiting for a core must not wait for them."""
    store = MemoryStore({KEY: BODY})
    fetcher, _ = make(tmp_path, store)
    assert fetcher.read_store_later(store.info(KEY)) == BODY
    storer = fetcher._storer.submit(threading.get_native_id).result(timeout=5)
    assert os.sched_getscheduler(storer) == os.SCHED_IDLE
    assert os.sched_getscheduler(threading.get_native_id()) != os.SCHED_IDLE  # the reader's own is untouched
    fetcher.shutdown()


def test_objects_waiting_to_be_stored_are_bounded_in_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past STORE_LATER_BYTES waiting, the reader stores its object itself before it returns."""
    monkeypatch.setattr(fetch, "STORE_LATER_BYTES", len(BODY) - 1)
    store = MemoryStore({KEY: BODY})
    fetcher, cache = make(tmp_path, store)
    release = threading.Event()
    fetcher._storer.submit(release.wait, 5)  # the store thread is busy: nothing queued would be stored yet
    assert fetcher.read_store_later(store.info(KEY)) == BODY
    entry = cache.pin(store.info(KEY))
    assert cache.is_complete(entry)  # stored by the reader
    cache.unpin(entry)
    release.set()
    fetcher.shutdown()


def test_an_object_read_once_is_checked_against_its_md5(tmp_path: Path) -> None:
    store = ZeroingStore({KEY: BODY[:BLOCK * 6 + 7]})
    fetcher, _ = make(tmp_path, store)
    discarded: list[str] = []
    fetcher.on_discard = discarded.append
    with pytest.raises(CorruptData):
        fetcher.read_once(store.info(KEY))
    assert discarded == [KEY]
    fetcher.shutdown()


OTHER = "training/ct/Covid2/s/t/y.dcm"


def test_a_key_whose_gets_fail_fails_only_its_own_reads(tmp_path: Path) -> None:
    store = FailingStore({KEY: BODY, OTHER: BODY[:BLOCK]})
    fault = store.fail("get", KEY)
    fetcher, cache = make(tmp_path, store)
    failing, other = cache.pin(store.info(KEY)), cache.pin(store.info(OTHER))
    with pytest.raises(TransientError):
        fetcher.read(failing, 0, 10)
    assert fetcher.read(other, 0, 10) == BODY[:10]
    assert fault.hits == 1 and store.requests["get"] == 1  # the failed GET never reached the store
    fetcher.shutdown()


def test_a_failure_answers_the_kernels_retry_at_once_and_is_forgotten_after_a_moment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("nccidfs.fetch.FAILURE_MEMORY", 0.2)
    store = FailingStore({KEY: BODY})
    fault = store.fail("get", KEY, times=1)
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    with pytest.raises(TransientError):
        fetcher.read(entry, 0, 10)
    with pytest.raises(TransientError):
        fetcher.read(entry, 0, 10)
    assert fault.hits == 1  # the retry was answered from the failure remembered, without a GET
    time.sleep(0.3)
    assert fetcher.read(entry, 0, 10) == BODY[:10]
    assert fetcher.fetch_blocks(entry, 0, 1) == 0  # its block was stored as any other: nothing left to fetch
    fetcher.shutdown()


def test_a_replaced_object_is_not_remembered_as_a_failure(tmp_path: Path) -> None:
    """Only transient failures answer the next read at once; a changed object is asked again."""
    store = FailingStore({KEY: BODY})
    fault = store.fail("get", KEY, error=ObjectChanged, times=1)
    fetcher, cache = make(tmp_path, store)
    entry = cache.pin(store.info(KEY))
    with pytest.raises(ObjectChanged):
        fetcher.read(entry, 0, 10)
    assert fetcher.read(entry, 0, 10) == BODY[:10] and fault.hits == 1 and store.requests["get"] == 1
    fetcher.shutdown()


def test_reads_go_on_while_listings_fail_and_one_stalled_object_holds_up_no_other(tmp_path: Path) -> None:
    store = FailingStore({KEY: BODY, OTHER: BODY[:BLOCK]})
    store.fail("list")
    store.fail("get", "training/xray/", error=None, stall=3.0)
    fetcher, cache = make(tmp_path, store, deadline=0.5)
    stalled, other = cache.pin(store.info(KEY)), cache.pin(store.info(OTHER))
    with pytest.raises(TransientError):
        store.list_dir("training/ct/")
    started = time.monotonic()
    with pytest.raises(TransientError):
        fetcher.read(stalled, 0, 10)
    assert fetcher.read(other, 0, 10) == BODY[:10]
    assert time.monotonic() - started < 1.5
    fetcher.shutdown()
