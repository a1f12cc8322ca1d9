"""A manifest's packed tree answers every listing as the store holding the same objects would."""

from __future__ import annotations

import hashlib

import pytest

from nccidfs.cohort.manifest import Columns
from nccidfs.cohort.source import parse_as_of
from nccidfs.cohort.tree import FrozenTree
from nccidfs.errors import ConfigError
from tests.fakes import MemoryStore

PREFIX = "training/"
KEYS = ["ct/P1/s1/se1/a.dcm", "ct/P1/s1/se1/b.dcm", "ct/P1/s1/se2/a.dcm", "ct/P2/s1/se1/a.dcm",
        "ct-metadata/P1/s1/se1/a.json", "data/P1/data_2020-01-01.json", "data/P1/status_2020-01-01.json",
        "data/P1/x/deeper.json", "data/P1/z.json", "top.txt", "xray/P3/s/se/i.dcm"]


def objects() -> dict[str, bytes]:
    return {PREFIX + key: key.encode() * (n + 1) for n, key in enumerate(KEYS)}


def tree(store: MemoryStore, as_of: float | None = None) -> FrozenTree:
    built = FrozenTree(PREFIX, as_of)
    rows = sorted((key[len(PREFIX):], *store.info(key)[1:4]) for key in store.objects)
    built.add(Columns.of(rows[:4]))
    built.add(Columns.of(rows[4:]))
    return built.finish()


@pytest.mark.parametrize("prefix", ["", "ct/", "ct/P1/", "ct/P1/s1/", "ct/P1/s1/se1/", "data/P1/", "data/", "nope/",
                                    "ct/P1/s1/se"])
def test_listings_match_the_store(prefix: str) -> None:
    store = MemoryStore(objects())
    frozen = tree(store)
    if prefix.endswith("/") or prefix == "":
        assert frozen.list_dir(PREFIX + prefix) == store.list_dir(PREFIX + prefix)
    assert frozen.list_tree(PREFIX + prefix + ("/" if prefix and not prefix.endswith("/") else "")) == \
        store.list_tree(PREFIX + prefix + ("/" if prefix and not prefix.endswith("/") else ""))


def test_a_run_of_siblings_is_cut_where_asked() -> None:
    store = MemoryStore(objects())
    listing = tree(store).list_tree(PREFIX + "ct/", start_after=PREFIX + "ct/P1", end=PREFIX + "ct/P2/")
    assert [obj.key for obj in listing.objects] == [PREFIX + k for k in KEYS[:3]]


def test_etags_come_back_as_written_packed_or_not() -> None:
    frozen = FrozenTree(PREFIX)
    md5 = hashlib.md5(b"x").hexdigest()
    frozen.add(Columns.of([("a/b", 1, md5, 1.0), ("a/c", 2, "abc-12", 2.0)]))
    frozen.finish()
    assert [(o.etag, o.size, o.mtime) for o in frozen.list_dir(PREFIX + "a/").objects] == \
        [(md5, 1, 1.0), ("abc-12", 2, 2.0)]
    assert (frozen.objects, frozen.bytes) == (2, 3)


def test_as_of_leaves_out_later_objects_and_their_folders() -> None:
    frozen = FrozenTree(PREFIX, as_of=parse_as_of("2021-06-30"))
    day = parse_as_of("2021-06-30T00:00:00Z")
    frozen.add(Columns.of([("ct/P1/a", 1, "e", day), ("ct/P1/b", 1, "e", day + 86_399.9),
                           ("ct/P2/a", 1, "e", day + 86_400)]))
    frozen.finish()
    assert frozen.list_dir(PREFIX + "ct/").prefixes == (PREFIX + "ct/P1/",)
    assert [o.key for o in frozen.list_tree(PREFIX + "ct/").objects] == [PREFIX + "ct/P1/a", PREFIX + "ct/P1/b"]


@pytest.mark.parametrize("text", ["yesterday", "2021-13-01", "30/06/2021"])
def test_a_bad_date_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--as-of"):
        parse_as_of(text)


def test_find_and_is_folder_agree_with_the_store() -> None:
    store = MemoryStore(objects())
    frozen = tree(store)
    for key in store.objects:
        assert frozen.find(key) == next(obj for obj in store.list_tree(PREFIX).objects if obj.key == key)
    # Names that are folders, a key's prefix, keys beside the cohort's, and a split run of one folder
    # ("data/P1/" holds z.json after the sub-folder x/).
    for missing in ("ct/P1", "ct/P1/s1/se1", "ct/P1/s1/se1/c.dcm", "ct/P1/s1/se1/a.dc", "a", "zzz", "data/P1/x",
                    "data/P1/y.json", "ct/P1/s1/se1/a.dcm/"):
        assert frozen.find(PREFIX + missing) is None, missing
    for folder in ("", "ct/", "ct/P1/", "data/P1/x/", "xray/P3/s/se/"):
        assert frozen.is_folder(PREFIX + folder), folder
    for not_folder in ("c/", "ct/P1/s1/se1/a.dcm/", "ct/P3/", "data/P1/z/"):
        assert not frozen.is_folder(PREFIX + not_folder), not_folder
