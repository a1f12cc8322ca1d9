from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.errors import AccessDenied, NotFound
from nccidfs.namespace import Namespace
from nccidfs.namespace.held import ENTRY_BYTES
from nccidfs.namespace.readahead import RUN_KEYS, SIBLINGS_AHEAD
from nccidfs.namespace.rules import dir_prefix, entries_from_listing, entries_from_tree, is_safe_name, split_path
from nccidfs.objects import Listing, ObjectInfo
from tests.clock import FakeClock
from tests.fakes import MemoryStore, scratch_index

KEYS = {
    "training/ct/Covid1/1.2/1.3/a.dcm": b"a" * 100,
    "training/ct/Covid1/1.2/1.3/b.dcm": b"b" * 50,
    "training/ct-metadata/Covid1/1.2/1.3/a.json": b"{}",
    "training/data/Covid1/status_2020-05-01.json": b'{"Pseudonym": "Covid1"}',
}


def make(store: MemoryStore, ttl: float = 300.0, max_entries: int = 1000,
         root: tuple[str, ...] = ("ct", "ct-metadata", "data"), clock: Clock = REAL_CLOCK) -> Namespace:
    return Namespace(store, "training/", root, ttl, max_entries, scratch_index(), clock=clock)


def test_path_and_key_rules() -> None:
    assert split_path("/") == []
    assert split_path("/ct/Covid1/") == ["ct", "Covid1"]
    assert dir_prefix("training/", ["ct", "Covid1"]) == "training/ct/Covid1/"
    assert dir_prefix("training/", []) == "training/"


def test_directories_and_files_mirror_the_keys() -> None:
    ns = make(MemoryStore(KEYS))
    assert list(ns.list("/")) == ["ct", "ct-metadata", "data"]
    assert list(ns.list("/ct/Covid1/1.2/1.3")) == ["a.dcm", "b.dcm"]
    entry = ns.lookup("/ct/Covid1/1.2/1.3/b.dcm")
    assert not entry.is_dir and entry.size == 50
    assert entry.obj is not None and entry.obj.key == "training/ct/Covid1/1.2/1.3/b.dcm"
    assert ns.lookup("/ct/Covid1").is_dir


def test_missing_names_are_not_found_without_more_requests() -> None:
    store = MemoryStore(KEYS)
    ns = make(store)
    ns.list("/ct/Covid1/1.2/1.3")
    before = store.requests["list"]
    for name in (".Trash", "autorun.inf", "desktop.ini", "c.dcm"):
        with pytest.raises(NotFound):
            ns.lookup(f"/ct/Covid1/1.2/1.3/{name}")
    assert store.requests["list"] == before
    with pytest.raises(NotFound):
        ns.list("/mri")


def test_listing_is_cached_until_ttl_then_listed_again() -> None:
    store, clock = MemoryStore(KEYS), FakeClock()
    ns = make(store, ttl=300.0, clock=clock)
    ns.list("/data/Covid1")
    clock.advance(299.0)
    ns.list("/data/Covid1")
    assert store.requests["list"] == 1
    store.objects["training/data/Covid1/data_2020-06-01.json"] = b"{}"
    assert "data_2020-06-01.json" not in ns.list("/data/Covid1")
    clock.advance(1.0)
    # Past the TTL the old listing is served at once and listed again in the background.
    assert "data_2020-06-01.json" not in ns.list("/data/Covid1")
    deadline = time.monotonic() + 5
    while "data_2020-06-01.json" not in ns.list("/data/Covid1"):
        assert time.monotonic() < deadline, "the stale listing was never revalidated"
        time.sleep(0.02)
    assert store.requests["list"] == 2


def test_a_name_is_fresh_until_its_listing_is_past_its_ttl() -> None:
    """The kernel is told to keep a name as long as the daemon would answer it from the same listing."""
    store, clock = MemoryStore(KEYS), FakeClock()
    ns = make(store, ttl=300.0, clock=clock)
    ns.list("/data/Covid1")
    clock.advance(100.0)
    entries, fresh = ns.list_fresh("/data/Covid1")
    assert "status_2020-05-01.json" in entries and fresh == 200.0
    assert ns.lookup_fresh("/data/Covid1/status_2020-05-01.json")[1] == 200.0
    assert ns.held_fresh("/data/Covid1") == 200.0 and ns.revalidate("/data/Covid1") == 200.0
    assert ns.held_fresh("/ct/Covid1") is None, "never listed"
    clock.advance(250.0)
    assert ns.lookup_fresh("/data/Covid1/status_2020-05-01.json")[1] == 0.0, "past the TTL: listed again"
    assert ns.lookup_fresh("/data")[1] == 0.0, "the probed root is not a listing"


def test_a_new_listing_reports_the_names_it_no_longer_shows() -> None:
    keys = {**KEYS, "training/data/Covid1/data_2020-06-01.json": b"{}", "training/data/Covid1/x/y.json": b"{}"}
    store, clock = MemoryStore(keys), FakeClock()
    ns = make(store, ttl=300.0, clock=clock)
    removed: list[str] = []
    ns.on_removed = removed.append
    assert len(ns.list("/data/Covid1")) == 3
    del store.objects["training/data/Covid1/data_2020-06-01.json"]
    del store.objects["training/data/Covid1/x/y.json"]
    store.objects["training/data/Covid1/x"] = b"now a file"
    clock.advance(300.0)
    ns.list("/data/Covid1")
    deadline = time.monotonic() + 5
    while len(removed) < 2:
        assert time.monotonic() < deadline, "the stale listing was never revalidated"
        time.sleep(0.02)
    assert sorted(removed) == ["/data/Covid1/data_2020-06-01.json", "/data/Covid1/x"]



def test_a_changed_listing_is_reported_once_a_read_finds_it() -> None:
    """The kernel's adapter answers a change reported while it reads a directory by reading it again: at
    the report, the namespace must already serve the new listing."""
    store, clock = MemoryStore(KEYS), FakeClock()
    ns = make(store, ttl=300.0, clock=clock)
    ns.list("/data/Covid1")
    seen_at_report: list[list[str]] = []
    ns.on_listing_change = lambda path, subtree: seen_at_report.append(sorted(ns.list(path)))
    store.objects["training/data/Covid1/data_2020-06-01.json"] = b"{}"
    clock.advance(300.0)
    ns.list("/data/Covid1")  # past the TTL: listed again in the background
    deadline = time.monotonic() + 5
    while not seen_at_report:
        assert time.monotonic() < deadline, "the stale listing was never revalidated"
        time.sleep(0.02)
    assert seen_at_report[0] == ["data_2020-06-01.json", "status_2020-05-01.json"]

def test_invalidate_drops_a_subtree() -> None:
    store = MemoryStore(KEYS)
    ns = make(store)
    ns.list("/ct/Covid1")
    ns.list("/data/Covid1")
    assert ns.invalidate("/ct") == 3  # the flat listing of Covid1 held its study and series too
    ns.list("/ct/Covid1")
    ns.list("/data/Covid1")
    assert store.requests["list"] == 3


def test_listing_cache_is_bounded_by_entries() -> None:
    keys = {f"training/data/Covid{i}/status_2020-01-01.json": b"{}" for i in range(50)}
    store = MemoryStore(keys)
    ns = make(store, max_entries=10)
    for i in range(50):
        ns.list(f"/data/Covid{i}")
    assert ns._listings.size() <= 10 * ENTRY_BYTES


def test_listing_errors_propagate_and_are_not_cached() -> None:
    store = MemoryStore(KEYS, denied_prefixes=("training/ct/",))
    ns = make(store)
    with pytest.raises(AccessDenied):
        ns.list("/ct")
    store.denied_prefixes = ()
    assert list(ns.list("/ct")) == ["Covid1"]


def test_odd_keys_are_skipped_and_the_rest_is_served() -> None:
    prefix = "training/ct/P/"
    objects = tuple(ObjectInfo(prefix + name, 1, "e", 0.0) for name in
                    ("good.dcm", "", "..", ".", "x" * 300, "bad\x00name", "both"))
    listing = Listing((prefix + "both/", prefix + "sub/", prefix + "../", prefix + "a//"), objects)
    entries = entries_from_listing(listing, prefix, 0.0)
    assert sorted(entries) == ["both", "good.dcm", "sub"]
    assert entries["both"].is_dir
    assert not is_safe_name("..") and not is_safe_name("a/b") and not is_safe_name("bell\x07")
    assert is_safe_name("Covid1")


SEGMENTS = st.sampled_from(["a", "b", "Covid1", "x.dcm", "", ".", "..", "bell\x07", "both", "y" * 260])


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join), max_size=25))
def test_a_flat_listing_gives_the_same_tree_as_listing_each_directory(keys: list[str]) -> None:
    store = MemoryStore({f"training/ct/P/{key}": b"x" for key in keys})
    tree = entries_from_tree(store.list_tree("training/ct/P/"), "training/ct/P/", 0.0)
    pending = ["training/ct/P/"]
    while pending:
        prefix = pending.pop()
        expected = entries_from_listing(store.list_dir(prefix), prefix, 0.0)
        assert tree.get(prefix, {}) == expected, prefix
        pending.extend(prefix + name + "/" for name, entry in expected.items() if entry.is_dir)


def wait_for_requests(store: MemoryStore, count: int) -> int:
    """The store's listings once ``count`` are made and no more follow for 0.1 s."""
    deadline = time.monotonic() + 5
    while store.requests["list"] < count:
        assert time.monotonic() < deadline, f"{store.requests['list']} listings, expected {count}"
        time.sleep(0.01)
    time.sleep(0.1)
    return store.requests["list"]


def test_patient_subtrees_are_listed_flat_and_siblings_ahead_of_a_walk() -> None:
    keys = {f"training/ct/Covid{i}/s/t/{n}.dcm": b"x" for i in range(20) for n in range(RUN_KEYS)}
    store = MemoryStore(keys)
    ns = make(store)
    ns.list("/ct")
    start = store.requests["list"]
    ns.list("/ct/Covid0")
    assert wait_for_requests(store, start + 1) == start + 1, "one patient read is no walk"
    ns.list("/ct/Covid1")  # the next sibling: a walk
    walked = wait_for_requests(store, start + 2 + SIBLINGS_AHEAD)
    assert walked == start + 2 + SIBLINGS_AHEAD, "each sibling ahead by its own flat listing"
    assert len(ns.list("/ct/Covid0/s/t")) == RUN_KEYS
    ns.list("/ct/Covid10/s")  # sorted by name, Covid10 follows Covid0 and Covid1
    assert store.requests["list"] == walked, "the flat listings answered the series and the siblings"


def test_a_walk_over_small_siblings_lists_runs_of_them_in_one_listing() -> None:
    keys = {f"training/xray/P{i:03d}/s/t/{n}.dcm": b"x" for i in range(300) for n in range(2)}
    # Names that sort between a sibling and its keys, or beside the folders, must land where they belong.
    keys |= {"training/xray/P100-b/s/1.dcm": b"y", "training/xray/P100.a/s/1.dcm": b"y", "training/xray/x.txt": b"z"}
    store = MemoryStore(keys)
    ns = make(store, root=("xray",))
    names = [name for name, entry in ns.list("/xray").items() if entry.is_dir]
    start = store.requests["list"]
    for name in names:
        listed = ns.list(f"/xray/{name}")
        assert listed == {"s": listed["s"]} and listed["s"].is_dir, name
    for name in names:
        expected = store.list_dir(f"training/xray/{name}/s/")
        assert [e.name for e in ns.list(f"/xray/{name}/s").values()] == sorted(
            [p.rstrip("/").rsplit("/", 1)[1] for p in expected.prefixes] + [o.key.rsplit("/", 1)[1]
                                                                         for o in expected.objects]), name
    made = store.requests["list"] - start - len(names)  # minus this test's own list_dir calls
    assert made <= 2 + 3, f"{made} listings for {len(names)} small siblings"
    assert ns.lookup("/xray/x.txt").size == 1


def test_a_lone_lookup_lists_only_its_patient_and_a_second_one_the_folder_once() -> None:
    keys = {f"training/ct/Covid{i}/s{i}/t/{n}.dcm": b"x" for i in range(30) for n in range(3)}
    keys["training/ct/notes.txt"] = b"n"
    store = MemoryStore(keys)
    ns = make(store)
    assert ns.lookup("/ct/Covid17").is_dir
    assert ns.lookup("/ct/Covid17/s17/t/2.dcm").size == 1
    time.sleep(0.1)
    assert store.requests["list"] == 1, "one flat listing of the patient, no folder, no siblings"
    assert ns.lookup("/ct/Covid3").is_dir  # the second by name: the folder is listed too, in the background
    time.sleep(0.1)
    assert store.requests["list"] == 3
    for i in (3, 25):
        assert ns.lookup(f"/ct/Covid{i}").is_dir
        assert ns.lookup(f"/ct/Covid{i}/s{i}/t/2.dcm").size == 1
    assert store.requests["list"] == 4, "Covid25 is found in the folder's listing: only its subtree is listed"
    assert ns.lookup("/ct/notes.txt").size == 1
    with pytest.raises(NotFound):
        ns.lookup("/ct/Covid99")
    assert store.requests["list"] == 4, "names answered from the folder's listing"


def test_a_fast_walk_lists_each_patient_once() -> None:
    """Siblings queued for a background listing must not be queued again by the next steps of a walk."""
    store = MemoryStore({f"training/data/Covid{i:03d}/status_2020-05-01.json": b"{}" for i in range(120)},
                        list_latency=0.02)
    ns = make(store)
    names = list(ns.list("/data"))
    for name in names:
        assert list(ns.list(f"/data/{name}")) == ["status_2020-05-01.json"]
    time.sleep(0.5)
    assert store.requests["list"] <= 1 + 2 + 2, "the folder, two patients, then runs of the rest"


def test_a_key_listed_twice_in_a_flat_listing_keeps_its_first_object_as_per_directory() -> None:
    prefix = "training/ct/P/"
    first, again = (ObjectInfo(f"{prefix}s/a.json", size, "e", 0.0) for size in (1, 2))
    others = [ObjectInfo(f"{prefix}s/{name}.json", 3, "e", 0.0) for name in ("b", "c")]
    listing = Listing((), (first, *others, again))
    tree = entries_from_tree(listing, prefix, 0.0)
    assert tree[f"{prefix}s/"]["a.json"].size == 1
    assert tree[f"{prefix}s/"] == entries_from_listing(Listing((), (first, *others, again)), f"{prefix}s/", 0.0)
