"""The catalog kept in the cache directory, so a remount serves it at once and a build reads again only
the patients whose listings changed.

``catalog.sqlite3`` holds each patient folder's rows (``ct/Covid1``'s series, ``data/Covid1``'s clinical
row) as JSON, under the fingerprint of the listing they were made from and the time that listing was
taken (each row's ``as_of``), and the published state: which
folders the tables hold and as of when. The tables themselves are files beside it
(``catalog-series.csv``, ``catalog-patients.csv``, and their Parquet twins), written whole under another
name and renamed into place, so a reader holds either the old table or the new one, never part of one.

Everything here shares the cache's bound, as the listing index does (:meth:`CatalogDB.disk_usage`).
Like the index, it is a cache: an unreadable or foreign database is started anew.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from nccidfs.derived.catalog import Row

log = logging.getLogger(__name__)

# What a build stores for one patient folder: (patient, fingerprint, time its listing was taken, rows).
Made = tuple[str, str, float, list[Row]]

SCHEMA_VERSION = 3
DB_FILE = "catalog.sqlite3"
TABLE_PREFIX = "catalog-"
# The published tables, by the name they have in the mount.
TABLES = ("series.csv", "patients.csv", "series.parquet", "patients.parquet")
# Every file of the catalog in the cache directory (what `cache clear` removes).
FILES = (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", *(TABLE_PREFIX + name for name in TABLES))
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_SCHEMA = (
    # A patient's listing apart from its rows: confirming a listing (a new time) rewrites a few bytes, not
    # the rows.
    "CREATE TABLE IF NOT EXISTS patients (folder TEXT NOT NULL, patient TEXT NOT NULL, "
    "fingerprint TEXT NOT NULL, listed REAL NOT NULL, PRIMARY KEY (folder, patient)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS made (folder TEXT NOT NULL, patient TEXT NOT NULL, rows TEXT NOT NULL, "
    "PRIMARY KEY (folder, patient))",
)


class CatalogDB:
    """Rows by patient folder with their listings' fingerprints, and the published tables."""

    def __init__(self, directory: Path, identity: dict[str, str]) -> None:
        self.directory = directory
        self._path = directory / DB_FILE
        self._lock = threading.Lock()
        # Called after every write, so the cache can make room for what the catalog grew by.
        self.after_write: Callable[[], None] = lambda: None
        self._db = self._open(json.dumps({"schema": SCHEMA_VERSION, **identity}, sort_keys=True))
        self._usage = self._measure()
        # The published state, kept in memory too: progress.json reads it without waiting for a write.
        row = self._db.execute("SELECT value FROM meta WHERE key = 'published'").fetchone()
        self._state: dict[str, Any] = json.loads(row[0]) if row else {}

    def _open(self, stamp: str) -> sqlite3.Connection:
        try:
            db = self._connect(stamp)
        except sqlite3.DatabaseError as error:  # a damaged file: it is only a cache
            log.warning("catalog database %s unreadable (%s); starting a new one", self._path, error)
            for name in FILES:
                (self.directory / name).unlink(missing_ok=True)
            db = self._connect(stamp)
        return db

    def _connect(self, stamp: str) -> sqlite3.Connection:
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_META)
        row = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != stamp:  # another bucket, layout or schema: never serve its tables
            db.execute("DROP TABLE IF EXISTS patients")
            db.execute("DROP TABLE IF EXISTS made")
            db.execute("DELETE FROM meta")
            db.execute("INSERT INTO meta VALUES ('identity', ?)", (stamp,))
            for name in TABLES:
                (self.directory / (TABLE_PREFIX + name)).unlink(missing_ok=True)
        for statement in _SCHEMA:
            db.execute(statement)
        return db

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One transaction; the usage is measured again and the cache told after it."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")
            finally:
                self._usage = self._measure()
        self.after_write()

    # -- rows by patient ------------------------------------------------------------------------
    def fingerprints(self, folder: str) -> dict[str, str]:
        """Patient -> fingerprint of the listing its stored rows came from, for one folder."""
        with self._lock:
            return dict(self._db.execute("SELECT patient, fingerprint FROM patients WHERE folder = ?", (folder,)))

    def put(self, folder: str, made: Iterable[Made]) -> None:
        """Store (patient, fingerprint, time listed, rows) of one folder, replacing what each patient had."""
        made = list(made)
        with self._writing() as db:
            db.executemany("INSERT OR REPLACE INTO patients VALUES (?, ?, ?, ?)",
                           [(folder, patient, fingerprint, listed) for patient, fingerprint, listed, _ in made])
            db.executemany("INSERT OR REPLACE INTO made VALUES (?, ?, ?)",
                           [(folder, patient, json.dumps(rows)) for patient, _, _, rows in made])

    def confirm(self, folder: str, listed: Iterable[tuple[str, float]]) -> None:
        """Patients (patient, time listed) whose new listing has the fingerprint of their stored rows: the
        rows stay, as of the new listing."""
        values = [(when, folder, patient) for patient, when in listed]
        if values:
            with self._writing() as db:
                db.executemany("UPDATE patients SET listed = ? WHERE folder = ? AND patient = ?", values)

    def prune(self, folder: str, present: set[str]) -> int:
        """Forget the patients of ``folder`` that its listing no longer holds; returns how many."""
        gone = [(folder, patient) for patient in self.fingerprints(folder) if patient not in present]
        if gone:
            with self._writing() as db:
                db.executemany("DELETE FROM patients WHERE folder = ? AND patient = ?", gone)
                db.executemany("DELETE FROM made WHERE folder = ? AND patient = ?", gone)
        return len(gone)

    def rows(self, folders: Iterable[str]) -> Iterator[tuple[float, Row]]:
        """The stored rows of ``folders`` with the time each one's listing was taken, folder by folder,
        patients in key order (``name/``), so that series come out in path order. Read in one snapshot, on
        a connection of its own."""
        reader = sqlite3.connect(self._path, check_same_thread=False)
        try:
            for folder in sorted(folders):
                query = ("SELECT listed, rows FROM patients JOIN made USING (folder, patient) WHERE folder = ? "
                         "ORDER BY patient || '/'")
                for listed, rows in reader.execute(query, (folder,)):
                    for row in json.loads(rows):
                        yield listed, row
        finally:
            reader.close()

    def oldest(self, folder: str) -> float | None:
        """When the oldest listing of ``folder``'s stored rows was taken (None: no patient stored)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(listed) FROM patients WHERE folder = ?", (folder,)).fetchone()
        return None if row[0] is None else float(row[0])

    # -- what is published ----------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The published state: ``folders`` (folder -> the oldest listing of its rows), ``counts``."""
        return copy.deepcopy(self._state)  # a copy the caller may change

    def table_path(self, name: str) -> Path:
        return self.directory / (TABLE_PREFIX + name)

    def publish(self, tables: dict[str, Path], state: dict[str, Any]) -> None:
        """Move each freshly written table (name -> a temporary file in the directory) into place, then
        record the state that describes them."""
        for name, written in tables.items():
            os.replace(written, self.table_path(name))
        with self._writing() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('published', ?)", (json.dumps(state, sort_keys=True),))
        self._state = copy.deepcopy(state)

    def temporary(self, name: str) -> Path:
        """Where a table is written before :meth:`publish` moves it into place."""
        return self.directory / f".{TABLE_PREFIX}{name}.tmp"

    # -- the bound ------------------------------------------------------------------------------
    def disk_usage(self) -> tuple[int, int]:
        """(bytes the catalog's files take, bytes to budget for them), as the listing index reports."""
        return self._usage

    def measure(self) -> None:
        """Measure again (a table written outside a transaction)."""
        self._usage = self._measure()
        self.after_write()

    def _measure(self) -> tuple[int, int]:
        total = 0
        names = (*FILES, *(f".{TABLE_PREFIX}{name}.tmp" for name in TABLES))
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(self.directory / name).st_size
        return total, total

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()
