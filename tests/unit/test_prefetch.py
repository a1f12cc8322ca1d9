"""Series prefetch decides from what the reader does: a walk of a series in order, never a random open."""

from __future__ import annotations

import dataclasses
import time

from nccidfs.prefetch import IN_ORDER
from tests.core import READ, Cores
from tests.fakes import FailingStore

SERIES = "training/ct/Covid2/2.1/2.2"
NAMES = [f"{n:02d}.dcm" for n in range(8)]
KEYS = {f"{SERIES}/{name}": bytes([n]) * 20_000 for n, name in enumerate(NAMES)}


def opened_with_prefetch(cores: Cores, names: list[str]) -> FailingStore:
    """Open (and close) the images in this order, with the series prefetcher on; reads nothing."""
    store = FailingStore(KEYS)
    filesystem = cores(store, read=dataclasses.replace(READ, prefetch=True, prefetch_threads=2)).fs
    for name in names:
        filesystem.release(filesystem.open(f"/{SERIES[len('training/'):]}/{name}").handle)
    return store


def test_a_walk_of_a_series_in_order_prefetches_the_other_headers(cores: Cores) -> None:
    store = opened_with_prefetch(cores, NAMES[:IN_ORDER])
    give_up = time.monotonic() + 5
    while {key for key, _start, _end in store.ranges} != {f"{SERIES}/{name}" for name in NAMES[IN_ORDER:]}:
        assert time.monotonic() < give_up, f"headers fetched: {sorted(store.ranges)}"
        time.sleep(0.01)
    assert all((start, end) == (0, 4096) for _key, start, end in store.ranges), "more than a header was fetched"


def test_opens_out_of_order_prefetch_nothing(cores: Cores) -> None:
    shuffled = [NAMES[i] for i in (5, 1, 6, 2, 7, 0, 3)]  # never IN_ORDER consecutive images in a row
    store = opened_with_prefetch(cores, shuffled + NAMES[:IN_ORDER - 1])
    time.sleep(0.3)  # what a prefetch would have started by now
    assert store.ranges == []
