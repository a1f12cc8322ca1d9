"""``/.nccidfs/cohorts/NAME/`` inside a running mount: each manifest in the cache directory's
``cohorts/`` folder, mirrored as a tree of just its objects.

A researcher keeps the live warehouse mounted and looks at a frozen cohort beside it, without a second
mount: ``nccidfs cohort create NAME MOUNT`` links the manifest it writes into that folder, and any other
manifest (one received from elsewhere, a part of a split) is copied or linked there by hand. As on a
``--cohort`` mount, sizes and dates are the manifest's, nothing is listed from S3, and every read is
pinned to the manifest's ETag (an object changed since is EIO, a deleted one ENOENT, each logged once).
A manifest of another warehouse is refused (EIO, logged), never read from this one.

A manifest is read on the first look-up of its name and held while it stays the same file (a replaced
one is read again); at most :data:`LOADED_COHORTS` are held at once, a million objects taking about
75 MiB.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path

from nccidfs.cache import CacheEntry
from nccidfs.cachedir import COHORTS_FOLDER
from nccidfs.cohort import manifest, packed
from nccidfs.cohort.source import REPORT, endpoint_host
from nccidfs.cohort.tree import FrozenTree
from nccidfs.config import S3Config
from nccidfs.errors import ConfigError, NotFound
from nccidfs.fetch import Fetcher, ReadCursor
from nccidfs.namespace.rules import is_safe_name
from nccidfs.objects import Chunk, Entry
from nccidfs.views.registry import Parts, VirtualFile

LOADED_COHORTS = 2


def publish(path: Path, cache_dir: Path) -> str:
    """Link (or copy) the manifest at ``path`` into a mount's cohorts folder: what was done, in words.
    A manifest of the same name there is kept; nothing here fails the command that wrote ``path``."""
    folder = cache_dir / COHORTS_FOLDER
    target = folder / path.name
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        if target.exists():
            return f"not linked: {target} exists"
        try:
            os.link(path, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            shutil.copyfile(path, target)
    except OSError as error:
        return f"not linked into {folder}: {error.strerror}"
    return f"linked into {folder}"


class CohortFile:
    """An open object of a cohort: read through the mount's cache, pinned to the manifest's ETag."""

    # Its size and bytes cannot change while it is open: the kernel may keep its pages.
    direct_io = False

    def __init__(self, fetcher: Fetcher, entry: CacheEntry) -> None:
        self._fetcher, self._entry = fetcher, entry
        self._cursor = ReadCursor()

    def read(self, offset: int, size: int) -> Chunk:
        return REPORT.read(self._entry.key, self._entry.etag,
                           lambda: self._fetcher.read(self._entry, offset, size, self._cursor))

    def release(self) -> None:
        self._fetcher.unpin(self._entry)


class CohortView:
    """The layer: ``cohorts/`` lists the manifests, ``cohorts/NAME/...`` a manifest's tree."""

    NAME = "cohorts"

    def __init__(self, cache_dir: Path, warehouse: manifest.Warehouse, fetcher: Fetcher, mtime: float) -> None:
        self._cache_dir = cache_dir
        self._folder = cache_dir / COHORTS_FOLDER
        self._warehouse = warehouse
        self._fetcher = fetcher
        self._mtime = mtime
        self._loaded: OrderedDict[tuple[str, int, int, int], FrozenTree] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def of_mount(cls, cache_dir: Path, s3: S3Config, fetcher: Fetcher, mtime: float) -> CohortView:
        """The view of a mount of ``s3`` whose cache directory is ``cache_dir``."""
        return cls(cache_dir, manifest.Warehouse(endpoint_host(s3), s3.bucket, s3.prefix), fetcher, mtime)

    def _manifests(self) -> dict[str, Path]:
        try:
            names = sorted(os.listdir(self._folder))
        except FileNotFoundError:
            return {}
        stems = (name.removesuffix(manifest.SUFFIX) for name in names if name.endswith(manifest.SUFFIX))
        return {stem: self._folder / f"{stem}{manifest.SUFFIX}" for stem in stems if is_safe_name(stem)}

    def _path(self, name: str) -> Path:
        path = self._manifests().get(name)
        if path is None:
            raise NotFound(f"{COHORTS_FOLDER}/{name}: no such manifest in {self._folder}")
        return path

    def _tree(self, name: str) -> FrozenTree:
        path = self._path(name)
        with self._lock:  # one manifest read at a time: a second look-up of it waits for the first
            try:
                stat = path.stat()
            except OSError as error:
                raise NotFound(f"{path}: {error.strerror}") from None
            identity = (name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
            tree = self._loaded.get(identity)
            if tree is None:
                tree = self._load(path)
                self._loaded[identity] = tree
                while len(self._loaded) > LOADED_COHORTS:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(identity)
            return tree

    def _load(self, path: Path) -> FrozenTree:
        frozen = manifest.read_header(path).warehouse
        if (frozen.endpoint, frozen.bucket) != (self._warehouse.endpoint, self._warehouse.bucket):
            raise ConfigError(f"cohort {path} holds objects of {frozen.endpoint}/{frozen.bucket}, and this mount "
                              f"reads {self._warehouse.endpoint}/{self._warehouse.bucket}")
        return packed.read_tree(path, self._cache_dir)[2]

    def _folder_mtime(self) -> float:
        """The folder's own time: the kernel keeps a listing of ``cohorts/`` until its time changes (a
        manifest added or removed), which it asks again for after ``--attr-timeout``."""
        try:
            return max(self._mtime, self._folder.stat().st_mtime)
        except OSError:
            return self._mtime

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return Entry(self.NAME, True, mtime=self._folder_mtime())
        tree = self._tree(parts[0])
        if len(parts) == 1:
            return Entry(parts[0], True, mtime=self._mtime)
        key = tree.prefix + "/".join(parts[1:])
        obj = tree.find(key)
        if obj is not None:
            return Entry(parts[-1], False, obj.size, obj.mtime, obj)
        if tree.is_folder(key + "/"):
            return Entry(parts[-1], True, mtime=self._mtime)
        raise NotFound(f"{COHORTS_FOLDER}/{'/'.join(parts)}")

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            return {name: Entry(name, True, mtime=self._mtime) for name in self._manifests()}
        tree = self._tree(parts[0])
        prefix = tree.prefix + "".join(f"{part}/" for part in parts[1:])
        if not tree.is_folder(prefix):
            raise NotFound(f"{COHORTS_FOLDER}/{'/'.join(parts)}")
        listing = tree.list_dir(prefix)
        entries = {sub[len(prefix):-1]: Entry(sub[len(prefix):-1], True, mtime=self._mtime)
                   for sub in listing.prefixes}
        for obj in listing.objects:
            name = obj.key[len(prefix):]
            entries[name] = Entry(name, False, obj.size, obj.mtime, obj)
        return dict(sorted(entries.items()))

    def open(self, parts: Parts) -> VirtualFile:
        entry = self.lookup(parts)
        if entry.obj is None:
            raise NotFound(f"{COHORTS_FOLDER}/{'/'.join(parts)}: not a file")
        return CohortFile(self._fetcher, self._fetcher.pin(entry.obj))

    def readlink(self, parts: Parts) -> str:
        raise NotFound("a cohort holds no symlinks")
