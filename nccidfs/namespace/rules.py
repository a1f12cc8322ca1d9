"""Key <-> path rules: which S3 keys the mounted tree shows, under which names. Pure: no I/O.

The tree is a pure function of the listing: a directory per common prefix, a file per object. Keys that
cannot be file names (empty, ``.`` or ``..`` segments, control characters, over 255 bytes) are left out
with one warning each; a directory marker (a key ending in ``/``) is the directory itself; a name that is
both an object and a prefix is shown as the directory. See docs/semantics.md.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from itertools import groupby, repeat
from operator import itemgetter

from nccidfs.objects import Entry, Listing, ObjectInfo

log = logging.getLogger(__name__)

# The longest file name the kernel takes (NAME_MAX), in bytes.
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    if name.isascii() and name.isprintable() and len(name) <= MAX_NAME_BYTES:  # nearly every key: no regex
        return name not in ("", ".", "..") and "/" not in name
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


def _all_plain(names: list[str]) -> bool:
    """Whether :func:`is_safe_name` takes every one of these distinct names at a glance (printable ASCII,
    none empty, ``.`` or ``..``, none too long), checked for them all at once."""
    joined = "".join(names)
    distinct = set(names)
    return (joined.isascii() and joined.isprintable() and len(distinct) == len(names)
            and not distinct & {"", ".", ".."} and max(map(len, names), default=0) <= MAX_NAME_BYTES)


def _folder(obj: ObjectInfo) -> str:
    return obj.key.rpartition("/")[0]


def entries_from_tree(listing: Listing, prefix: str, default_mtime: float) -> dict[str, dict[str, Entry]]:
    """Every directory's entries under ``prefix`` from one flat listing; the same rules as per directory.

    Keys come sorted, so a folder's files come together: the first makes the folder (checking each of its
    names), and the rest, checked at once, become entries in one step, not one Python step a key."""
    tree: dict[str, dict[str, Entry]] = {prefix: {}}
    for folder, group in groupby(listing.objects, key=_folder):
        first, *rest = group
        directory = _add(tree, prefix, first, default_mtime)
        if not rest:
            continue
        entries = tree.get(directory) if directory is not None else None
        leaves = [obj.key[len(folder) + 1:] for obj in rest]
        if entries is not None and _all_plain(leaves) and entries.keys().isdisjoint(leaves):
            made = map(tuple.__new__, repeat(Entry), zip(leaves, repeat(False), map(itemgetter(1), rest),
                                                          map(itemgetter(3), rest), rest, repeat(None)))
            entries.update(zip(leaves, made, strict=True))
        else:
            for obj in rest:
                _add(tree, prefix, obj, default_mtime)
    return {directory: dict(sorted(entries.items())) for directory, entries in tree.items()}


def _add(tree: dict[str, dict[str, Entry]], prefix: str, obj: ObjectInfo, default_mtime: float) -> str | None:
    """Add one key to ``tree``, with the directories it lies in; returns its directory's prefix, None when a
    name on its way cannot be shown."""
    *folders, leaf = obj.key[len(prefix):].split("/")
    directory = prefix
    for name in folders:
        if not is_safe_name(name):
            warn_skipped(directory + name + "/", "not a usable directory name")
            return None
        seen = tree[directory].get(name)
        if seen is not None and seen.obj is not None:
            warn_skipped(seen.obj.key, "an object and a prefix share this name; the directory is shown")
        if seen is None or not seen.is_dir:
            tree[directory][name] = Entry(name, True, mtime=default_mtime)
        directory += name + "/"
        tree.setdefault(directory, {})
    if leaf == "":
        return directory  # a directory marker
    if not is_safe_name(leaf):
        warn_skipped(obj.key, "not a usable file name")
    elif leaf in tree[directory]:
        if tree[directory][leaf].is_dir:
            warn_skipped(obj.key, "an object and a prefix share this name; the directory is shown")
    else:
        tree[directory][leaf] = Entry(leaf, False, obj.size, obj.mtime, obj)
    return directory
