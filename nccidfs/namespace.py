"""Key <-> path rules and the TTL'd, bounded cache of directory listings. No FUSE, no boto3.

The tree is a pure function of the listing: a directory per common prefix, a file per object.
The root is built from the folders the credentials may list (the warehouse refuses a listing of
``training/`` to most users), then every directory is listed lazily, once per TTL, with one
in-flight listing per directory however many callers want it.

Keys that cannot be file names (empty, ``.`` or ``..`` segments, control characters, over 255 bytes) are
left out with one warning each; a directory marker (a key ending in ``/``) is the directory itself; a
name that is both an object and a prefix is shown as the directory. See docs/semantics.md.
"""

from __future__ import annotations

import bisect
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TTLCache

from nccidfs.errors import NccidfsError, NotFound, TransientError
from nccidfs.objects import Listing, ObjectInfo
from nccidfs.store import ObjectStore

if TYPE_CHECKING:
    from nccidfs.index import ListingIndex

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 255
# Directories this deep under the mount root (``ct/<patient>/``) are listed with their whole subtree.
SUBTREE_DEPTH = 2
# How many following sibling subtrees a walk lists ahead, and with how many threads.
SIBLINGS_AHEAD = 16
BACKGROUND_LISTINGS = 8
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Entry:
    """A name in a directory: a sub-directory, a file backed by one object, or a symlink (views only)."""

    name: str
    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    obj: ObjectInfo | None = None
    link: str | None = None


def split_path(path: str) -> list[str]:
    """``/ct/Covid1`` -> ``["ct", "Covid1"]``; the root is ``[]``."""
    return [part for part in path.split("/") if part]


def dir_prefix(root_prefix: str, parts: Sequence[str]) -> str:
    """The S3 prefix (with trailing slash) that a directory path stands for."""
    return root_prefix + "".join(f"{part}/" for part in parts)


def is_safe_name(name: str) -> bool:
    """Whether an S3 key segment can be shown as a file name without escaping, clashing or confusing tools.

    Control characters are legal in Linux names but break shells, ``find | xargs`` and viewers; the
    warehouse loader never writes them, so such a key is a damaged one and is skipped.
    """
    return (name not in ("", ".", "..") and "/" not in name and not _CONTROL.search(name)
            and len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES)


class _WarnOnce:
    """Logs each skipped key once per process, so a bad key does not flood the log."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, key: str, why: str) -> None:
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
        log.warning("skipping key %r: %s", key, why)


warn_skipped = _WarnOnce()


def entries_from_listing(listing: Listing, prefix: str, default_mtime: float) -> dict[str, Entry]:
    """One directory's entries, sorted by name; odd keys are dropped as the module docstring says."""
    entries: dict[str, Entry] = {}
    for sub in listing.prefixes:
        name = sub[len(prefix):].rstrip("/")
        if sub[len(prefix):].count("/") != 1 or not is_safe_name(name):
            warn_skipped(sub, "not a usable directory name")
            continue
        entries[name] = Entry(name, True, mtime=default_mtime)
    for obj in listing.objects:
        name = obj.key[len(prefix):]
        if name == "":
            continue  # the directory marker of this directory itself
        if not is_safe_name(name):
            warn_skipped(obj.key, "not a usable file name")
            continue
        if name in entries:
            warn_skipped(obj.key, "an object and a prefix share this name; the directory is shown")
            continue
        entries[name] = Entry(name, False, obj.size, obj.mtime, obj)
    return dict(sorted(entries.items()))


def entries_from_tree(listing: Listing, prefix: str, default_mtime: float) -> dict[str, dict[str, Entry]]:
    """Every directory's entries under ``prefix`` from one flat listing; the same rules as per directory."""
    tree: dict[str, dict[str, Entry]] = {prefix: {}}
    files_seen: dict[tuple[str, str], str] = {}
    for obj in listing.objects:
        *folders, leaf = obj.key[len(prefix):].split("/")
        directory = prefix
        for name in folders:
            if not is_safe_name(name):
                warn_skipped(directory + name + "/", "not a usable directory name")
                break
            clash = files_seen.pop((directory, name), None)
            if clash is not None:
                warn_skipped(clash, "an object and a prefix share this name; the directory is shown")
            tree[directory][name] = Entry(name, True, mtime=default_mtime)
            directory += name + "/"
            tree.setdefault(directory, {})
        else:
            if leaf == "":
                continue  # a directory marker
            if not is_safe_name(leaf):
                warn_skipped(obj.key, "not a usable file name")
            elif leaf in tree[directory] and tree[directory][leaf].is_dir:
                warn_skipped(obj.key, "an object and a prefix share this name; the directory is shown")
            else:
                tree[directory][leaf] = Entry(leaf, False, obj.size, obj.mtime, obj)
                files_seen[(directory, leaf)] = obj.key
    return {directory: dict(sorted(entries.items())) for directory, entries in tree.items()}


class Namespace:
    """Answers lookups and listings of mount paths from cached S3 listings.

    Where a listing comes from, in order: the in-memory TTL cache; the persisted index when the row is
    younger than the TTL, or was written by an earlier run (served at once, refreshed in the background);
    S3. When S3 fails and the index has any copy, that copy is served with a warning (offline mode).
    """

    def __init__(self, store: ObjectStore, prefix: str, root_folders: Iterable[str], ttl: float,
                 max_entries: int, index: ListingIndex | None = None) -> None:
        self._store = store
        self._prefix = prefix
        self._ttl = ttl
        self._index = index
        self._started = time.time()
        self._root = {name: Entry(name, True, mtime=self._started) for name in sorted(root_folders)}
        # Each listing weighs its number of entries, so the bound is on names held, not directories.
        self._listings: TTLCache[str, dict[str, Entry]] = TTLCache(
            maxsize=max_entries, ttl=ttl, getsizeof=lambda entries: len(entries) + 1)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[dict[str, Entry]]] = {}
        self._background: ThreadPoolExecutor | None = None
        self._queued: set[str] = set()  # prefixes waiting for a background listing

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def mount_time(self) -> float:
        return self._started

    def list(self, path: str) -> dict[str, Entry]:
        """The entries of directory ``path``."""
        parts = split_path(path)
        if not parts:
            return self._root
        if parts[0] not in self._root:
            raise NotFound(path)
        prefix = dir_prefix(self._prefix, parts)
        with self._lock:
            cached = self._listings.get(prefix)
        if cached is not None:
            return cached
        cached = self._from_pending_subtree(parts, prefix)
        if cached is not None:
            return cached
        stored = self._index.get(prefix, self._started) if self._index else None
        if stored is not None:
            fetched, entries = stored
            fresh = time.time() - fetched < self._ttl
            if fresh or fetched < self._started:
                self._remember(prefix, entries)
                if not fresh:
                    self._in_background(prefix, refresh=True)
                return entries
        try:
            entries = self._list_once(prefix)
            if len(parts) == SUBTREE_DEPTH:
                self._list_siblings_ahead("/" + "/".join(parts[:-1]), parts[-1])
            return entries
        except TransientError:
            if stored is None:
                raise
            log.warning("S3 unreachable; serving the listing of %s saved at %s", prefix,
                        time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stored[0])))
            return stored[1]

    def _from_pending_subtree(self, parts: Sequence[str], prefix: str) -> dict[str, Entry] | None:
        """A directory inside a patient subtree whose flat listing is under way or queued: use that listing
        rather than list the directory on its own."""
        if len(parts) <= SUBTREE_DEPTH:
            return None
        ancestor = dir_prefix(self._prefix, parts[:SUBTREE_DEPTH])
        with self._lock:
            pending = ancestor in self._inflight or ancestor in self._queued
        if not pending:
            return None
        try:
            self._list_once(ancestor)
        except NccidfsError:
            return None
        with self._lock:
            return self._listings.get(prefix)

    def _list_once(self, prefix: str) -> dict[str, Entry]:
        """List ``prefix`` from S3; concurrent callers share one listing.

        From patient depth down, one flat listing of the whole subtree replaces a listing per directory:
        a patient's studies, series and images usually fit in one or two pages, so a walk of the subtree
        then costs nothing more.
        """
        with self._lock:
            future = self._inflight.get(prefix)
            owner = future is None
            if future is None:
                future = self._inflight[prefix] = Future()
        if not owner:
            return future.result()
        try:
            if prefix[len(self._prefix):].count("/") >= SUBTREE_DEPTH:
                tree = entries_from_tree(self._store.list_tree(prefix), prefix, self._started)
            else:
                tree = {prefix: entries_from_listing(self._store.list_dir(prefix), prefix, self._started)}
            fetched = time.time()
            for directory, entries in tree.items():
                if self._index is not None:
                    self._index.put(directory, entries, fetched)
                self._remember(directory, entries)
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                self._inflight.pop(prefix, None)
        future.set_result(tree[prefix])
        return tree[prefix]

    def _remember(self, prefix: str, entries: dict[str, Entry]) -> None:
        with self._lock:
            try:
                self._listings[prefix] = entries
            except ValueError:
                log.warning("listing of %s (%d entries) exceeds the listing cache bound", prefix, len(entries))

    def _in_background(self, prefix: str, refresh: bool = False) -> None:
        """List ``prefix`` in the background: a refresh of a stale listing, or a sibling a walk will reach
        soon (skipped if the walk got there first)."""
        with self._lock:
            if prefix in self._queued:
                return
            self._queued.add(prefix)
            if self._background is None:
                self._background = ThreadPoolExecutor(BACKGROUND_LISTINGS, thread_name_prefix="list")
            background = self._background

        def list_quietly() -> None:
            try:
                with self._lock:
                    done = not refresh and prefix in self._listings
                if not done:
                    self._list_once(prefix)
            except NccidfsError as error:
                log.debug("background listing of %s failed: %s", prefix, error)
            finally:
                with self._lock:
                    self._queued.discard(prefix)

        background.submit(list_quietly)

    def _list_siblings_ahead(self, parent: str, name: str) -> None:
        """A walk (``find``, ``os.walk``) visits sibling directories in order: list the next ones now.

        Only when the parent's listing is already held: a walk has listed it; a lone lookup has not.
        """
        with self._lock:
            listing = self._listings.get(dir_prefix(self._prefix, split_path(parent)))
        if listing is None:
            return
        siblings = [entry.name for entry in listing.values() if entry.is_dir]
        start = bisect.bisect_right(siblings, name)
        for sibling in siblings[start:start + SIBLINGS_AHEAD]:
            prefix = dir_prefix(self._prefix, [*split_path(parent), sibling])
            with self._lock:
                known = prefix in self._listings or prefix in self._inflight or prefix in self._queued
            if not known and (self._index is None or self._index.get(prefix, self._started) is None):
                self._in_background(prefix)

    def lookup(self, path: str) -> Entry:
        """The entry for ``path``, answered from its parent's listing (no request per file)."""
        parts = split_path(path)
        if not parts:
            return Entry("", True, mtime=self._started)
        parent = "/" + "/".join(parts[:-1])
        entry = self.list(parent).get(parts[-1])
        if entry is None:
            raise NotFound(path)
        return entry

    def invalidate(self, path: str = "/") -> int:
        """Forget listings at and below ``path`` (memory and index); returns how many were dropped."""
        return self.invalidate_prefix(dir_prefix(self._prefix, split_path(path)))

    def invalidate_prefix(self, prefix: str) -> int:
        with self._lock:
            stale = [key for key in self._listings if key.startswith(prefix)]
            for key in stale:
                del self._listings[key]
        dropped = self._index.delete_under(prefix) if self._index else 0
        return max(len(stale), dropped)

    def cached_entries(self) -> int:
        with self._lock:
            return int(self._listings.currsize)

    def shutdown(self) -> None:
        if self._background is not None:
            self._background.shutdown(wait=False, cancel_futures=True)
