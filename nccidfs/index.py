"""The persisted listing index: every directory listing seen, in SQLite, so a remount answers at once.

The warehouse is written once and has barely grown since 2023, so a listing from an earlier run is
almost always still right; the namespace serves it immediately after a remount and refreshes it in the
background, and falls back on it when S3 cannot be reached. Rows are whole directories (compressed JSON),
written in one statement each, so a crash leaves either the old or the new listing of a directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import zlib
from pathlib import Path

from nccidfs.namespace import Entry
from nccidfs.objects import ObjectInfo

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


def _encode(prefix: str, entries: dict[str, Entry]) -> bytes:
    dirs = [e.name for e in entries.values() if e.is_dir]
    files = [[e.name, e.obj.size, e.obj.etag, e.obj.mtime] for e in entries.values() if e.obj is not None]
    return zlib.compress(json.dumps({"d": dirs, "f": files}, separators=(",", ":")).encode(), 1)


def _decode(prefix: str, body: bytes, dir_mtime: float) -> dict[str, Entry]:
    doc = json.loads(zlib.decompress(body))
    entries = {name: Entry(name, True, mtime=dir_mtime) for name in doc["d"]}
    for name, size, etag, mtime in doc["f"]:
        entries[name] = Entry(name, False, size, mtime, ObjectInfo(prefix + name, size, etag, mtime))
    return dict(sorted(entries.items()))


class ListingIndex:
    """Directory listings by S3 prefix, with the time each was fetched."""

    def __init__(self, path: Path, bucket: str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        path.chmod(0o600)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS listings (prefix TEXT PRIMARY KEY, fetched REAL, body BLOB)")
        identity = json.dumps({"schema": SCHEMA_VERSION, "bucket": bucket})
        row = self._db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
        if row is None or row[0] != identity:
            # Another bucket or an older layout: start empty rather than serve someone else's tree.
            self._db.execute("DELETE FROM listings")
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('identity', ?)", (identity,))

    def get(self, prefix: str, dir_mtime: float) -> tuple[float, dict[str, Entry]] | None:
        with self._lock:
            row = self._db.execute("SELECT fetched, body FROM listings WHERE prefix = ?", (prefix,)).fetchone()
        if row is None:
            return None
        try:
            return float(row[0]), _decode(prefix, row[1], dir_mtime)
        except (ValueError, KeyError, TypeError, zlib.error):
            log.warning("listing index row for %s is unreadable; listing again", prefix)
            return None

    def put(self, prefix: str, entries: dict[str, Entry], fetched: float) -> None:
        body = _encode(prefix, entries)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO listings VALUES (?, ?, ?)", (prefix, fetched, body))

    def delete_under(self, prefix: str) -> int:
        with self._lock:
            cursor = self._db.execute("DELETE FROM listings WHERE substr(prefix, 1, ?) = ?", (len(prefix), prefix))
            return cursor.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM listings").fetchone()[0])

    def disk_usage(self) -> int:
        """Bytes the index files take on disk (they share the cache's bound)."""
        total = 0
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self._path}{suffix}").st_blocks * 512
        return total

    def close(self) -> None:
        with self._lock:
            self._db.close()
