"""The TTL'd, bounded cache of directory listings: where a listing comes from and how it stays fresh.
No FUSE, no boto3.

The root is the prefix's own listing when the credentials may list it; otherwise it is built from the
folders they may list (the warehouse refuses a listing of ``training/`` to most users). Every directory
is listed lazily, with one in-flight listing per directory however many callers want it; a patient's
folder is listed with its whole subtree in one flat listing. What a listing shows follows the key rules of
:mod:`nccidfs.namespace.rules`; walks have the next subtrees listed ahead (:mod:`nccidfs.namespace.readahead`).

Freshness is stale-while-revalidate: a listing younger than the TTL is served as it is; an older one (or
one saved by an earlier run) is served at once and listed again in the background. A failed background
listing keeps the old one, with one warning for the whole outage. Only a directory never listed waits
for S3, and then no longer than the calling FUSE call's deadline (:mod:`nccidfs.deadline`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from cachetools import TTLCache

from nccidfs import deadline
from nccidfs.clock import REAL_CLOCK, Clock
from nccidfs.errors import NccidfsError, NotFound, TransientError
from nccidfs.index import ListingIndex
from nccidfs.layout import PATIENT_DEPTH
from nccidfs.namespace.held import ENTRY_BYTES, HeldListings, Listed
from nccidfs.namespace.readahead import WalkTracker, list_run, run_subtrees
from nccidfs.namespace.rules import dir_prefix, entries_from_listing, entries_from_tree, split_path
from nccidfs.objects import Entry, Listing
from nccidfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

# Directories this deep under the mount root, a patient's folder (``ct/<patient>/``), are listed with their
# whole subtree.
SUBTREE_DEPTH = PATIENT_DEPTH
# Threads that list in the background: revalidations and walk read-ahead. A walk of CT folders on 2 cores
# (at 20 ms a request): 64,000 files/s with 4 threads, 78,000-84,000 with 6, no more with 8; a stat during
# the walk took 10-14 ms at the 90th percentile with 6 (16-21 ms with 8). (Before the garbage collector was
# settled, see nccidfs.daemon, its pauses made 6 threads cost other calls 30-60 ms.)
BACKGROUND_LISTINGS = 6
# Listings a caller waits for, at once: as many as the readers a data loader starts on unlisted folders.
FOREGROUND_LISTINGS = 32
# After a failed background refresh, the old listing is served this long before the next try, in at most
# this many folders (each a few hundred bytes).
REVALIDATE_BACKOFF = 30.0
BACKOFF_FOLDERS = 10_000
# How long opening a file waits for its folder to be listed again when that listing is from an earlier
# run (the object may have been replaced while the daemon was down); past it the saved listing is used.
REVALIDATE_ON_OPEN = 0.5
# How long a caller waits for a listing when no FUSE call's deadline applies.
DEFAULT_TIMEOUT = 30.0


class Namespace:
    """Answers lookups and listings of mount paths from cached S3 listings.

    Where a listing comes from, in order: memory (whole listings, small ones packed, within
    ``max_entries`` KiB: :mod:`nccidfs.namespace.held`); the persisted index
    (whole, or row by row for a folder too large for memory); S3. Whatever is served past its TTL is
    refreshed in the background.
    """

    def __init__(self, store: ObjectStore, prefix: str, root: Iterable[str] | Listing, ttl: float,
                 max_entries: int, index: ListingIndex, timeout: float = DEFAULT_TIMEOUT,
                 clock: Clock = REAL_CLOCK) -> None:
        """``root`` is the prefix's own listing when it may be listed, else the folders that may be;
        ``clock`` tells the listings' ages."""
        self._store = store
        self._clock = clock
        self._prefix = prefix
        self._ttl = ttl
        self._index = index
        self._timeout = timeout
        self._max_entries = max_entries
        self._started = clock.time()
        # None: the prefix itself may be listed, and the root is its listing like any directory.
        self._fixed_root = None if isinstance(root, Listing) else {
            name: Entry(name, True, mtime=self._started) for name in sorted(root)}
        self._listings = HeldListings(prefix, max_entries * ENTRY_BYTES, self._started, SUBTREE_DEPTH)
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[dict[str, Entry]]] = {}
        self._backoff: TTLCache[str, bool] = TTLCache(maxsize=BACKOFF_FOLDERS, ttl=REVALIDATE_BACKOFF,
                                                         timer=clock.monotonic)
        self._offline = False
        self._generation = 0  # bumped by every invalidation; a listing begun before one is not kept
        # Called with the mount path of a file that a new listing replaced or removed.
        self.on_change: Callable[[str], None] = lambda path: None
        # Called with the mount path of a name that a new listing no longer shows.
        self.on_removed: Callable[[str], None] = lambda path: None
        # Called with the mount path of a directory whose listing changed (and whether those below it too).
        self.on_listing_change: Callable[[str, bool], None] = lambda path, subtree: None
        self._walks = WalkTracker()
        self._looked_up_by_name: set[str] = set()  # folders where a patient was looked up before listing
        self._foreground = ThreadPoolExecutor(FOREGROUND_LISTINGS, thread_name_prefix="list")
        self._background = ThreadPoolExecutor(BACKGROUND_LISTINGS, thread_name_prefix="list-ahead")
        if isinstance(root, Listing):  # listed at start-up: no need to list it again
            self._keep({prefix: entries_from_listing(root, prefix, self._started)}, self._generation)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def mount_time(self) -> float:
        return self._started

    # -- answering ------------------------------------------------------------------------------
    def list(self, path: str) -> dict[str, Entry]:
        """The entries of directory ``path``."""
        return self.list_fresh(path)[0]

    def list_fresh(self, path: str) -> tuple[dict[str, Entry], float]:
        """The entries of directory ``path``, and the seconds their listing stays within its TTL (see
        :meth:`fresh_for`)."""
        parts = split_path(path)
        prefix = self._prefix_of(parts)
        if prefix is None:
            assert self._fixed_root is not None
            return self._fixed_root, 0.0
        if len(parts) == SUBTREE_DEPTH:
            self._visited(parts[:-1], parts[-1])
        known = self._known(prefix, parts)
        if known is not None:
            fetched, entries = known
            self._revalidate_if_stale(prefix, fetched)
            if entries is not None:
                return entries, self.fresh_for(fetched)
            stored = self._index.get(prefix, self._started)  # a folder too large to hold in memory
            if stored is not None:
                return stored[1], self.fresh_for(stored[0])
        return self._list_once(prefix), self._ttl  # just listed (an upper bound: the kernel asks a moment late)

    def lookup(self, path: str) -> Entry:
        """The entry for ``path``, answered from its parent's listing (no request per file)."""
        return self.lookup_fresh(path)[0]

    def lookup_fresh(self, path: str) -> tuple[Entry, float]:
        """The entry for ``path``, and the seconds its parent's listing stays within its TTL (see
        :meth:`fresh_for`; 0 for a name found without a listing of its parent)."""
        parts = split_path(path)
        if not parts:
            return Entry("", True, mtime=self._started), 0.0
        parent, name = parts[:-1], parts[-1]
        prefix = self._prefix_of(parent)
        entry: Entry | None
        fresh = 0.0
        if prefix is None:
            assert self._fixed_root is not None
            entry = self._fixed_root.get(name)
        else:
            known = self._known(prefix, parent)
            if known is None:
                entry = self._lookup_unlisted(prefix, parent, name)
            else:
                fetched, entries = known
                self._revalidate_if_stale(prefix, fetched)
                entry = (entries.get(name) if entries is not None
                         else self._index.lookup(prefix, name, self._started))
                fresh = self.fresh_for(fetched)
        if entry is None:
            raise NotFound(path)
        return entry, fresh

    def fresh_for(self, fetched: float) -> float:
        """Seconds until a listing made at ``fetched`` is past its TTL, when it would be listed again if
        asked for: 0 for one saved by an earlier run, which is checked on its next use."""
        if fetched < self._started:
            return 0.0
        return max(0.0, fetched + self._ttl - self._clock.time())

    def held_fresh(self, path: str) -> float | None:
        """:meth:`fresh_for` of directory ``path``'s own listing if it is held in memory (None otherwise: a
        lookup in the index would cost a walk more than it saves)."""
        prefix = self._prefix_of(split_path(path))
        if prefix is None:
            return None
        with self._lock:
            held = self._listings.get(prefix)
        return None if held is None else self.fresh_for(held[0])

    def lookup_to_open(self, path: str) -> tuple[Entry, bool]:
        """Like :meth:`lookup`, but a listing saved by an earlier run is first checked against S3 for a
        moment, so a file replaced while the daemon was down opens as its new version; also says whether
        that check changed the entry (the kernel may then hold the old size). A check that does not
        answer in time is not waited for again in that folder for a while (S3 may be down)."""
        before = self.lookup(path)
        parts = split_path(path)
        prefix = self._prefix_of(parts[:-1]) if parts else None
        if prefix is not None:
            known = self._known(prefix, parts[:-1])
            with self._lock:
                backing_off = prefix in self._backoff
            if known is not None and known[0] < self._started and not backing_off:
                self._list_once(prefix, background=True)
                with self._lock:
                    future = self._inflight.get(prefix)
                if future is not None:
                    try:
                        future.result(timeout=min(REVALIDATE_ON_OPEN, deadline.remaining(self._timeout)))
                    except FutureTimeout:
                        with self._lock:
                            self._backoff[prefix] = True
                    except NccidfsError:
                        pass  # the saved listing stays in use
                after = self.lookup(path)
                return after, after != before
        return before, False

    def _prefix_of(self, parts: Sequence[str]) -> str | None:
        """The S3 prefix of a directory, or None for a root built from probed folders."""
        if self._fixed_root is not None:
            if not parts:
                return None
            if parts[0] not in self._fixed_root:
                raise NotFound("/" + "/".join(parts))
        return dir_prefix(self._prefix, parts)

    def _known(self, prefix: str, parts: Sequence[str]) -> tuple[float, dict[str, Entry] | None] | None:
        """(when listed, entries) of a directory listed before, from memory or the index; entries is None
        for a folder too large for memory, whose names are then looked up in the index one by one."""
        with self._lock:
            held = self._listings.get(prefix)
            generation = self._generation
        if held is not None:
            return held
        pending = self._from_pending_subtree(parts, prefix)
        if pending is not None:
            return pending
        head = self._index.head(prefix)
        if head is None:
            return None
        fetched, count = head
        if count + 1 > self._max_entries:
            return fetched, None
        stored = self._index.get(prefix, self._started)
        if stored is None:
            return None
        self._remember(prefix, stored, generation)
        return stored

    def _from_pending_subtree(self, parts: Sequence[str], prefix: str) -> Listed | None:
        """A directory inside a patient subtree whose flat listing is under way or queued: use that listing
        rather than list the directory on its own."""
        if len(parts) <= SUBTREE_DEPTH:
            return None
        ancestor = dir_prefix(self._prefix, parts[:SUBTREE_DEPTH])
        with self._lock:
            pending = ancestor in self._inflight
        if not pending:
            return None
        try:
            self._list_once(ancestor)
        except NccidfsError:
            return None
        with self._lock:
            return self._listings.get(prefix)

    def _lookup_unlisted(self, prefix: str, parent: Sequence[str], name: str) -> Entry | None:
        """A name in a folder never listed. A patient (``ct/<name>``) is looked up with the flat listing
        of its own subtree, which the next call needs anyway, instead of every page of the folder; only
        when that finds nothing is the folder listed (the name may be a file, or absent)."""
        if len(parent) + 1 == SUBTREE_DEPTH:
            self._list_folder_if_looked_up_before(prefix)
            child = f"{prefix}{name}/"
            known = self._known(child, [*parent, name])
            # A subtree too large for memory is held in the index only, and is not empty.
            entries = self._list_once(child) if known is None else known[1]
            if entries is None or entries:
                return Entry(name, True, mtime=self._started)
        return self._list_once(prefix).get(name)

    def _list_folder_if_looked_up_before(self, prefix: str) -> None:
        """The second patient looked up by name in a folder not yet listed starts a listing of the folder in
        the background, and lookups there are then answered from memory. The kernel sends the lookups of one
        directory one at a time, so a data loader's first opens across many patients would otherwise each
        wait for the targeted listing of the patient before (a single lookup lists nothing more)."""
        with self._lock:
            first = prefix not in self._looked_up_by_name
            self._looked_up_by_name.add(prefix)
        if not first:
            self._list_once(prefix, background=True)

    # -- listing from S3 ------------------------------------------------------------------------
    def _list_once(self, prefix: str, background: bool = False) -> dict[str, Entry]:
        """List ``prefix`` from S3 in a pool; concurrent callers share one listing. A foreground caller
        waits only for what is left of its own deadline; a background one does not wait."""
        with self._lock:
            future = self._inflight.get(prefix)
            if future is None:
                future = self._inflight[prefix] = Future()
                pool = self._background if background else self._foreground
                pool.submit(self._fetch, prefix, future, self._generation, background)
        if background:
            return {}
        try:
            return future.result(timeout=deadline.remaining(self._timeout))
        except FutureTimeout:
            # Stop sharing a listing that outlived a whole deadline (a stall): the next caller starts a
            # fresh one instead of waiting on it, as a part past its deadline in the fetcher.
            self._done(prefix, future)
            raise TransientError(f"list {prefix}: no answer from S3 within {self._timeout:g}s") from None

    def _done(self, prefix: str, future: Future[dict[str, Entry]]) -> None:
        """Forget ``future`` as the listing in flight for ``prefix``, if it still is. Hold no lock."""
        with self._lock:
            if self._inflight.get(prefix) is future:
                del self._inflight[prefix]

    def _fetch(self, prefix: str, future: Future[dict[str, Entry]], generation: int, background: bool) -> None:
        """One listing, in a pool thread: from patient depth down, one flat listing of the whole subtree
        answers every directory inside it (a patient usually fits in one or two pages)."""
        try:
            if prefix[len(self._prefix):].count("/") >= SUBTREE_DEPTH:
                listing = self._store.list_tree(prefix)
                tree = entries_from_tree(listing, prefix, self._started)
                self._walks.count_keys(prefix[:prefix.rindex("/", 0, -1) + 1], 1, len(listing.objects))
            else:
                tree = {prefix: entries_from_listing(self._store.list_dir(prefix), prefix, self._started)}
        except BaseException as error:
            self._done(prefix, future)
            if background and isinstance(error, NccidfsError):
                self._background_failed(prefix, error)
            future.set_exception(error)
            return
        self._keep(tree, generation)
        self._done(prefix, future)
        future.set_result(tree[prefix])

    def _keep(self, tree: dict[str, dict[str, Entry]], generation: int) -> None:
        """Store a fresh listing, unless an invalidation came while it was under way."""
        fetched = self._clock.time()
        with self._lock:
            if generation != self._generation:
                return
            if self._offline:
                self._offline = False
                log.warning("S3 answers again; listings are refreshed as they are used")
        self._index.put(tree.items(), fetched)
        with self._lock:
            before = {directory: self._listings.get(directory) for directory in tree}
            self._listings.put((directory, (fetched, entries)) for directory, entries in tree.items())
        # Reported once the new listings are what a read finds, so that a read made on hearing of a change
        # gets the new one.
        for directory, entries in tree.items():
            held = before[directory]
            if held is not None:
                self._report_changes(directory, held[1], entries)
            if held is None or held[1] != entries:
                self.on_listing_change(self._mount_path(directory), False)

    def _mount_path(self, prefix: str) -> str:
        return "/" + prefix[len(self._prefix):].rstrip("/")

    def _report_changes(self, directory: str, old: dict[str, Entry], new: dict[str, Entry]) -> None:
        """Tell ``on_change`` of every file a new listing replaced or removed, so that the kernel forgets
        the size and pages it holds for them at once rather than when its own cache expires, and
        ``on_removed`` of every name it no longer shows (or shows as another kind), so that the kernel
        forgets the name."""
        for name, before in old.items():
            after = new.get(name)
            if before.obj is not None and (after is None or after.obj != before.obj):
                self.on_change(self._mount_path(directory + name))
            if after is None or after.is_dir != before.is_dir:
                self.on_removed(self._mount_path(directory + name))

    def _remember(self, prefix: str, held: Listed, generation: int | None = None) -> None:
        """Hold a listing in memory; one read from the index is not held if an invalidation came since
        (``generation``), or a refresh could be undone by a read that raced it."""
        with self._lock:
            if generation is not None and generation != self._generation:
                return
            self._listings.put([(prefix, held)])  # one too large for memory is not: the index serves it row by row

    # -- background work ------------------------------------------------------------------------
    def revalidate(self, path: str) -> float | None:
        """Refresh directory ``path``'s own listing in the background if it is past its TTL (one held in
        memory or in the index; one never made is not made here). Returns :meth:`fresh_for` of that listing,
        None when there is none."""
        prefix = self._prefix_of(split_path(path))
        if prefix is None:
            return None
        with self._lock:
            held = self._listings.get(prefix)
        fetched = held[0] if held is not None else (self._index.head(prefix) or (None, 0))[0]
        if fetched is None:
            return None
        self._revalidate_if_stale(prefix, fetched)
        return self.fresh_for(fetched)

    def _revalidate_if_stale(self, prefix: str, fetched: float) -> None:
        """Serve-then-refresh: a listing past its TTL, or saved by an earlier run, is listed again in the
        background; while S3 fails, at most once per REVALIDATE_BACKOFF."""
        if self._clock.time() - fetched < self._ttl:
            return
        with self._lock:
            if prefix in self._backoff:
                return
        self._list_once(prefix, background=True)

    def _background_failed(self, prefix: str, error: NccidfsError) -> None:
        with self._lock:
            self._backoff[prefix] = True
            first = not self._offline
            self._offline = True
        if first:
            log.warning("S3 unreachable (%s); serving saved listings until it answers again", error)
        else:
            log.debug("background listing of %s failed: %s", prefix, error)

    def _visited(self, parent: Sequence[str], name: str) -> None:
        """A subtree was read (readdir): if that continues a walk, the runs of siblings after it that no one
        lists yet are claimed and listed in the background (see :mod:`nccidfs.namespace.readahead`)."""
        parent_prefix = dir_prefix(self._prefix, parent)
        claimed = []
        with self._lock:
            held = self._listings.get(parent_prefix)
            if held is None:
                return
            for run, end in self._walks.visited(parent_prefix, held[1], name):
                futures: dict[str, Future[dict[str, Entry]]] = {}
                for sibling in run:
                    prefix = f"{parent_prefix}{sibling}/"
                    if (prefix not in self._inflight and prefix not in self._listings
                            and self._index.head(prefix) is None):
                        futures[prefix] = self._inflight[prefix] = Future()
                if futures:
                    claimed.append((end, futures))
        for end, futures in claimed:
            self._background.submit(self._fetch_run, parent_prefix, end, futures, self._generation)

    def _fetch_run(self, parent: str, end: str | None, futures: dict[str, Future[dict[str, Entry]]],
                   generation: int) -> None:
        """In a pool thread, ahead of a walk: one flat listing answers every directory of the siblings in
        ``futures`` (:func:`~nccidfs.namespace.readahead.list_run`)."""
        siblings = sorted(futures)
        try:
            listing = list_run(self._store, parent, siblings, end)
            tree = entries_from_tree(listing, parent, self._started)
        except BaseException as error:
            for prefix, future in futures.items():
                self._done(prefix, future)
            if isinstance(error, NccidfsError):
                self._background_failed(siblings[0], error)
            for future in futures.values():
                future.set_exception(error)
            return
        self._walks.count_keys(parent, len(futures), len(listing.objects))
        kept = run_subtrees(tree, parent, siblings)
        self._keep(kept, generation)
        for prefix, future in futures.items():
            self._done(prefix, future)
        for prefix, future in futures.items():
            future.set_result(kept[prefix])

    # -- freshness control ----------------------------------------------------------------------
    def invalidate(self, path: str = "/") -> int:
        """Forget listings at and below ``path`` (memory and index); returns how many were dropped."""
        return self.invalidate_prefix(dir_prefix(self._prefix, split_path(path)))

    def invalidate_prefix(self, prefix: str) -> int:
        """Drop memory, then the index, then memory again: a caller that read the index back between the
        first two steps holds an older generation, and its listing is dropped or never kept."""
        stale = self._forget_under(prefix)
        dropped = self._index.delete_under(prefix)
        self._forget_under(prefix)
        self.on_listing_change(self._mount_path(prefix), True)
        return max(stale, dropped)

    def _forget_under(self, prefix: str) -> int:
        with self._lock:
            self._generation += 1  # listings under way are not kept either
            stale = self._listings.drop_under(prefix)
            for key in [key for key in self._backoff if key.startswith(prefix)]:
                del self._backoff[key]
        return stale

    def relist(self, path: str) -> dict[str, Entry]:
        """List directory ``path`` from S3 now (within the call's deadline): the listing is known stale."""
        parts = split_path(path)
        prefix = self._prefix_of(parts)
        if prefix is None:
            assert self._fixed_root is not None
            return self._fixed_root
        self.invalidate_prefix(prefix)
        return self._list_once(prefix)

    def cached_entries(self) -> int:
        with self._lock:
            return self._listings.names()

    def shutdown(self) -> None:
        """Drop the queued listings and wait for those under way: they write to the index, so this comes
        before the index is closed."""
        self._foreground.shutdown(wait=True, cancel_futures=True)
        self._background.shutdown(wait=True, cancel_futures=True)
