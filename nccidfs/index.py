"""The persisted listing index: every directory listing seen, in SQLite, so a remount answers at once.

The warehouse is written once and has barely grown since 2023, so a listing from an earlier run is
almost always still right; the namespace serves it immediately after a remount and refreshes it in the
background, and falls back on it when S3 cannot be reached.

Layout: a row per directory (its prefix, when it was listed, how many entries) and a row per entry,
keyed by (directory, name). A lookup in a folder of any size is then one B-tree probe, O(log n), and a
folder too large for the memory cache is served from here without decoding it whole. A directory's rows
are replaced in one transaction, so a crash leaves either the old or the new listing of a directory.

The index is a cache: a write that fails (a full disk, a read-only file) is logged once and skipped, and
a read that fails counts as "not indexed". Nothing here can fail a FUSE call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from nccidfs.objects import Entry, ObjectInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
INDEX_FILE = "listings.sqlite3"
# The write-ahead log is checkpointed at about this size; the cache budgets for it at its largest, since
# it grows between two looks at it.
WAL_ALLOWANCE = 512 * 1024
# The database and the files SQLite keeps beside it.
INDEX_FILES = (INDEX_FILE, f"{INDEX_FILE}-wal", f"{INDEX_FILE}-shm")
# Entries are written as sizes; a directory has none.
_DIR_SIZE = -1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS dirs (id INTEGER PRIMARY KEY, prefix TEXT UNIQUE NOT NULL, "
    "fetched REAL NOT NULL, count INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS entries (dir INTEGER NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, "
    "etag TEXT, mtime REAL, PRIMARY KEY (dir, name)) WITHOUT ROWID",
)


# Rows are inserted by statements of this many rows each (largest first). sqlite3 lets go of the
# interpreter lock for every statement it steps, so a row at a time handed the lock over a thousand
# times for a page of keys, and under a walk's other threads each hand-over waited its turn.
_INSERT_BATCHES = (256, 64, 16, 4, 1)
_COLUMNS = 5  # of the entries table
_INSERT = {rows: "INSERT INTO entries VALUES " + ",".join([f"({', '.join('?' * _COLUMNS)})"] * rows)
           for rows in _INSERT_BATCHES}


# A directory with its rows as one JSON document, read in a single step: sqlite3 lets go of the interpreter
# lock at every row it steps, and under a walk's threads a listing read row by row waited its turn at each.
# The ETag comes back as text (see _ETAG_AS_TEXT), the time as text with 17 digits in SQLite's extended
# precision ("%!"), which reads back as the same float where SQLite prints floats exactly: that is checked
# when the index is opened, and where it does not hold, a directory is read row by row (_LISTING_ROWS).
_TIME_AS_TEXT = "printf('%!.17g', {})"
# Every read gives the ETag as text: a packed one (the object's MD5 too) as hex, any other behind
# _UNPACKED, a character no hex digit is.
_UNPACKED = "~"
_ETAG_AS_TEXT = f"CASE typeof(e.etag) WHEN 'blob' THEN lower(hex(e.etag)) ELSE '{_UNPACKED}' || e.etag END"
_LISTING_AS_JSON = (
    f"SELECT d.fetched, (SELECT json_group_array(json_array(e.name, e.size, {_ETAG_AS_TEXT}, "
    f"{_TIME_AS_TEXT.format('e.mtime')})) FROM entries e WHERE e.dir = d.id) FROM dirs d WHERE d.prefix = ?")
_LISTING_ROWS = (f"SELECT d.fetched, e.name, e.size, {_ETAG_AS_TEXT}, e.mtime FROM dirs d LEFT JOIN entries e "
                 "ON e.dir = d.id WHERE d.prefix = ?")


def _times_read_back_exactly(db: sqlite3.Connection) -> bool:
    """Whether this SQLite prints times with _LISTING_AS_JSON's format so that each reads back unchanged."""
    samples = [1_620_000_000.123 + n * 1.001 for n in range(100)] + [0.1, 1e-7, 2.0**52 + 0.5, 123456789.123456789]
    check = f"SELECT {_TIME_AS_TEXT.format('?')}"
    return all(float(db.execute(check, (sample,)).fetchone()[0]) == sample for sample in samples)


def _packed(obj: ObjectInfo) -> str | bytes:
    """An ETag that is also the object's MD5 as its 16 bytes (about 100 bytes a row become about 85); any
    other (an S3 multipart "<hex>-N", upper case) as it came. The column's type thus records whether the
    ETag is the MD5, and :func:`_entry` reads both back from it."""
    return bytes.fromhex(obj.etag) if obj.md5 == obj.etag else obj.etag


def _entry(prefix: str, row: Sequence[Any], dir_mtime: float) -> Entry:
    """An entry from a row (name, size, ETag as _ETAG_AS_TEXT gives it, time): a packed ETag is the MD5 too."""
    name, size, stored, mtime = row
    if size == _DIR_SIZE:
        return Entry(name, True, mtime=dir_mtime)
    when = float(mtime or 0.0)
    if stored.startswith(_UNPACKED):
        return Entry(name, False, size, when, ObjectInfo(prefix + name, size, stored[1:], when))
    return Entry(name, False, size, when, ObjectInfo(prefix + name, size, stored, when, stored))


class ListingIndex:
    """Directory listings by S3 prefix, with the time each was fetched, and their entries by name."""

    def __init__(self, path: Path, identity: dict[str, str]) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._write_failed = False
        # Called after every write, so the cache can make room for what the index grew by.
        self.after_write: Callable[[], None] = lambda: None
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Keep the WAL small: it counts against the cache's bound.
        self._db.execute(f"PRAGMA journal_size_limit={WAL_ALLOWANCE}")
        self._db.execute(f"PRAGMA wal_autocheckpoint={WAL_ALLOWANCE // 4096}")
        for statement in _SCHEMA:
            self._db.execute(statement)
        stamp = json.dumps({"schema": SCHEMA_VERSION, **identity}, sort_keys=True)
        row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != stamp:
            # Another endpoint, bucket or prefix, or an older layout: start empty rather than serve
            # someone else's tree.
            with self._transaction():
                self._db.execute("DELETE FROM entries")
                self._db.execute("DELETE FROM dirs")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (stamp,))
        self._usage = self._measure()
        # Reads have a connection of their own: in WAL mode they then never wait for a write under way (a
        # walk writes listings while a user's lookups read them).
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._read_lock = threading.Lock()
        self._reads_in_one_statement = _times_read_back_exactly(self._reader)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One transaction (the connection is in autocommit mode, so ``with connection`` would not be)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        finally:
            self._usage = self._measure()

    # -- reading ----------------------------------------------------------------------------------
    def head(self, prefix: str) -> tuple[float, int] | None:
        """(when it was listed, how many entries) of an indexed directory, or None."""
        row = self._read("SELECT fetched, count FROM dirs WHERE prefix = ?", (prefix,))
        return None if row is None else (float(row[0]), int(row[1]))

    def lookup(self, prefix: str, name: str, dir_mtime: float) -> Entry | None:
        """One entry of an indexed directory: a single B-tree probe."""
        row = self._read(
            f"SELECT e.name, e.size, {_ETAG_AS_TEXT}, e.mtime FROM entries e JOIN dirs d ON e.dir = d.id "
            "WHERE d.prefix = ? AND e.name = ?", (prefix, name))
        return None if row is None else _entry(prefix, row, dir_mtime)

    def get(self, prefix: str, dir_mtime: float) -> tuple[float, dict[str, Entry]] | None:
        """(fetched, entries sorted by name) of an indexed directory, or None. One statement: one snapshot."""
        if self._reads_in_one_statement:
            row = self._read(_LISTING_AS_JSON, (prefix,))
            if row is None:
                return None
            fetched, rows = row[0], json.loads(row[1])
        else:
            found = self._read(_LISTING_ROWS, (prefix,), every=True)
            if not found:
                return None
            fetched, rows = found[0][0], [row[1:] for row in found if row[1] is not None]
        return float(fetched), {row[0]: _entry(prefix, row, dir_mtime) for row in sorted(rows)}

    def _read(self, sql: str, args: tuple[str, ...], every: bool = False) -> Any:
        """The first row (or with ``every``, all rows) of a query on the reading connection; None if the
        index cannot be read."""
        with self._read_lock:
            try:
                cursor = self._reader.execute(sql, args)
                return cursor.fetchall() if every else cursor.fetchone()
            except sqlite3.Error as error:
                log.warning("listing index unreadable (%s); listing from S3", error)
                return None

    # -- writing ----------------------------------------------------------------------------------
    def put(self, listings: Iterable[tuple[str, dict[str, Entry]]], fetched: float) -> None:
        """Replace the listings of these directories, all in one transaction."""
        with self._lock:
            try:
                with self._transaction():
                    for prefix, entries in listings:
                        self._replace(prefix, entries, fetched)
            except sqlite3.Error as error:
                self._write_skipped(error)
        self.after_write()

    def _replace(self, prefix: str, entries: dict[str, Entry], fetched: float) -> None:
        row = self._db.execute("SELECT id FROM dirs WHERE prefix = ?", (prefix,)).fetchone()
        if row is None:
            dir_id = self._db.execute("INSERT INTO dirs (prefix, fetched, count) VALUES (?, ?, ?)",
                                      (prefix, fetched, len(entries))).lastrowid
        else:
            dir_id = row[0]
            self._db.execute("UPDATE dirs SET fetched = ?, count = ? WHERE id = ?", (fetched, len(entries), dir_id))
            self._db.execute("DELETE FROM entries WHERE dir = ?", (dir_id,))
        values = list(chain.from_iterable(
            (dir_id, e.name, _DIR_SIZE, None, None) if e.obj is None
            else (dir_id, e.name, e.obj.size, _packed(e.obj), e.obj.mtime) for e in entries.values()))
        at = 0
        for rows in _INSERT_BATCHES:
            while len(values) - at >= rows * _COLUMNS:
                self._db.execute(_INSERT[rows], values[at:at + rows * _COLUMNS])
                at += rows * _COLUMNS

    def delete_under(self, prefix: str) -> int:
        """Forget every directory at or below ``prefix``; returns how many."""
        with self._lock:
            try:
                with self._transaction():
                    ids = [r[0] for r in self._db.execute(
                        "SELECT id FROM dirs WHERE substr(prefix, 1, ?) = ?", (len(prefix), prefix))]
                    self._db.executemany("DELETE FROM entries WHERE dir = ?", [(i,) for i in ids])
                    self._db.executemany("DELETE FROM dirs WHERE id = ?", [(i,) for i in ids])
                return len(ids)
            except sqlite3.Error as error:
                self._write_skipped(error)
                return 0

    def _write_skipped(self, error: sqlite3.Error) -> None:
        """Hold ``_lock``. A failed write costs a later remount a listing, nothing more: say so once."""
        if not self._write_failed:
            self._write_failed = True
            log.warning("listing index %s: write failed (%s); listings are served from memory and S3",
                        self._path, error)

    # -- reporting ------------------------------------------------------------------------------
    def count(self) -> int:
        row = self._read("SELECT count(*) FROM dirs", ())
        return 0 if row is None else int(row[0])

    def disk_usage(self) -> tuple[int, int]:
        """(bytes the index files take, bytes to budget for them): apparent sizes, as ``du -b`` counts
        them, since they share the cache's bound; the budget counts the WAL at its allowance.

        Measured after every write (only writes change the files), so the cache, which asks on every
        store and close, costs no system calls."""
        return self._usage

    def _measure(self) -> tuple[int, int]:
        sizes = {}
        for suffix in ("", "-wal", "-shm"):
            try:
                sizes[suffix] = os.lstat(f"{self._path}{suffix}").st_size
            except FileNotFoundError:
                sizes[suffix] = 0
        actual = sum(sizes.values())
        return actual, actual - sizes["-wal"] + max(sizes["-wal"], WAL_ALLOWANCE)

    def close(self) -> None:
        with self._read_lock, contextlib.suppress(sqlite3.Error):
            self._reader.close()
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
