"""``.nccidfs/catalog/``: ``series.csv`` (one row per image series), ``patients.csv`` (one row per patient,
as NHSX's ingest builds it) and ``progress.json``.

A table is never served part built. Until a build has completed, opening ``series.csv`` or
``patients.csv`` fails with EAGAIN ("Resource temporarily unavailable") and starts a build, with a log
line naming ``nccidfs catalog build`` and ``progress.json``. Once one has completed, the tables are the
last complete catalog, kept in the cache directory (:mod:`nccidfs.catalog_db`): a remount serves them at
once, and a new build replaces them only when it completes. Each row says as of when (``as_of``, the time
its patient folder's listing was taken); ``progress.json`` gives the oldest per folder, and ``stale`` once
``nccidfs refresh`` has dropped listings since (the next open then starts an update in the background:
the patients new to a folder are listed and read, those gone dropped, see :meth:`FolderBuild.run`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from nccidfs import catalog_parquet
from nccidfs.catalog_build import CATALOGUED_FOLDERS, Bucket, BuildStopped, Progress, build_folders
from nccidfs.catalog_db import CatalogDB
from nccidfs.catalog_tables import iso_time, write_tables
from nccidfs.errors import ConfigError, NccidfsError, NotFound, NotReady
from nccidfs.index import ListingIndex
from nccidfs.layout import CLINICAL_FOLDER
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry
from nccidfs.views.registry import Parts, Snapshot, VirtualFile

log = logging.getLogger(__name__)

PROGRESS = "progress.json"
# The Parquet twins where pyarrow is installed (nccidfs[parquet]).
TABLES = ("series.csv", "patients.csv",
          *(("series.parquet", "patients.parquet") if catalog_parquet.available() else ()))


class CatalogBuilder:
    """Runs one build at a time in a thread of its own, and publishes what a build completes."""

    def __init__(self, namespace: Namespace, index: ListingIndex, bucket: Bucket, db: CatalogDB) -> None:
        self._namespace = namespace
        self._index = index
        self._bucket = bucket
        self._db = db
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._thread: threading.Thread | None = None
        self._stale = False

    def _folders(self) -> tuple[list[str], list[str]]:
        """The mount's image folders (those of ct, mri, xray that it shows), and its clinical one if shown."""
        root = self._namespace.list("/")
        shown = [name for name, entry in root.items() if entry.is_dir]
        return [f for f in CATALOGUED_FOLDERS if f in shown], [f for f in (CLINICAL_FOLDER,) if f in shown]

    def start(self, folders: Sequence[str] | None = None, again: bool = False, relist: bool = False
              ) -> dict[str, Any]:
        """Start a build of ``folders`` (image folders; None: every folder of the catalog the mount shows)
        unless one is under way, or, without ``again``, one has completed; returns the progress.
        ``relist``: list every patient folder again, not only the new ones (:meth:`FolderBuild.run`)."""
        images, clinical = self._folders()
        if folders is not None:
            wrong = sorted(set(folders) - set(images))
            if wrong:
                raise ConfigError(f"--modality {wrong[0]}: not an image folder of this mount "
                                  f"(it has {', '.join(images) or 'none'})")
        wanted = list(folders) if folders is not None else [*images, *clinical]
        with self._lock:
            # Busy until the build ends, not until its thread does: a build asked for just after another
            # completed is a new build, not a look at the old one.
            busy = self._progress is not None and self._progress.running()
            if not busy and (again or self._stale or not self._db.state()):
                self._stale = False
                self._progress = Progress(wanted)
                self._thread = threading.Thread(target=self._build, args=(self._progress, folders is None, relist),
                                                name="catalog", daemon=True)
                self._thread.start()
        return self.progress()

    def close(self) -> None:
        """Stop a build under way and wait for it to end: it writes to the catalog database and reads
        through the namespace, which are closed after this."""
        with self._lock:
            progress, thread = self._progress, self._thread
        if progress is not None:
            progress.stop()
        if thread is not None:
            thread.join()

    def mark_stale(self) -> None:
        """Listings were dropped (``nccidfs refresh``): the catalog may be older than them."""
        with self._lock:
            self._stale = bool(self._db.state())

    def progress(self) -> dict[str, Any]:
        """progress.json: the build under way or last run, and what the published tables hold."""
        state = self._db.state()
        with self._lock:
            build = self._progress.snapshot() if self._progress else {"state": "not started"}
            stale = self._stale
        counts = state.get("counts", {})
        return {**build, "series": counts.get("series", 0), "patients": counts.get("patients", 0),
                "as_of": state.get("folders", {}), "stale": stale}

    def _build(self, progress: Progress, every_folder: bool, relist: bool) -> None:
        try:
            started = time.time()
            build_folders(self._namespace, self._index, self._bucket, progress.folders, progress, relist, self._db)
            state = self._db.state()
            # A folder's "as of" is its oldest listing in the tables (the build's start if it has none).
            state["folders"] = {**state.get("folders", {}),
                                **{f: iso_time(self._db.oldest(f) or started) for f in progress.folders}}
            self._db.publish(write_tables(self._db, state, every_folder), state)
        except BuildStopped:
            log.info("catalog build stopped as the mount ends; the last complete catalog stays")
            progress.end("stopped")
            return
        except (NccidfsError, OSError) as error:
            log.warning("catalog build failed (%s); the last complete catalog stays", error)
            progress.end("failed", str(error))
            return
        except Exception as error:  # never "building" for ever: whatever stopped the build is reported
            log.exception("catalog build failed; the last complete catalog stays")
            progress.end("failed", f"{type(error).__name__}: {error}")
            return
        progress.end("complete")
        snapshot = self.progress()
        log.info("catalog built: %d series, %d patients (%d patient folders read, %d unchanged)",
                 snapshot["series"], snapshot["patients"], snapshot["patients_read"], snapshot["patients_reused"])


class TableFile:
    """A published table, read from its file: the descriptor taken at open keeps that version whole even
    if a newer catalog replaces the file meanwhile."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def release(self) -> None:
        os.close(self._fd)


class CatalogView:
    """The ``catalog/`` layer: the last complete tables, and the build's progress taken at open."""

    NAME = "catalog"

    def __init__(self, builder: CatalogBuilder, db: CatalogDB, mtime: float) -> None:
        self._builder = builder
        self._db = db
        self._mtime = mtime
        self._warned: set[str] = set()  # tables whose refusal was logged (once each per run)

    def _progress(self) -> bytes:
        return json.dumps(self._builder.progress(), indent=2, sort_keys=True).encode() + b"\n"

    def _table(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(self._db.table_path(name))
        except FileNotFoundError:
            return None

    def list(self, parts: Parts) -> dict[str, Entry]:
        if parts:
            raise NotFound("/".join(parts))
        entries = {PROGRESS: Entry(PROGRESS, False, len(self._progress()), self._mtime)}
        for name in TABLES:
            found = self._table(name)
            entries[name] = Entry(name, False, found.st_size if found else 0,
                                  found.st_mtime if found else self._mtime)
        return dict(sorted(entries.items()))

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return Entry(self.NAME, True, mtime=self._mtime)
        entry = self.list([]).get(parts[0]) if len(parts) == 1 else None
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def open(self, parts: Parts) -> VirtualFile:
        self.lookup(parts)
        if parts[0] == PROGRESS:
            return Snapshot(self._progress())
        try:
            table = TableFile(os.open(self._db.table_path(parts[0]), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC))
        except FileNotFoundError:
            pass
        else:
            self._builder.start()  # brings a stale catalog up to date in the background
            return table
        self._builder.start(again=True)  # unless one is under way
        if parts[0] not in self._warned:
            self._warned.add(parts[0])
            log.warning("catalog: %s is not built yet, so opening it fails (EAGAIN) until a build completes: "
                        "see .nccidfs/catalog/%s, or run `nccidfs catalog build MOUNTPOINT` to wait for it",
                        parts[0], PROGRESS)
        raise NotReady(f"catalog/{parts[0]}: not built yet")

    def readlink(self, parts: Parts) -> str:
        raise NotFound("the catalog holds no symlinks")
