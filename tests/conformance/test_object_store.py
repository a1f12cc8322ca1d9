"""One suite, two stores: what the in-memory store promises the unit tests, the S3 store does over HTTP.

Each test runs against both (see conftest.py); a test that passes for one and fails for the other is a
place where unit tests over MemoryStore would no longer say anything about the real store.
"""

from __future__ import annotations

import hashlib

import pytest

from nccidfs.errors import CorruptData, NotFound, ObjectChanged
from nccidfs.store.stats import GET, LIST
from tests.conformance.conftest import MIN_PART, Backend

BODY = bytes(range(256)) * 4
# More keys than one S3 listing page holds (1,000), so a listing must follow its continuation.
MORE_THAN_A_PAGE = 1_003
ODD_NAMES = ["a b", "c+d&e", "ünï", "%41", "x<y>", "tab\tin"]


def md5(body: bytes) -> str:
    return hashlib.md5(body).hexdigest()


def test_a_delimited_listing_gives_the_objects_directly_under_and_the_next_level_as_prefixes(
        backend: Backend) -> None:
    backend.put_all([("p/b", b"bb"), ("p/a", b"a"), ("p/d/x", b"x"), ("p/d/e/y", b"y"), ("p/c/z", b""), ("q/a", b"")])
    listing = backend.store.list_dir("p/")
    assert [(o.key, o.size) for o in listing.objects] == [("p/a", 1), ("p/b", 2)]
    assert listing.prefixes == ("p/c/", "p/d/")
    assert backend.store.list_dir("p/d/").prefixes == ("p/d/e/",)


def test_a_flat_listing_holds_every_depth_in_key_order_between_its_bounds(backend: Backend) -> None:
    keys = ["p/a", "p/b/1", "p/b/2/3", "p/c/4", "p/d"]
    backend.put_all((key, key.encode()) for key in keys + ["p0", "o/p/x"])
    assert backend.store.list_tree("p/").prefixes == ()
    assert [o.key for o in backend.store.list_tree("p/").objects] == keys
    assert [o.key for o in backend.store.list_tree("p/", start_after="p/b/1").objects] == keys[2:]
    assert [o.key for o in backend.store.list_tree("p/", start_after="p/a", end="p/c/").objects] == keys[1:3]


def test_listings_longer_than_a_page_come_back_whole(backend: Backend) -> None:
    keys = sorted(f"p/{n:05}" for n in range(MORE_THAN_A_PAGE))
    backend.put_all([(key, b"") for key in keys] + [(f"q/{n:05}/x", b"") for n in range(MORE_THAN_A_PAGE)])
    assert [o.key for o in backend.store.list_dir("p/").objects] == keys
    assert [o.key for o in backend.store.list_tree("p/").objects] == keys
    assert len(backend.store.list_dir("q/").prefixes) == MORE_THAN_A_PAGE


def test_a_prefix_matches_characters_not_folders_and_odd_names_come_back_as_written(backend: Backend) -> None:
    backend.put_all([("p/ab/x", b""), ("p/abc", b""), ("p/ab", b"")] + [(f"p/odd/{name}", b"") for name in ODD_NAMES])
    assert [o.key for o in backend.store.list_dir("p/ab/").objects] == ["p/ab/x"]
    assert [o.key for o in backend.store.list_dir("p/").objects] == ["p/ab", "p/abc"]
    assert [o.key for o in backend.store.list_dir("p/odd/").objects] == sorted(f"p/odd/{n}" for n in ODD_NAMES)


def test_a_probe_is_true_only_where_something_lies_at_any_depth(backend: Backend) -> None:
    backend.put("p/d/e/deep", b"x")
    assert backend.store.probe("p/") and backend.store.probe("p/d/e/")
    assert not backend.store.probe("q/") and not backend.store.probe("p/d/e/deep/")
    empty = backend.store.list_dir("nothing/")
    assert empty.objects == () and empty.prefixes == ()


def test_ranged_gets_return_exactly_the_bytes_asked_for_up_to_the_last(backend: Backend) -> None:
    backend.put("p/a", BODY)
    etag = backend.store.list_dir("p/").objects[0].etag
    for start, end in [(0, len(BODY)), (10, 50), (len(BODY) - 1, len(BODY)), (0, 1)]:
        assert backend.store.get_range("p/a", start, end, etag) == BODY[start:end]


@pytest.mark.parametrize(("start", "beyond"), [(len(BODY) - 5, 5), (len(BODY), 1), (len(BODY) + 10, 10)])
def test_a_range_reaching_past_the_end_is_corrupt_data_at_once(backend: Backend, start: int, beyond: int) -> None:
    """A reader's range comes from the listed size: past the end, the object is not what was listed."""
    backend.put("p/a", BODY)
    etag = backend.store.list_dir("p/").objects[0].etag
    with pytest.raises(CorruptData):
        backend.store.get_range("p/a", start, len(BODY) + beyond, etag)


def test_a_missing_key_is_not_found_whatever_the_etag(backend: Backend) -> None:
    backend.put("p/a", BODY)
    etag = backend.store.list_dir("p/").objects[0].etag
    with pytest.raises(NotFound):
        backend.store.get_range("p/b", 0, 1, etag)
    backend.delete("p/a")
    with pytest.raises(NotFound):
        backend.store.get_range("p/a", 0, 1, etag)
    assert backend.store.list_dir("p/").objects == ()


def test_a_replaced_object_gets_a_new_etag_and_its_old_version_is_refused(backend: Backend) -> None:
    backend.put("p/a", BODY)
    old = backend.store.list_dir("p/").objects[0]
    backend.put("p/a", b"replaced")
    new = backend.store.list_dir("p/").objects[0]
    assert new.etag != old.etag and new.md5 != old.md5 and new.size == len(b"replaced")
    with pytest.raises(ObjectChanged):
        backend.store.get_range("p/a", 0, 5, old.etag)
    assert backend.store.get_range("p/a", 0, 8, new.etag) == b"replaced"


def test_the_md5_is_given_for_an_object_uploaded_whole_and_kept_apart_from_the_etag(backend: Backend) -> None:
    backend.put_all([("p/a", BODY), ("p/empty", b"")])
    objects = {o.key: o for o in backend.store.list_dir("p/").objects}
    assert objects["p/a"].md5 == md5(BODY) and objects["p/empty"].md5 == md5(b"")
    assert backend.store.get_range("p/a", 0, len(BODY), objects["p/a"].etag) == BODY


def test_an_object_uploaded_in_parts_has_no_md5_and_reads_by_its_etag(backend: Backend) -> None:
    parts = [b"m" * MIN_PART, b"tail"]
    backend.put_in_parts("p/m", parts)
    (obj,) = backend.store.list_dir("p/").objects
    assert obj.md5 is None and obj.etag.endswith("-2") and obj.size == MIN_PART + 4
    assert backend.store.get_range("p/m", MIN_PART - 2, MIN_PART + 4, obj.etag) == b"mmtail"


def test_stats_count_each_listing_and_get_and_the_bytes_fetched(backend: Backend) -> None:
    backend.put_all([("p/a", BODY), ("p/d/x", b"x")])
    stats = backend.store.stats
    assert stats is not None and stats.snapshot()["requests"] == {}
    etag = backend.store.list_dir("p/").objects[0].etag
    backend.store.list_tree("p/")
    backend.store.probe("p/d/")
    backend.store.get_range("p/a", 0, 100, etag)
    backend.store.get_range("p/a", 100, 110, etag)
    snapshot = stats.snapshot()
    assert snapshot["requests"] == {LIST: 3, GET: 2} and snapshot["bytes_fetched"] == 110


def test_a_head_read_by_name_gives_the_first_bytes_of_whatever_is_there(backend: Backend) -> None:
    """The catalog reads metadata twins by name alone, with no listing to pin a version."""
    backend.put_all([("p/a", BODY), ("p/empty", b"")])
    head = backend.store.get_head  # type: ignore[attr-defined]  # beyond the protocol: catalog_build.Bucket
    assert head("p/a", 10) == BODY[:10] and head("p/a", len(BODY) + 10) == BODY
    assert head("p/empty", 10) == b""
    with pytest.raises(NotFound):
        head("p/missing", 10)
