"""The free-disk floor (--cache-min-free), on a tmpfs of a few MiB that really fills."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.cache import DiskCache
from nccidfs.cachedir import prepare
from nccidfs.cli import build_parser, from_mount_helper
from nccidfs.config import CacheConfig, parse_size
from nccidfs.objects import ObjectInfo
from tests.tmpfs import small_tmpfs

BLOCK = 4096
KIB, MIB = 1024, 1024 * 1024
DISK = "4m"
OBJECT = 256 * KIB
FLOOR = 2 * MIB
# The cache counts what files hold, the tmpfs whole pages: a map of a few hundred bytes takes 4 KiB.
PAGE_SLACK = 64 * KIB


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk", DISK) as mounted:
        yield mounted


def free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def obj(key: str, body: bytes) -> ObjectInfo:
    return ObjectInfo(key, len(body), hashlib.md5(body).hexdigest(), 0.0)


def cache_on(disk: Path, min_free: int) -> DiskCache:
    return DiskCache(prepare(disk / "cache"), 100 * MIB, "b", BLOCK, min_free_bytes=min_free)


def store(cache: DiskCache, info: ObjectInfo, body: bytes) -> bool:
    entry = cache.pin(info)
    try:
        return cache.store_blocks(entry, 0, body)
    finally:
        cache.unpin(entry)


def holds(cache: DiskCache, info: ObjectInfo) -> bool:
    entry = cache.pin(info)
    try:
        return cache.is_complete(entry)
    finally:
        cache.unpin(entry)


def test_the_cache_evicts_the_least_recently_used_to_keep_the_floor_free(disk: Path) -> None:
    cache = cache_on(disk, FLOOR)
    bodies = {f"k{i}": os.urandom(OBJECT) for i in range(10)}  # 2.5 MiB: more than the 2 MiB above the floor
    for key, body in bodies.items():
        assert store(cache, obj(key, body), body)
        assert free(disk) >= FLOOR - PAGE_SLACK
    assert cache.evictions >= 3
    assert not holds(cache, obj("k0", bodies["k0"])) and holds(cache, obj("k9", bodies["k9"]))


def test_a_store_that_would_pass_the_floor_is_refused_and_logged_once(disk: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    floor = 3 * MIB
    cache = cache_on(disk, floor)
    big = os.urandom(2 * MIB)
    before = free(disk)
    with caplog.at_level(logging.WARNING, logger="nccidfs.cache"):
        entry = cache.pin(obj("big", big))
        assert not cache.store_blocks(entry, 0, big)
        assert not cache.store_blocks(entry, 0, big)
        cache.unpin(entry)
    assert free(disk) >= before - PAGE_SLACK, "nothing was written"
    assert len([r for r in caplog.records if "--cache-min-free" in r.getMessage()]) == 1


def crowded_out(disk: Path) -> tuple[DiskCache, dict[str, bytes]]:
    """A cache holding 1.25 MiB on the 4 MiB disk, then another program's 1 MiB file: below the floor."""
    cache = cache_on(disk, FLOOR)
    bodies = {f"k{i}": os.urandom(OBJECT) for i in range(5)}
    for key, body in bodies.items():
        assert store(cache, obj(key, body), body)
    (disk / "other.bin").write_bytes(os.urandom(MIB))
    assert free(disk) < FLOOR
    return cache, bodies


def test_another_program_filling_the_disk_makes_the_cache_give_room_back(disk: Path) -> None:
    cache, bodies = crowded_out(disk)
    late = os.urandom(OBJECT)
    assert store(cache, obj("late", late), late)
    assert free(disk) >= FLOOR - PAGE_SLACK
    assert cache.evictions >= 2 and not holds(cache, obj("k0", bodies["k0"]))


def test_a_rebalance_after_the_disk_filled_gives_room_back_without_a_write(disk: Path) -> None:
    cache, _ = crowded_out(disk)
    cache.rebalance()  # as after a listing index write
    assert free(disk) >= FLOOR - PAGE_SLACK and cache.evictions >= 1


def test_the_floor_flag_defaults_to_1_gib_and_0_turns_it_off() -> None:
    args = build_parser().parse_args(["/m"])
    assert args.cache_min_free == "1 GiB" and CacheConfig.min_free_bytes == 1024**3
    assert parse_size("0", allow_zero=True) == 0 and CacheConfig(min_free_bytes=0).min_free_bytes == 0
    argv = ["nccidfs", "/mnt/nccid", "-o", "cache_min_free=0"]
    assert from_mount_helper(argv) == ["mount", "/mnt/nccid", "--cache-min-free", "0"]
