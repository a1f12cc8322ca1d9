from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.errors import TransientError
from nccidfs.index import ListingIndex
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry, ObjectInfo
from tests.clock import FakeClock
from tests.fakes import FailingStore, MemoryStore

MD5 = "0123456789abcdef0123456789abcdef"
KEYS = {
    "training/ct/Covid1/1.2/1.3/a.dcm": b"a" * 100,
    "training/data/Covid1/status_2020-05-01.json": b'{"Pseudonym": "Covid1"}',
}


TTL = 300.0


def namespace(store: MemoryStore | FailingStore, path: Path, clock: Clock = REAL_CLOCK) -> Namespace:
    return Namespace(store, "training/", ["ct", "data"], TTL, 10_000, ListingIndex(path / "index.db", {"bucket": "b"}),
                     clock=clock)


def test_a_remount_answers_from_the_index_without_listing(tmp_path: Path) -> None:
    first = MemoryStore(KEYS)
    ns = namespace(first, tmp_path)
    entry = ns.lookup("/ct/Covid1/1.2/1.3/a.dcm")
    assert first.requests["list"] == 1  # only the parent: lookups never list ancestors of their own accord

    second = MemoryStore(KEYS)
    again = namespace(second, tmp_path)
    assert again.lookup("/ct/Covid1/1.2/1.3/a.dcm") == entry
    assert second.requests["list"] == 0
    assert list(again.list("/data/Covid1")) == ["status_2020-05-01.json"]


def test_rows_of_an_earlier_run_are_refreshed_in_the_background(tmp_path: Path) -> None:
    clock = FakeClock()
    namespace(MemoryStore(KEYS), tmp_path, clock).list("/data/Covid1")
    clock.advance(TTL)
    grown = MemoryStore({**KEYS, "training/data/Covid1/data_2020-06-01.json": b"{}"})
    ns = namespace(grown, tmp_path, clock)
    assert list(ns.list("/data/Covid1")) == ["status_2020-05-01.json"]
    deadline = time.monotonic() + 5
    while "data_2020-06-01.json" not in ns.list("/data/Covid1"):
        assert time.monotonic() < deadline, "background refresh never showed the new object"
        time.sleep(0.05)


def test_offline_serves_the_saved_listing_and_fails_without_one(tmp_path: Path) -> None:
    store, clock = FailingStore(KEYS), FakeClock()
    ns = namespace(store, tmp_path, clock)
    ns.list("/data/Covid1")
    store.fail("list")  # the endpoint stops answering listings
    clock.advance(TTL)
    assert list(ns.list("/data/Covid1")) == ["status_2020-05-01.json"]
    with pytest.raises(TransientError):
        ns.list("/ct/Covid1")


def test_invalidate_forgets_index_rows_too(tmp_path: Path) -> None:
    store = MemoryStore(KEYS)
    ns = namespace(store, tmp_path)
    ns.list("/data/Covid1")
    store.objects["training/data/Covid1/data_2020-06-01.json"] = b"{}"
    assert ns.invalidate("/data") >= 1
    assert "data_2020-06-01.json" in ns.list("/data/Covid1")


class RacedIndex(ListingIndex):
    """An index whose rows a reader reads back just before ``delete_under`` removes them."""

    reader: Callable[[], object] = staticmethod(lambda: None)

    def delete_under(self, prefix: str) -> int:
        self.reader()
        return super().delete_under(prefix)


def test_a_read_of_the_index_that_races_a_refresh_does_not_bring_the_old_listing_back(tmp_path: Path) -> None:
    index = RacedIndex(tmp_path / "index.db", {"bucket": "b"})
    namespace(MemoryStore(KEYS), tmp_path).list("/data/Covid1")  # saved in the index
    grown = MemoryStore({**KEYS, "training/data/Covid1/data_2020-06-01.json": b"{}"})
    ns = Namespace(grown, "training/", ["ct", "data"], 300.0, 10_000, index)
    assert list(ns.list("/data/Covid1")) == ["status_2020-05-01.json"]  # from the index
    index.reader = lambda: ns.list("/data/Covid1")  # between the memory drop and the index delete
    ns.invalidate("/data")
    assert list(ns.list("/data/Covid1")) == ["data_2020-06-01.json", "status_2020-05-01.json"]


def test_an_index_of_another_endpoint_or_bucket_is_not_used(tmp_path: Path) -> None:
    one = {"endpoint": "http://127.0.0.1:1", "bucket": "one"}
    ListingIndex(tmp_path / "index.db", one).put([("training/ct/", {})], time.time())
    assert ListingIndex(tmp_path / "index.db", one).count() == 1
    assert ListingIndex(tmp_path / "index.db", {**one, "bucket": "two"}).count() == 0
    ListingIndex(tmp_path / "index.db", one).put([("training/ct/", {})], time.time())
    assert ListingIndex(tmp_path / "index.db", {**one, "endpoint": "http://127.0.0.1:2"}).count() == 0


def test_a_folder_larger_than_the_memory_bound_is_looked_up_row_by_row(tmp_path: Path) -> None:
    keys = {f"training/data/Big/f{i:06d}.json": b"{}" for i in range(30_000)}
    store = MemoryStore(keys)
    ns = Namespace(store, "training/", ["data"], 300.0, 1000, ListingIndex(tmp_path / "index.db", {}))
    assert len(ns.list("/data/Big")) == 30_000
    lists = store.requests["list"]
    started = time.perf_counter()
    for i in range(0, 30_000, 30):
        assert ns.lookup(f"/data/Big/f{i:06d}.json").size == 2
    per_lookup = (time.perf_counter() - started) / 1000
    assert store.requests["list"] == lists
    assert per_lookup < 0.005, f"{per_lookup * 1e3:.2f} ms per lookup"
    assert ns.cached_entries() < 1000


@pytest.mark.parametrize(("etag", "md5"), [
    ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("0123456789abcdef0123456789abcdef", None), ("0123456789abcdef0123456789abcdef-3", None),
    ("0123456789ABCDEF0123456789ABCDEF", None), ("not-hex-but-32-characters-long!!", None), ("", None)])
def test_etags_and_md5s_come_back_as_they_were_listed(tmp_path: Path, etag: str, md5: str | None) -> None:
    index = ListingIndex(tmp_path / "index.db", {})
    obj = ObjectInfo("training/ct/P/a.dcm", 7, etag, 1_600_000_000.5, md5)
    index.put([("training/ct/P/", {"a.dcm": Entry("a.dcm", False, 7, obj.mtime, obj)})], time.time())
    found = index.lookup("training/ct/P/", "a.dcm", 0.0)
    assert found is not None and found.obj == obj
    stored = index.get("training/ct/P/", 0.0)
    assert stored is not None and stored[1]["a.dcm"].obj == obj


@pytest.mark.parametrize("in_one_statement", [True, False])
def test_an_index_written_before_md5s_were_listed_gives_the_md5_of_each_packed_etag(
        tmp_path: Path, in_one_statement: bool) -> None:
    """An earlier version stored the same columns, an MD5 ETag packed as its 16 bytes: such a row reads
    back with its MD5, so the cache still checks objects listed before an upgrade."""
    index = ListingIndex(tmp_path / "index.db", {})
    index._reads_in_one_statement = in_one_statement
    index.put([("training/ct/P/", {})], time.time())
    with sqlite3.connect(tmp_path / "index.db") as db:
        db.execute("INSERT INTO entries VALUES (1, 'a.dcm', 7, ?, 1.0), (1, 'b.dcm', 8, 'abc-2', 2.0)",
                   (bytes.fromhex(MD5),))
    stored = index.get("training/ct/P/", 0.0)
    assert stored is not None
    assert [(e.obj.etag, e.obj.md5) for e in stored[1].values() if e.obj] == [(MD5, MD5), ("abc-2", None)]


@pytest.mark.parametrize("count", [0, 1, 4, 5, 255, 256, 257, 341, 1000])
def test_a_listing_of_any_length_comes_back_whole_after_a_replacement(tmp_path: Path, count: int) -> None:
    """Rows go in by statements of several rows each: every remainder of those batches must land."""
    index = ListingIndex(tmp_path / "index.db", {})
    prefix = "training/ct/P/"

    def listing(size: int) -> dict[str, Entry]:
        entries = {f"d{n:04}": Entry(f"d{n:04}", True, mtime=5.0) for n in range(size % 3)}
        for n in range(size - len(entries)):
            etag, md5 = (f"{n:032x}", f"{n:032x}") if n % 2 else (f"{n:x}-2", None)
            obj = ObjectInfo(f"{prefix}f{n:04}.dcm", n, etag, 1_600_000_000.0 + n, md5)
            entries[f"f{n:04}.dcm"] = Entry(f"f{n:04}.dcm", False, n, obj.mtime, obj)
        return entries

    index.put([(prefix, listing(count + 7))], time.time())
    index.put([(prefix, listing(count))], time.time())
    stored = index.get(prefix, 5.0)
    assert stored is not None and stored[1] == listing(count)
    assert index.head(prefix) == (stored[0], count)


@pytest.mark.parametrize("in_one_statement", [True, False])
def test_a_listing_comes_back_with_exactly_its_names_etags_and_times(tmp_path: Path, in_one_statement: bool) -> None:
    """Both ways a directory is read (one JSON document where SQLite prints times exactly, else row by
    row) give back the very floats and strings stored."""
    index = ListingIndex(tmp_path / "index.db", {})
    if not in_one_statement:
        index._reads_in_one_statement = False  # what a SQLite that prints times inexactly gets
    prefix = "training/ct/P/"
    names = ['a"b', "back\\\\slash", "ünïcode", "😀", "x'y", "sp ace", "\u2028", "z" * 255, "[1, 2]"]
    entries: dict[str, Entry] = {"dir": Entry("dir", True, mtime=3.0)}
    for n, name in enumerate(names):
        mtime = 1_620_000_000.123 + n * 1.001 if n % 3 else 0.1 + n
        etag, md5 = (MD5, MD5) if n % 2 else (f"etag-ü-{n}", None)
        obj = ObjectInfo(prefix + name, n, etag, mtime, md5)
        entries[name] = Entry(name, False, n, mtime, obj)
    index.put([(prefix, entries), ("training/ct/Q/", {})], time.time())
    stored = index.get(prefix, 3.0)
    assert stored is not None and stored[1] == entries and list(stored[1]) == sorted(entries)
    empty = index.get("training/ct/Q/", 3.0)
    assert empty is not None and empty[1] == {}
    assert index.get("training/ct/R/", 3.0) is None
