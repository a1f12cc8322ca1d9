"""``.nccidfs/catalog/``: ``series.csv`` (one row per image series) and ``patients.csv`` (one row per patient,
as NHSX's ingest builds it), made from the listings and one metadata twin per series.

A whole-warehouse catalog takes minutes (a listing per patient, a twin per series), longer than any FUSE
call may wait, so it is built in the background and a catalog file serves what is built so far: opening
one that is not built yet starts the build and returns the rows known at that moment (the header alone at
first). ``nccidfs catalog build MOUNT`` starts the build and shows its progress until it is complete;
``.nccidfs/catalog/progress.json`` says how far it is. The catalog is kept in memory for the daemon's
life; ``nccidfs catalog build`` again (or ``refresh``) makes a new one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from nccidfs.derived.catalog import Row, patients_csv, patients_rows, series_csv, series_row
from nccidfs.derived_views import ObjectReader
from nccidfs.dicom import tags_from_metadata_json
from nccidfs.errors import NccidfsError, NotFound
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry
from nccidfs.views import Parts, Snapshot, VirtualFile

log = logging.getLogger(__name__)

IMAGE_FOLDERS = ("ct", "mri", "xray")
CLINICAL = "data"
# Patients in flight: the catalog waits on S3 far more than it computes.
WORKERS = 32


class CatalogBuilder:
    """Walks the image folders patient by patient, in parallel, collecting a row per series."""

    def __init__(self, namespace: Namespace, reader: ObjectReader) -> None:
        self._namespace = namespace
        self._reader = reader
        self._lock = threading.Lock()
        self._series: list[Row] = []
        self._patients: list[Row] = []
        self._done = 0
        self._total = 0
        self._errors = 0
        self._state = "not started"
        self._started = 0.0
        self._thread: threading.Thread | None = None

    def start(self, folders: Sequence[str] | None = None, again: bool = False) -> dict[str, Any]:
        """Start a build unless one is under way (or done, unless ``again``); returns the progress."""
        with self._lock:
            busy = self._thread is not None and self._thread.is_alive()
            if not busy and (again or self._state == "not started"):
                self._series, self._patients, self._done, self._total, self._errors = [], [], 0, 0, 0
                self._state, self._started = "building", time.time()
                self._thread = threading.Thread(target=self._build, args=(folders,), name="catalog", daemon=True)
                self._thread.start()
        return self.progress()

    def progress(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self._state, "patients_done": self._done, "patients_total": self._total,
                    "series": len(self._series), "patients": len(self._patients), "errors": self._errors,
                    "seconds": round(time.time() - self._started, 1) if self._started else 0.0}

    def series_csv(self) -> bytes:
        with self._lock:
            return series_csv(list(self._series))

    def patients_csv(self) -> bytes:
        with self._lock:
            return patients_csv(sorted(self._patients, key=lambda row: row["Patient_ID"]))

    # -- building -------------------------------------------------------------------------------
    def _build(self, folders: Sequence[str] | None) -> None:
        root = self._namespace.list("/")
        wanted = [f for f in (folders or (*IMAGE_FOLDERS, CLINICAL)) if f in root]
        try:
            work = [(folder, patient) for folder in wanted for patient, entry in
                    self._namespace.list(f"/{folder}").items() if entry.is_dir]
        except NccidfsError as error:
            log.warning("catalog: listing failed (%s); the catalog stays incomplete", error)
            with self._lock:
                self._state = "failed"
            return
        with self._lock:
            self._total = len({patient for _, patient in work})
        seen: set[str] = set()
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="catalog") as pool:
            for folder, patient, rows in pool.map(lambda item: (*item, self._rows(*item)), work):
                with self._lock:
                    if folder == CLINICAL:
                        self._patients.extend(rows)
                    else:
                        self._series.extend(rows)
                    if patient not in seen:
                        seen.add(patient)
                        self._done += 1
        with self._lock:
            self._state = "complete"
        log.info("catalog built: %d series, %d patients", len(self._series), len(self._patients))

    def _rows(self, folder: str, patient: str) -> list[Row]:
        try:
            if folder == CLINICAL:
                return self._clinical(patient)
            return self._patient_series(folder, patient)
        except NccidfsError as error:
            log.warning("catalog: %s/%s left out: %s", folder, patient, error)
            with self._lock:
                self._errors += 1
            return []

    def _clinical(self, patient: str) -> list[Row]:
        files = [(name, e.obj) for name, e in self._namespace.list(f"/{CLINICAL}/{patient}").items() if e.obj]
        bodies = self._reader.read_many([obj for _, obj in files])
        return patients_rows({patient: [(name, body) for (name, _), body in zip(files, bodies, strict=True)]})

    def _patient_series(self, folder: str, patient: str) -> list[Row]:
        rows = []
        for study, study_entry in self._namespace.list(f"/{folder}/{patient}").items():
            if not study_entry.is_dir:
                continue
            for series, entry in self._namespace.list(f"/{folder}/{patient}/{study}").items():
                if entry.is_dir:
                    rows.append(self._series_row(folder, patient, study, series))
        return rows

    def _series_row(self, folder: str, patient: str, study: str, series: str) -> Row:
        path = f"{folder}/{patient}/{study}/{series}"
        images = [e.obj for name, e in self._namespace.list(f"/{path}").items()
                  if name.endswith(".dcm") and e.obj is not None]
        tags: dict[str, str] = {}
        if images:
            twin_name = images[0].key.rsplit("/", 1)[1][:-len(".dcm")] + ".json"
            try:
                twin = self._namespace.lookup(f"/{folder}-metadata/{patient}/{study}/{series}/{twin_name}")
            except NotFound:
                twin = None
            if twin is not None and twin.obj is not None:
                tags = tags_from_metadata_json(self._reader.read_many([twin.obj])[0])
        return series_row(folder, patient, study, series, tags, len(images), sum(o.size for o in images), path)


class CatalogView:
    """The ``catalog/`` layer: the two tables and the build's progress, each a snapshot taken at open."""

    NAME = "catalog"

    def __init__(self, builder: CatalogBuilder, mtime: float) -> None:
        self._builder = builder
        self._mtime = mtime
        self._files: dict[str, Callable[[], bytes]] = {
            "series.csv": builder.series_csv, "patients.csv": builder.patients_csv, "progress.json": self._progress}

    def _progress(self) -> bytes:
        return json.dumps(self._builder.progress(), indent=2).encode() + b"\n"

    def list(self, parts: Parts) -> dict[str, Entry]:
        if parts:
            raise NotFound("/".join(parts))
        return {name: Entry(name, False, len(make()), self._mtime) for name, make in sorted(self._files.items())}

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return Entry(self.NAME, True, mtime=self._mtime)
        entry = self.list([]).get(parts[0]) if len(parts) == 1 else None
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def open(self, parts: Parts) -> VirtualFile:
        self.lookup(parts)
        if parts[0] != "progress.json":
            self._builder.start()
        return Snapshot(self._files[parts[0]]())

    def readlink(self, parts: Parts) -> str:
        raise NotFound("the catalog holds no symlinks")
