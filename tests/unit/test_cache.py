from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nccidfs.cache import DiskCache, disk_usage
from nccidfs.cachedir import prepare
from nccidfs.objects import ObjectInfo

BLOCK = 4096


def new_cache(directory: Path, bound: int) -> DiskCache:
    return DiskCache(prepare(directory), bound, "b", BLOCK)


def du(directory: Path) -> int:
    """What ``du -sb`` prints for the directory."""
    return int(subprocess.run(["du", "-sb", str(directory)], capture_output=True, text=True,
                              check=True).stdout.split()[0])


def obj(key: str, body: bytes) -> ObjectInfo:
    md5 = hashlib.md5(body).hexdigest()
    return ObjectInfo(key, len(body), md5, 0.0, md5)


def store_all(cache: DiskCache, info: ObjectInfo, body: bytes) -> None:
    entry = cache.pin(info)
    assert cache.store_blocks(entry, 0, body)
    cache.unpin(entry)


def test_stored_blocks_read_back_and_partial_objects_report_missing(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 1 << 20)
    body = os.urandom(3 * BLOCK + 100)
    entry = cache.pin(obj("k", body))
    assert cache.read_blocks(entry, 0, 1) is None
    assert cache.store_blocks(entry, 1, body[BLOCK:2 * BLOCK])
    assert cache.read_blocks(entry, 1, 2) == body[BLOCK:2 * BLOCK]
    assert cache.read_blocks(entry, 0, 2) is None
    assert cache.missing_runs(entry, 0, 4) == [(0, 1), (2, 4)]
    assert cache.store_blocks(entry, 2, body[2 * BLOCK:])
    assert cache.read_blocks(entry, 2, 4) == body[2 * BLOCK:]
    cache.unpin(entry)


def test_a_slow_write_of_one_part_does_not_hold_up_reads_of_other_blocks(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A part of a large object takes a while to write; readers of the blocks already stored go on."""
    cache = new_cache(tmp_path, 1 << 22)
    body = os.urandom(16 * BLOCK)
    entry = cache.pin(obj("k", body))
    assert cache.store_blocks(entry, 0, body[:8 * BLOCK])
    writing, release = threading.Event(), threading.Event()
    real_pwrite = os.pwrite

    def slow_pwrite(fd: int, data: bytes, offset: int) -> int:
        writing.set()
        assert release.wait(10)
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr("nccidfs.cache.os.pwrite", slow_pwrite)
    writer = threading.Thread(target=lambda: cache.store_blocks(entry, 8, body[8 * BLOCK:]))
    writer.start()
    try:
        assert writing.wait(10)
        reader = threading.Thread(target=lambda: cache.read_blocks(entry, 0, 8))
        reader.start()
        reader.join(2)
        assert not reader.is_alive(), "the read waited for another part's write"
        assert cache.read_blocks(entry, 8, 16) is None, "blocks being written are not served"
    finally:
        release.set()
        writer.join()
    assert cache.read_blocks(entry, 0, 16) == body
    cache.unpin(entry)


def test_cache_survives_restart_and_cleans_leftovers(tmp_path: Path) -> None:
    body = os.urandom(5 * BLOCK)
    cache = new_cache(tmp_path, 1 << 20)
    entry = cache.pin(obj("k", body))
    cache.store_blocks(entry, 0, body[:2 * BLOCK])
    cache.unpin(entry)
    leftover = tmp_path / "objects" / "zz"
    leftover.mkdir()
    (leftover / "deadbeef.map.tmp").write_bytes(b"half")
    (leftover / "deadbeef.data").write_bytes(b"orphan")

    again = new_cache(tmp_path, 1 << 20)
    entry = again.pin(obj("k", body))
    assert again.read_blocks(entry, 0, 2) == body[:2 * BLOCK]
    assert again.read_blocks(entry, 2, 3) is None
    assert not (leftover / "deadbeef.map.tmp").exists() and not (leftover / "deadbeef.data").exists()
    assert again.used_bytes == du(tmp_path)


def test_new_etag_is_a_different_entry(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 1 << 20)
    old, new = b"old" * 100, b"new!" * 100
    store_all(cache, obj("k", old), old)
    entry = cache.pin(obj("k", new))
    assert cache.read_blocks(entry, 0, 1) is None
    cache.unpin(entry)


def test_lru_eviction_keeps_the_bound_and_spares_pinned_entries(tmp_path: Path) -> None:
    bound = 20 * BLOCK + 8192
    cache = new_cache(tmp_path, bound)
    bodies = {f"k{i}": os.urandom(BLOCK * 4) for i in range(8)}
    pinned = cache.pin(obj("k0", bodies["k0"]))
    assert cache.store_blocks(pinned, 0, bodies["k0"])
    for key in list(bodies)[1:]:
        store_all(cache, obj(key, bodies[key]), bodies[key])
        assert cache.used_bytes <= bound
        assert du(tmp_path) == cache.used_bytes
    assert cache.read_blocks(pinned, 0, 4) == bodies["k0"]
    cache.unpin(pinned)
    assert cache.evictions >= 3


def test_store_is_refused_when_everything_is_pinned(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, BLOCK * 2 + 8192)
    big = os.urandom(BLOCK * 3)
    entry = cache.pin(obj("big", big))
    assert not cache.store_blocks(entry, 0, big)
    assert cache.used_bytes <= cache.size_bytes
    cache.unpin(entry)


def test_a_write_too_large_for_the_bound_evicts_nothing(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, BLOCK * 4 + 8192)
    small = os.urandom(BLOCK)
    store_all(cache, obj("small", small), small)
    huge = os.urandom(BLOCK * 8)
    entry = cache.pin(obj("huge", huge))
    assert not cache.store_blocks(entry, 0, huge)
    cache.unpin(entry)
    assert cache.evictions == 0
    again = cache.pin(obj("small", small))
    assert cache.read_blocks(again, 0, 1) == small
    cache.unpin(again)


def test_corrupted_cache_file_is_detected(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 1 << 20)
    body = os.urandom(2 * BLOCK)
    info = obj("k", body)
    store_all(cache, info, body)
    data_file = next((tmp_path / "objects").rglob("*.data"))
    with open(data_file, "r+b") as handle:
        handle.seek(BLOCK + 10)
        handle.write(b"XX")
    entry = cache.pin(info)
    assert cache.read_blocks(entry, 0, 2) is None
    assert cache.read_blocks(entry, 0, 1) == body[:BLOCK]
    assert cache.missing_runs(entry, 0, 2) == [(1, 2)]
    cache.unpin(entry)


def test_cache_directory_and_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "c"
    cache = new_cache(root, 1 << 20)
    store_all(cache, obj("k", b"x" * 10), b"x" * 10)
    assert root.stat().st_mode & 0o777 == 0o700
    for path in (root / "objects").rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert path.stat().st_mode & 0o777 == expected, path


def test_a_complete_object_that_does_not_match_its_md5_etag_is_discarded(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 1 << 20)
    body = os.urandom(2 * BLOCK)
    good = obj("k", body)
    entry = cache.pin(good)
    cache.store_blocks(entry, 0, body)
    assert cache.verify_whole(entry)
    cache.unpin(entry)
    lying = obj("k2", body)
    other = hashlib.md5(b"other").hexdigest()
    lying = type(lying)(lying.key, lying.size, other, 0.0, other)
    entry = cache.pin(lying)
    cache.store_blocks(entry, 0, body)
    assert not cache.verify_whole(entry)
    assert cache.read_blocks(entry, 0, 2) is None and not cache.is_complete(entry)
    cache.unpin(entry)


def test_the_bound_counts_the_directory_as_du_does_across_restarts(tmp_path: Path) -> None:
    bound = 64 * BLOCK
    cache = new_cache(tmp_path, bound)
    bodies = {f"k{i}": os.urandom(BLOCK * 10) for i in range(15)}
    for key, body in bodies.items():
        store_all(cache, obj(key, body), body)
        assert cache.used_bytes == du(tmp_path) <= bound
    again = new_cache(tmp_path, bound // 2)
    assert again.used_bytes == du(tmp_path) <= bound // 2
    for key in list(bodies)[:3]:
        store_all(again, obj(key, bodies[key]), bodies[key])
        assert again.used_bytes == du(tmp_path) <= bound // 2
    assert disk_usage(tmp_path)["used_bytes"] == du(tmp_path)


def test_a_huge_listed_size_costs_a_map_the_size_of_what_is_cached(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 4 << 20)
    huge = ObjectInfo("huge", 1 << 40, "0" * 32, 0.0)
    entry = cache.pin(huge)
    assert entry.block_count <= 1 << 20
    assert cache.store_blocks(entry, 0, b"x" * entry.block_size)
    assert entry.map_path.stat().st_size < 4096
    assert cache.used_bytes == du(tmp_path) <= 4 << 20
    cache.unpin(entry)


def test_symlinks_planted_in_the_cache_are_removed_not_followed(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    cache = new_cache(cache_dir, 1 << 20)
    body = os.urandom(BLOCK)
    info = obj("k", body)
    entry = cache.pin(info)
    fanout = entry.base.parent
    cache.unpin(entry)
    fanout.symlink_to(victim)
    (cache_dir / "objects" / "zz").symlink_to(victim)
    again = new_cache(cache_dir, 1 << 20)
    store_all(again, info, body)
    assert (victim / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert not fanout.is_symlink() and not (cache_dir / "objects" / "zz").exists()


def test_a_deleted_objects_folder_is_recreated(tmp_path: Path) -> None:
    cache = new_cache(tmp_path, 1 << 20)
    body = os.urandom(BLOCK)
    store_all(cache, obj("a", body), body)
    subprocess.run(["rm", "-rf", str(tmp_path / "objects")], check=True)
    entry = cache.pin(obj("b", body))
    assert cache.store_blocks(entry, 0, body)
    assert cache.read_blocks(entry, 0, 1) == body
    cache.unpin(entry)
    subprocess.run(["rm", "-rf", str(tmp_path / "objects")], check=True)
    entry = cache.pin(obj("b", body))  # its folder was made by this run, and is gone again
    assert cache.store_blocks(entry, 0, body)
    assert cache.read_blocks(entry, 0, 1) == body
    cache.unpin(entry)


@given(st.integers(0, 3 * BLOCK + 99), st.integers(1, 255))
@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_changed_byte_anywhere_in_a_run_of_blocks_drops_that_block_alone(tmp_path: Path, position: int,
                                                                          flip: int) -> None:
    """A read of several blocks is checked in one pass; the block that fails is found and only it is
    fetched again."""
    directory = tmp_path / f"c{position}-{flip}"
    cache = new_cache(directory, 1 << 20)
    body = os.urandom(3 * BLOCK + 100)  # three whole blocks and a short last one
    info = obj("k", body)
    store_all(cache, info, body)
    data_file = next((directory / "objects").rglob("*.data"))
    with open(data_file, "r+b") as handle:
        handle.seek(position)
        original = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([original ^ flip]))
    entry = cache.pin(info)
    assert cache.read_blocks(entry, 0, 4) is None
    bad = position // BLOCK
    assert cache.missing_runs(entry, 0, 4) == [(bad, bad + 1)]
    for block in set(range(4)) - {bad}:
        assert cache.read_blocks(entry, block, block + 1) == body[block * BLOCK:(block + 1) * BLOCK]
    cache.unpin(entry)


def test_an_entry_read_back_after_a_restart_is_checked_against_the_md5_its_pin_brings(tmp_path: Path) -> None:
    """A map keeps the ETag alone: the MD5 of an entry found on disk comes with the listing that pins it."""
    body = os.urandom(2 * BLOCK)
    store_all(new_cache(tmp_path, 1 << 20), obj("k", body), body)
    again = new_cache(tmp_path, 1 << 20)
    listed = obj("k", body)._replace(md5=hashlib.md5(b"other").hexdigest())  # same version, another MD5
    entry = again.pin(listed)
    assert not again.verify_whole(entry)
    again.unpin(entry)


def test_an_entry_that_wrote_its_data_but_not_its_map_leaves_no_file_when_unpinned(tmp_path: Path) -> None:
    """Unpinning an entry that stored nothing leaves no trace; one whose data file was written before its
    map failed must still delete that file (only an entry that never opened one skips the unlinks)."""
    cache = new_cache(tmp_path, 1 << 20)
    empty = cache.used_bytes
    body = os.urandom(BLOCK)
    entry = cache.pin(obj("k", body))
    entry.base.parent.mkdir(parents=True, exist_ok=True)
    entry.base.with_suffix(".map.tmp").mkdir()  # the map cannot be written: the data file is, first
    with pytest.raises(IsADirectoryError):
        cache.store_blocks(entry, 0, body)
    assert entry.data_path.exists()
    cache.unpin(entry)
    entry.base.with_suffix(".map.tmp").rmdir()
    assert list(entry.base.parent.iterdir()) == []
    untouched = cache.pin(obj("other", body))
    cache.unpin(untouched)
    assert not untouched.data_path.exists() and not untouched.map_path.exists()
    assert cache.used_bytes == empty
