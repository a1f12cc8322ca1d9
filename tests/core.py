"""The filesystem core as the daemon assembles it, over a test's store, with small blocks and parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nccidfs.assembly import Assembly, assemble
from nccidfs.cachedir import prepare
from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.config import CacheConfig, Config, MountConfig, ReadConfig, S3Config
from nccidfs.objects import Listing
from nccidfs.store.protocol import ObjectStore

PREFIX = "training/"
# A FUSE call's deadline: short, so that tests of outages end quickly.
TIMEOUT = 1.0
# Small blocks and parts, so that a file of tens of kilobytes spans several of each.
READ = ReadConfig(block_size=4096, initial_window=16384, max_window=65536, part_size=32768, fetch_threads=4,
                  prefetch=False)
CACHE_BYTES = 1 << 24
LISTING_TTL = 300.0
MAX_LISTING_ENTRIES = 10_000
STATUS = {"ok": True}


def core_config(directory: Path, prefix: str = PREFIX, ttl: float = LISTING_TTL, read: ReadConfig = READ,
                cache_bytes: int = CACHE_BYTES) -> Config:
    return Config(MountConfig(directory / "mnt", listing_ttl=ttl, max_listing_entries=MAX_LISTING_ENTRIES),
                  S3Config(prefix=prefix, deadline=TIMEOUT), CacheConfig(directory / "cache", cache_bytes), read)


def assemble_core(directory: Path, store: ObjectStore, folders: list[str] | None = None, *, prefix: str = PREFIX,
                  ttl: float = LISTING_TTL, read: ReadConfig = READ, clock: Clock = REAL_CLOCK,
                  cache_bytes: int = CACHE_BYTES) -> Assembly:
    """The assembled core with its cache in ``directory/cache``; the root is the prefix's listing unless
    ``folders`` names them. Its ``status.json`` holds :data:`STATUS`."""
    config = core_config(directory, prefix, ttl, read, cache_bytes)
    root: list[str] | Listing = store.list_dir(prefix) if folders is None else folders
    return assemble(config, store, root, prepare(config.cache.directory), lambda: STATUS, clock)


class Cores:
    """Assembles cores for one test (see :func:`assemble_core`); the ``cores`` fixture closes them after it."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self.made: list[Assembly] = []

    def __call__(self, store: ObjectStore, folders: list[str] | None = None, **options: Any) -> Assembly:
        assembly = assemble_core(self._directory / f"core{len(self.made)}", store, folders, **options)
        self.made.append(assembly)
        return assembly
