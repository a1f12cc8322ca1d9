from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from nccidfs.cache import DiskCache
from nccidfs.cachedir import prepare
from nccidfs.eviction import LruPolicy
from nccidfs.objects import ObjectInfo

BLOCK = 4096
INTERVAL = 60.0


class Clock:
    """Wall-clock seconds that move only when told."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def obj(key: str, body: bytes) -> ObjectInfo:
    return ObjectInfo(key, len(body), hashlib.md5(body).hexdigest(), 0.0)


def cached_keys(directory: Path) -> set[str]:
    return {json.loads(path.read_bytes())["key"] for path in (directory / "objects").rglob("*.map")}


def test_the_least_recently_used_goes_first_and_a_use_is_recorded_once_per_interval() -> None:
    clock = Clock(1000.0)
    policy = LruPolicy(INTERVAL, clock)
    for digest in ("a", "b", "c"):
        policy.admit(digest)
    clock.now += 1
    assert policy.used("a") is None, "admitted just now: nothing to record yet"
    assert policy.victims() == ["b", "c", "a"]
    clock.now += INTERVAL
    assert policy.used("b") == clock.now
    assert policy.used("b") is None
    assert policy.victims() == ["c", "a", "b"]
    policy.forget("c")
    assert policy.victims() == ["a", "b"]


def test_after_a_restart_eviction_follows_the_last_reads_not_the_last_writes(tmp_path: Path) -> None:
    """a is read last, c was used before it, b was opened first and written to last (a read-ahead
    finishing): after a restart b goes first, then c, and a stays."""
    clock = Clock(1_000_000.0)
    cache = DiskCache(prepare(tmp_path), 1 << 22, "b", BLOCK, policy=LruPolicy(INTERVAL, clock))
    bodies = {key: os.urandom(4 * BLOCK) for key in "abc"}
    infos = {key: obj(key, body) for key, body in bodies.items()}
    entry = cache.pin(infos["a"])
    assert cache.store_blocks(entry, 0, bodies["a"])
    cache.unpin(entry)
    clock.now += 1
    writing = cache.pin(infos["b"])
    assert cache.store_blocks(writing, 0, bodies["b"][:BLOCK])
    clock.now += 1
    entry = cache.pin(infos["c"])
    assert cache.store_blocks(entry, 0, bodies["c"])
    cache.unpin(entry)
    clock.now += INTERVAL
    entry = cache.pin(infos["a"])  # a read
    assert cache.read_blocks(entry, 0, 4) == bodies["a"]
    cache.unpin(entry)
    clock.now += INTERVAL
    assert cache.store_blocks(writing, 1, bodies["b"][BLOCK:])  # a write, long after b's last use
    cache.unpin(writing)

    evicted = []
    for _ in range(2):
        before = cached_keys(tmp_path)
        used = DiskCache(prepare(tmp_path), 1 << 22, "b", BLOCK).used_bytes
        DiskCache(prepare(tmp_path), used - 1, "b", BLOCK)  # a restart with one byte less: one eviction
        (gone,) = before - cached_keys(tmp_path)
        evicted.append(gone)
    assert evicted == ["b", "c"]
    assert cached_keys(tmp_path) == {"a"}
