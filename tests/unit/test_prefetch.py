"""Series prefetch decides from what the reader does: a walk of a series in order, never a random open."""

from __future__ import annotations

import time
from pathlib import Path

from nccidfs.fs import FileSystem
from nccidfs.prefetch import IN_ORDER, SeriesPrefetcher
from tests.fakes import FailingStore
from tests.unit.test_fs import make_fs

SERIES = "training/ct/Covid2/2.1/2.2"
NAMES = [f"{n:02d}.dcm" for n in range(8)]
KEYS = {f"{SERIES}/{name}": bytes([n]) * 20_000 for n, name in enumerate(NAMES)}


def opened_with_prefetch(tmp_path: Path, names: list[str]) -> tuple[FailingStore, FileSystem, SeriesPrefetcher]:
    """Open (and close) the images in this order, with a prefetcher listening; reads nothing."""
    store = FailingStore(KEYS)
    filesystem = make_fs(tmp_path, store)
    prefetcher = SeriesPrefetcher(filesystem.namespace, filesystem.cache, filesystem.fetcher, 2)
    filesystem.add_open_listener(prefetcher.opened)
    filesystem.add_read_listener(prefetcher.reading)
    for name in names:
        filesystem.release(filesystem.open(f"/{SERIES[len('training/'):]}/{name}").handle)
    return store, filesystem, prefetcher


def test_a_walk_of_a_series_in_order_prefetches_the_other_headers(tmp_path: Path) -> None:
    store, _filesystem, prefetcher = opened_with_prefetch(tmp_path, NAMES[:IN_ORDER])
    give_up = time.monotonic() + 5
    while {key for key, _start, _end in store.ranges} != {f"{SERIES}/{name}" for name in NAMES[IN_ORDER:]}:
        assert time.monotonic() < give_up, f"headers fetched: {sorted(store.ranges)}"
        time.sleep(0.01)
    assert all((start, end) == (0, 4096) for _key, start, end in store.ranges), "more than a header was fetched"
    prefetcher.shutdown()


def test_opens_out_of_order_prefetch_nothing(tmp_path: Path) -> None:
    shuffled = [NAMES[i] for i in (5, 1, 6, 2, 7, 0, 3)]  # never IN_ORDER consecutive images in a row
    store, _filesystem, prefetcher = opened_with_prefetch(tmp_path, shuffled + NAMES[:IN_ORDER - 1])
    time.sleep(0.3)  # what a prefetch would have started by now
    assert store.ranges == []
    prefetcher.shutdown()
