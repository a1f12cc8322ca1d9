from __future__ import annotations

import hashlib
import os
from pathlib import Path

from nccidfs.cache import ENTRY_OVERHEAD, DiskCache
from nccidfs.objects import ObjectInfo

BLOCK = 4096


def obj(key: str, body: bytes) -> ObjectInfo:
    return ObjectInfo(key, len(body), hashlib.md5(body).hexdigest(), 0.0)


def store_all(cache: DiskCache, info: ObjectInfo, body: bytes) -> None:
    entry = cache.pin(info)
    assert cache.store(entry, 0, body)
    cache.unpin(entry)


def test_stored_blocks_read_back_and_partial_objects_report_missing(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    body = os.urandom(3 * BLOCK + 100)
    entry = cache.pin(obj("k", body))
    assert cache.read(entry, 0, 1) is None
    assert cache.store(entry, 1, body[BLOCK:2 * BLOCK])
    assert cache.read(entry, 1, 2) == body[BLOCK:2 * BLOCK]
    assert cache.read(entry, 0, 2) is None
    assert list(entry.missing_runs(0, 4)) == [(0, 1), (2, 4)]
    assert cache.store(entry, 2, body[2 * BLOCK:])
    assert cache.read(entry, 2, 4) == body[2 * BLOCK:]
    cache.unpin(entry)


def test_cache_survives_restart_and_cleans_leftovers(tmp_path: Path) -> None:
    body = os.urandom(5 * BLOCK)
    cache = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    entry = cache.pin(obj("k", body))
    cache.store(entry, 0, body[:2 * BLOCK])
    cache.unpin(entry)
    leftover = tmp_path / "objects" / "zz"
    leftover.mkdir()
    (leftover / "deadbeef.map.tmp").write_bytes(b"half")
    (leftover / "deadbeef.data").write_bytes(b"orphan")

    again = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    entry = again.pin(obj("k", body))
    assert again.read(entry, 0, 2) == body[:2 * BLOCK]
    assert again.read(entry, 2, 3) is None
    assert not (leftover / "deadbeef.map.tmp").exists() and not (leftover / "deadbeef.data").exists()
    assert again.used_bytes == 2 * BLOCK + ENTRY_OVERHEAD


def test_new_etag_is_a_different_entry(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    old, new = b"old" * 100, b"new!" * 100
    store_all(cache, obj("k", old), old)
    entry = cache.pin(obj("k", new))
    assert cache.read(entry, 0, 1) is None
    cache.unpin(entry)


def test_lru_eviction_keeps_the_bound_and_spares_pinned_entries(tmp_path: Path) -> None:
    bound = 4 * (BLOCK * 4 + ENTRY_OVERHEAD)
    cache = DiskCache(tmp_path, bound, "b", BLOCK)
    bodies = {f"k{i}": os.urandom(BLOCK * 4) for i in range(8)}
    pinned = cache.pin(obj("k0", bodies["k0"]))
    assert cache.store(pinned, 0, bodies["k0"])
    for key in list(bodies)[1:]:
        store_all(cache, obj(key, bodies[key]), bodies[key])
        assert cache.used_bytes <= bound
    assert cache.read(pinned, 0, 4) == bodies["k0"]
    on_disk = sum(p.stat().st_blocks * 512 for p in (tmp_path / "objects").rglob("*.data"))
    assert on_disk <= bound
    cache.unpin(pinned)
    assert cache.evictions >= 3


def test_store_is_refused_when_everything_is_pinned(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, BLOCK * 2 + ENTRY_OVERHEAD, "b", BLOCK)
    big = os.urandom(BLOCK * 3)
    entry = cache.pin(obj("big", big))
    assert not cache.store(entry, 0, big)
    assert cache.used_bytes <= cache.size_bytes
    cache.unpin(entry)


def test_corrupted_cache_file_is_detected(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    body = os.urandom(2 * BLOCK)
    info = obj("k", body)
    store_all(cache, info, body)
    data_file = next((tmp_path / "objects").rglob("*.data"))
    with open(data_file, "r+b") as handle:
        handle.seek(BLOCK + 10)
        handle.write(b"XX")
    entry = cache.pin(info)
    assert cache.read(entry, 0, 2) is None
    assert cache.read(entry, 0, 1) == body[:BLOCK]
    assert list(entry.missing_runs(0, 2)) == [(1, 2)]
    cache.unpin(entry)


def test_cache_directory_and_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = DiskCache(root, 1 << 20, "b", BLOCK)
    store_all(cache, obj("k", b"x" * 10), b"x" * 10)
    assert root.stat().st_mode & 0o777 == 0o700
    for path in (root / "objects").rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_complete_object_that_does_not_match_its_md5_etag_is_discarded(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1 << 20, "b", BLOCK)
    body = os.urandom(2 * BLOCK)
    good = obj("k", body)
    entry = cache.pin(good)
    cache.store(entry, 0, body)
    assert cache.verify_whole(entry)
    cache.unpin(entry)
    lying = obj("k2", body)
    lying = type(lying)(lying.key, lying.size, hashlib.md5(b"other").hexdigest(), 0.0)
    entry = cache.pin(lying)
    cache.store(entry, 0, body)
    assert not cache.verify_whole(entry)
    assert cache.read(entry, 0, 2) is None and not entry.is_complete()
    cache.unpin(entry)
