"""Listings packed for memory: a packed listing, or one held among its patient's, reads back as it was."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nccidfs.namespace.held import ENTRY_BYTES, PACKED_ENTRIES, HeldListings
from nccidfs.namespace.packed import pack, unpack
from nccidfs.objects import Entry, ObjectInfo

PREFIX = "training/xray/P1/"
MOUNTED = 1_700_000_000.5
NAMES = st.text(min_size=1, max_size=12)
TIMES = st.floats(allow_nan=False) | st.just(MOUNTED)
SIZES = st.integers(min_value=-(2**70), max_value=2**70) | st.just(0)
OPTIONAL_TEXT = st.none() | st.text(max_size=8)


@st.composite
def entries(draw: st.DrawFn, prefix: str = PREFIX) -> dict[str, Entry]:
    """Listings as the namespace makes them (sub-directories, files named by their keys), and odd ones."""
    listing: dict[str, Entry] = {}
    for name in draw(st.lists(NAMES, max_size=PACKED_ENTRIES + 4, unique=True)):
        kind = draw(st.sampled_from(["dir", "file", "other"]))
        if kind == "dir":
            listing[name] = Entry(name, True, mtime=MOUNTED)
        elif kind == "file":
            size, mtime, etag = draw(SIZES), draw(TIMES), draw(st.text(max_size=34))
            md5 = draw(st.none() | st.just(etag))
            listing[name] = Entry(name, False, size, mtime, ObjectInfo(prefix + name, size, etag, mtime, md5))
        else:
            obj = draw(st.none() | st.builds(ObjectInfo, st.text(max_size=20), SIZES, st.text(max_size=8), TIMES,
                                             OPTIONAL_TEXT))
            listing[name] = Entry(draw(NAMES), draw(st.booleans()), draw(SIZES), draw(TIMES), obj, draw(OPTIONAL_TEXT))
    return listing


@settings(max_examples=300, deadline=None)
@given(listing=entries())
def test_a_packed_listing_unpacks_to_the_same_entries_in_the_same_order(listing: dict[str, Entry]) -> None:
    back = unpack(pack(listing, PREFIX, MOUNTED), PREFIX, MOUNTED)
    assert back == listing
    assert list(back) == list(listing)


@settings(max_examples=100, deadline=None)
@given(study=entries("training/xray/P1/s/"), series=entries("training/xray/P1/s/x/"), when=TIMES)
def test_listings_held_in_one_group_read_back_as_they_were_put(study: dict[str, Entry], series: dict[str, Entry],
                                                               when: float) -> None:
    held = HeldListings("training/", 10**9, MOUNTED, 2)
    held.put([("training/xray/P1/s/", (when, study))])
    held.put([("training/xray/P1/s/x/", (when + 1, series))])
    assert held.get("training/xray/P1/s/") == (when, study)
    assert held.get("training/xray/P1/s/x/") == (when + 1, series)
    assert held.get("training/xray/P1/") is None
    assert held.names() == len(study) + len(series)


def series_listing(prefix: str) -> dict[str, Entry]:
    name = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d.json"
    etag = "0123456789abcdef0123456789abcdef"
    return {name: Entry(name, False, 1234, 1.6e9, ObjectInfo(prefix + name, 1234, etag, 1.6e9, etag))}


def test_a_walk_of_small_directories_is_held_in_a_fraction_of_a_kib_each() -> None:
    held = HeldListings("training/", 1000 * ENTRY_BYTES, MOUNTED, 2)
    study, series = "1.2.826.0.1.3680043.8.498." + "1" * 38, "1.2.826.0.1.3680043.8.498." + "2" * 38
    for patient in range(1000):
        base = f"training/xray-metadata/Covid{patient}/"
        held.put([(base, (MOUNTED, {study: Entry(study, True, mtime=MOUNTED)}))])
        held.put([(f"{base}{study}/", (MOUNTED, {series: Entry(series, True, mtime=MOUNTED)}))])
        held.put([(f"{base}{study}/{series}/", (MOUNTED, series_listing(f"{base}{study}/{series}/")))])
    assert held.get("training/xray-metadata/Covid0/") is not None  # 3,000 directories: none dropped
    assert held.size() < 3000 * ENTRY_BYTES // 3  # a third of a KiB a directory, its share of the key included


def test_the_least_recently_used_groups_go_first_and_large_listings_count_a_kib_a_name() -> None:
    held = HeldListings("training/", 100 * ENTRY_BYTES, MOUNTED, 2)
    big = {f"f{i}": Entry(f"f{i}", True, mtime=MOUNTED) for i in range(60)}
    held.put([("training/ct/", (1.0, big))])
    assert held.get("training/ct/") == (1.0, big)
    held.put([("training/ct/P1/", (1.0, big))])  # 2 x 61 KiB: the folder is dropped
    assert held.get("training/ct/") is None
    assert held.get("training/ct/P1/") == (1.0, big)
    held.put([("training/ct/P1/x/", (1.0, {f"f{i}": big[f"f{i}"] for i in range(3)}))])
    assert held.get("training/ct/P1/") == (1.0, big)  # the group went in as the most recently used
    held.put([("training/data/", (1.0, big))])
    assert held.get("training/ct/P1/") is None and held.get("training/ct/P1/x/") is None
    assert held.size() <= 100 * ENTRY_BYTES and held.names() == len(big)
    too_large = {f"f{i}": Entry(f"f{i}", True, mtime=MOUNTED) for i in range(200)}
    held.put([("training/xray/", (1.0, too_large))])
    assert held.get("training/xray/") is None


def test_dropping_a_prefix_drops_the_listings_below_it_and_keeps_the_rest_of_the_group() -> None:
    held = HeldListings("training/", 10**9, MOUNTED, 2)
    for prefix in ("training/ct/", "training/ct/P1/", "training/ct/P1/s/", "training/ct/P1/s/x/",
                   "training/ct/P1/t/", "training/ct/P2/", "training/ctx/"):
        held.put([(prefix, (1.0, series_listing(prefix)))])
    assert held.drop_under("training/ct/P1/s/") == 2
    assert held.get("training/ct/P1/s/x/") is None and held.get("training/ct/P1/t/") is not None
    assert held.drop_under("training/ct/") == 4
    assert "training/ct/P2/" not in held and "training/ctx/" in held
    assert held.names() == 1


def test_a_listing_put_again_is_read_back_new_though_its_group_was_just_read() -> None:
    held = HeldListings("training/", 10**9, MOUNTED, 2)
    held.put([("training/ct/P1/", (1.0, series_listing("training/ct/P1/"))),
              ("training/ct/P1/s/", (1.0, series_listing("training/ct/P1/s/")))])
    assert held.get("training/ct/P1/s/") == (1.0, series_listing("training/ct/P1/s/"))
    held.put([("training/ct/P1/s/", (2.0, {}))])
    assert held.get("training/ct/P1/s/") == (2.0, {})
    assert held.get("training/ct/P1/") == (1.0, series_listing("training/ct/P1/"))
