"""Walk read-ahead. Two subtrees read (readdir) one after the other that are consecutive siblings are a
walk (``find``, ``os.walk``, ``ls -R``): the siblings after them are then listed ahead, in flat listings
that each cover a run of them, sized by the keys a sibling held so far. A lone lookup never starts one.

This module decides what to list ahead and how one listing covers a run; :class:`nccidfs.namespace.Namespace`
claims the listings and runs them in its background pool.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Sequence

from nccidfs.objects import Entry, Listing
from nccidfs.store.protocol import ObjectStore

# A walk has the next subtrees listed ahead: at least this many siblings, in at most this many listings at
# a time (run by the namespace's BACKGROUND_LISTINGS threads).
SIBLINGS_AHEAD = 16
LISTINGS_AHEAD = 4
# Where siblings hold few keys (X-rays: 3 or 4 a patient), one flat listing covers a run of them, sized
# from the keys per sibling seen so far to fill about this much of a 1,000-key page.
RUN_KEYS = 800
# The index of the sibling read last before any was: no first read continues a walk.
NONE_READ = -2

# A run of siblings to list ahead (their names), and the sibling after the last (None past the end).
Run = tuple[list[str], str | None]


class Walk:
    """A walk through one folder's sub-directories: where it is, how far ahead they are listed, and how
    many keys a sub-directory holds on average (which decides how many one listing covers)."""

    def __init__(self, entries: dict[str, Entry]) -> None:
        self.entries = entries
        # In key order (``name/``), which is not name order ("a-b/" < "a/"): a run is contiguous in keys.
        self.siblings = sorted(entry.name + "/" for entry in entries.values() if entry.is_dir)
        self.last = NONE_READ  # index of the sibling read last
        self.frontier = 0  # siblings before this index are listed or queued
        self.subtrees = 0
        self.keys = 0

    def run_length(self) -> int:
        if self.subtrees == 0 or self.keys == 0:
            return 1
        return max(1, int(RUN_KEYS * self.subtrees / self.keys))

    def runs_ahead(self, at: int) -> Iterator[Sequence[str]]:
        """The runs of siblings to list now that the walk is at index ``at``; moves the frontier."""
        length = self.run_length()
        stop = min(len(self.siblings), at + 1 + max(SIBLINGS_AHEAD, LISTINGS_AHEAD * length))
        start = max(self.frontier, at + 1)
        while start < stop and (stop - start >= length or stop == len(self.siblings)):
            yield [sibling[:-1] for sibling in self.siblings[start:start + length]]
            start += length
            self.frontier = max(self.frontier, start)

    def after(self, name: str) -> str | None:
        """The sibling that follows ``name``, or None for the last."""
        at = bisect.bisect_right(self.siblings, name + "/")
        return self.siblings[at][:-1] if at < len(self.siblings) else None


class WalkTracker:
    """The walks under way, one per folder: which sibling each read last, and what is listed ahead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._walks: dict[str, Walk] = {}

    def visited(self, parent_prefix: str, entries: dict[str, Entry], name: str) -> list[Run]:
        """Sibling ``name`` of folder ``parent_prefix`` (whose listing is ``entries``) was read: the runs to
        list ahead now, none unless this read continues a walk (the sibling right after the last read)."""
        with self._lock:
            walk = self._walks.get(parent_prefix)
            if walk is None or walk.entries is not entries:
                walk = self._walks[parent_prefix] = Walk(entries)
            at = bisect.bisect_left(walk.siblings, name + "/")
            if at == len(walk.siblings) or walk.siblings[at] != name + "/":
                return []
            walking, walk.last = at == walk.last + 1, at
            if not walking:
                return []
            return [(list(run), walk.after(run[-1])) for run in walk.runs_ahead(at)]

    def count_keys(self, parent: str, subtrees: int, keys: int) -> None:
        """How many keys the subtrees of a folder hold, so a walk of it sizes its runs."""
        with self._lock:
            walk = self._walks.get(parent)
            if walk is not None:
                walk.subtrees += subtrees
                walk.keys += keys


def list_run(store: ObjectStore, parent: str, siblings: Sequence[str], end: str | None) -> Listing:
    """One flat listing of a run of sibling prefixes (``siblings``, in key order): a sibling's own subtree,
    or for several, the parent's keys from the first of them to ``end``, the sibling after the last."""
    if len(siblings) == 1:
        return store.list_tree(siblings[0])
    return store.list_tree(parent, start_after=siblings[0][:-1], end=None if end is None else f"{parent}{end}/")


def run_subtrees(tree: dict[str, dict[str, Entry]], parent: str, siblings: Sequence[str]
                 ) -> dict[str, dict[str, Entry]]:
    """The directories of a run's listing that lie inside its siblings (each sibling's own, empty if it
    holds nothing): what the listing answers for."""
    kept: dict[str, dict[str, Entry]] = {prefix: {} for prefix in siblings}
    for directory, entries in tree.items():
        head = directory.find("/", len(parent))
        if head >= 0 and directory[:head + 1] in kept:
            kept[directory] = entries
    return kept
