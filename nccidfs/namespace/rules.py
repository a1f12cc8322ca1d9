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

from nccidfs.objects import Entry, Listing

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


def entries_from_tree(listing: Listing, prefix: str, default_mtime: float) -> dict[str, dict[str, Entry]]:
    """Every directory's entries under ``prefix`` from one flat listing; the same rules as per directory."""
    tree: dict[str, dict[str, Entry]] = {prefix: {}}
    files_seen: dict[tuple[str, str], str] = {}
    # Keys come sorted, so most share the folder of the key before: its names were checked already.
    last_folder, last_entries = None, tree[prefix]
    for obj in listing.objects:
        folder, _, leaf = obj.key.rpartition("/")
        if folder == last_folder and is_safe_name(leaf) and leaf not in last_entries:
            last_entries[leaf] = Entry(leaf, False, obj.size, obj.mtime, obj)
            files_seen[(folder + "/", leaf)] = obj.key
            continue
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
            last_folder, last_entries = directory[:-1], tree[directory]
    return {directory: dict(sorted(entries.items())) for directory, entries in tree.items()}
