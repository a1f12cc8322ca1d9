"""Building the catalog: folders listed in bulk, each patient's rows made again only when its listing changed.

A folder is listed flat, in runs of consecutive patients (about :data:`CHUNK_KEYS` keys each, a few runs at
once), not a listing per patient or per series: a page holds 1,000 keys, so the whole warehouse's image
folders take about one page per thousand images. Each patient's keys and ETags are reduced to a
fingerprint and its series' facts (images, bytes, the first image's name) as their run arrives, so memory
holds a few runs, never a folder. A patient whose whole subtree the listing index already holds (a walk
listed it) is taken from there without a request. A patient whose fingerprint is the one its stored rows
were made from is not read again; any other reads one metadata twin per series, found by the twin rule from the first
image's key (``ct/P/S/R/x.dcm`` -> ``ct-metadata/P/S/R/x.json``), so the metadata folders are never
listed. A clinical folder reads only the file that gives the patient's fields.

What one input does wrong stays in its own row: a twin or a clinical file that is not JSON, or past its
size bound (:data:`MAX_TWIN_BYTES`, :data:`MAX_CLINICAL_BYTES`), leaves the row's tag or field cells empty,
with one warning, counted in ``progress.json``. A failure of S3 itself (a listing or a GET that failed after
every retry) fails the build: nothing is published, and the last complete catalog stays.

The folders of a build run side by side, in pools of the build's own, at a lower CPU priority than the
daemon's other threads, so readers of the mount never wait behind it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from nccidfs.catalog_db import CatalogDB, Made
from nccidfs.derived.catalog import (
    SERIES_TAGS,
    Row,
    latest_clinical_file,
    listing_fingerprint,
    patient_row,
    series_row,
)
from nccidfs.dicom import selected_tags_from_metadata_json
from nccidfs.errors import NotFound
from nccidfs.index import ListingIndex
from nccidfs.layout import CLINICAL_FOLDER, CT, MRI, XRAY, is_image, twin_folder, twin_name
from nccidfs.namespace import Namespace
from nccidfs.namespace.rules import MAX_NAME_BYTES, dir_prefix, is_safe_name
from nccidfs.objects import ObjectInfo
from nccidfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

# The image folders the catalog has series rows for.
CATALOGUED_FOLDERS = (CT, MRI, XRAY)
# A metadata twin is a DICOM header as JSON, 5-10 KiB in the warehouse; a clinical file about 1 KiB.
# Past these sizes the file is refused (its cells stay empty), so one huge object cannot take the
# daemon's memory.
MAX_TWIN_BYTES = 1024 * 1024
MAX_CLINICAL_BYTES = 1024 * 1024
# Keys per bulk listing (a run of consecutive patients), and runs listed at once: about 30 pages each,
# a few MiB of listing per run in memory.
CHUNK_KEYS = 30_000
LIST_THREADS = 6
# Patients whose twins are read at once; the build waits on S3 far more than it computes.
READ_THREADS = 24
# Rows are stored this many patients to a transaction.
STORE_BATCH = 256
# The build's threads run at this much lower CPU priority (nice) than the daemon's.
NICE = 10


@runtime_checkable
class Bucket(ObjectStore, Protocol):
    """The storage seam plus a GET by name alone, for metadata twins whose folder is never listed."""

    def get_head(self, key: str, limit: int) -> bytes:
        """The first ``limit`` bytes of ``key`` (all of it when shorter)."""


@dataclass
class Series:
    """What a patient's image listing says of one series."""

    study: str
    series: str
    images: int = 0
    bytes: int = 0
    first: str = ""  # the name of its first image, whose twin gives the tags


@dataclass
class Listed:
    """One patient folder as its listing shows it: the fingerprint, and its series or clinical files."""

    patient: str
    fingerprint: str
    listed: float  # when the listing was taken
    series: list[Series] = field(default_factory=list)
    files: list[ObjectInfo] = field(default_factory=list)


def image_patient(patient: str, prefix: str, objects: Sequence[ObjectInfo], listed: float) -> Listed:
    """A patient of an image folder from its keys (``prefix`` is the patient's, ending in ``/``): a series
    per ``study/series/`` folder, its images the ``.dcm`` files directly in it. Names the mount does not
    show (see docs/semantics.md) are left out, as the mount leaves them out. Keys come sorted, so a run of
    keys in one folder has that folder's names checked once; and when every key is printable ASCII (one
    check of them all, nearly always so), an image's name needs only its length checked."""
    keys = [obj.key for obj in objects]
    every = "".join(keys)
    plain = every.isascii() and every.isprintable()
    found: dict[tuple[str, str], Series] = {}
    last_folder, facts, direct = "", None, False
    for obj, key in zip(objects, keys, strict=True):
        folder, _, name = key.rpartition("/")
        if folder != last_folder:
            last_folder = folder
            parts = folder[len(prefix):].split("/")
            facts = None
            if len(parts) >= 2 and is_safe_name(parts[0]) and is_safe_name(parts[1]):
                facts = found.setdefault((parts[0], parts[1]), Series(parts[0], parts[1]))
            direct = len(parts) == 2
        if (facts is not None and direct and is_image(name)
                and (plain and len(name) <= MAX_NAME_BYTES or is_safe_name(name))):
            facts.images += 1
            facts.bytes += obj.size
            if not facts.first or name < facts.first:
                facts.first = name
    fingerprint = listing_fingerprint(keys, [obj.etag for obj in objects])
    return Listed(patient, fingerprint, listed, sorted(found.values(), key=lambda s: (s.study, s.series)))


def clinical_patient(patient: str, prefix: str, objects: Sequence[ObjectInfo], listed: float) -> Listed:
    """A patient of the clinical folder: the files directly in its folder."""
    files = [obj for obj in objects if "/" not in obj.key[len(prefix):] and is_safe_name(obj.key[len(prefix):])]
    fingerprint = listing_fingerprint([obj.key for obj in files], [obj.etag for obj in files])
    return Listed(patient, fingerprint, listed, files=files)


class BuildStopped(Exception):
    """The mount is going away: the build ends where it is, and the last complete catalog stays."""


class Progress:
    """The counters of the build under way, shared by its threads, and the signal that stops it."""

    def __init__(self, folders: Sequence[str]) -> None:
        self._stop = threading.Event()
        self.lock = threading.Lock()
        self.folders = list(folders)
        self.started = time.time()
        self.finished: float | None = None
        self.state = "building"
        self.reason = ""
        self.total = self.done = self.read = self.reused = self.kept = self.errors = self.refused = 0

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def running(self) -> bool:
        with self.lock:
            return self.finished is None

    def stop(self) -> None:
        """Have the build's threads stop at their next patient (:class:`BuildStopped`)."""
        self._stop.set()

    def check(self) -> None:
        if self._stop.is_set():
            raise BuildStopped

    def end(self, state: str, reason: str = "") -> None:
        with self.lock:
            self.state, self.reason, self.finished = state, reason, time.time()

    def snapshot(self) -> dict[str, object]:
        with self.lock:
            seconds = (self.finished or time.time()) - self.started
            return {"state": self.state, "building": self.folders, "patients_total": self.total,
                    "patients_done": self.done, "patients_read": self.read, "patients_reused": self.reused,
                    "patients_kept": self.kept,
                    "errors": self.errors, "refused": self.refused, "seconds": round(seconds, 1),
                    **({"reason": self.reason} if self.reason else {})}


def _lower_priority() -> None:
    """Run the calling thread at a lower CPU priority (Linux: nice applies per thread)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)


class FolderBuild:
    """One folder's part of a build: lists it in runs, reads what changed, stores the rows. The folders
    of a build run side by side."""

    def __init__(self, namespace: Namespace, index: ListingIndex, bucket: Bucket, folder: str, progress: Progress,
                 list_pool: ThreadPoolExecutor, read_pool: ThreadPoolExecutor) -> None:
        self._namespace = namespace
        self._index = index
        self._bucket = bucket
        self.folder = folder
        self._progress = progress
        self._list_pool = list_pool
        self._read_pool = read_pool
        self._prefix = dir_prefix(namespace.prefix, [folder])

    def patients(self) -> list[str]:
        """The folder's patients, in key order (``name/``: ``a-b/`` comes before ``a/``)."""
        entries = self._namespace.list(f"/{self.folder}")
        return sorted((name for name, entry in entries.items() if entry.is_dir), key=lambda name: name + "/")

    def run(self, patients: list[str], known: dict[str, str], relist: bool, store: Callable[[list[Made]], None],
            confirm: Callable[[list[tuple[str, float]]], None]) -> None:
        """Rows for every patient whose listing changed since ``known`` (patient -> fingerprint), stored
        through ``store`` in batches; patients listed with an unchanged fingerprint go to ``confirm``
        (patient, time listed). Without ``relist``, a known patient of an image folder is not listed again
        unless the listing index holds it: its rows stay as of their listing. Raises NccidfsError when S3
        fails."""
        pending: set[Future[Made]] = set()
        made: list[Made] = []
        unchanged: list[tuple[str, float]] = []
        again = relist or self.folder == CLINICAL_FOLDER
        for listed in self._listed(patients, lambda patient: not again and patient in known):
            self._progress.check()
            if known.get(listed.patient) == listed.fingerprint:
                self._progress.add(done=1, reused=1)
                unchanged.append((listed.patient, listed.listed))
                continue
            pending.add(self._read_pool.submit(self._rows, listed))
            while len(pending) >= 2 * READ_THREADS:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                made.extend(future.result() for future in finished)
            if len(made) >= STORE_BATCH:
                store(made)
                made = []
        made.extend(future.result() for future in pending)
        if made:
            store(made)
        confirm(unchanged)

    # -- listing --------------------------------------------------------------------------------
    def _listed(self, patients: list[str], keep: Callable[[str], bool]) -> Iterator[Listed]:
        """Every patient's listing: from the listing index where the mount holds the patient's whole
        subtree (after a walk of the folder); none for a patient ``keep`` says to keep as stored; else in
        runs of consecutive patients (:meth:`_run_length`), each run ending where the next patient that is
        not to be listed begins."""
        pending: set[Future[tuple[int, int, list[Listed]]]] = set()
        at, seen_patients, seen_keys = 0, 0, 0
        reduce = clinical_patient if self.folder == CLINICAL_FOLDER else image_patient

        def listed_apart(patient: str) -> bool:
            """Whether ``patient`` is taken from the index or kept, rather than listed."""
            return self._held(patient) or keep(patient)

        try:
            while at < len(patients) or pending:
                while at < len(patients) and len(pending) < LIST_THREADS:
                    saved = self._saved(patients[at])
                    if saved is not None:
                        yield reduce(patients[at], f"{self._prefix}{patients[at]}/", *saved)
                        at += 1
                        continue
                    if keep(patients[at]):
                        self._progress.add(done=1, kept=1)
                        at += 1
                        continue
                    length = self._run_length(seen_patients, seen_keys, len(patients) - at)
                    run, at = [patients[at]], at + 1
                    while len(run) < length and at < len(patients) and not listed_apart(patients[at]):
                        run, at = [*run, patients[at]], at + 1
                    end = f"{self._prefix}{patients[at]}/" if at < len(patients) else None
                    pending.add(self._list_pool.submit(self._list_run, run, end))
                if not pending:
                    continue
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    count, keys, listed = future.result()
                    seen_patients, seen_keys = seen_patients + count, seen_keys + keys
                    yield from listed
        finally:
            for future in pending:
                future.cancel()

    @staticmethod
    def _run_length(seen_patients: int, seen_keys: int, left: int) -> int:
        """Patients in the next run: about CHUNK_KEYS keys at the keys per patient seen so far, once a few
        patients have been seen (one patient's count says little: CT patients hold 100 to 10,000 keys);
        towards the end of a folder, shorter (down to a quarter of that), so every listing thread has a run."""
        if seen_patients < LIST_THREADS or not seen_keys:
            return 1
        length = CHUNK_KEYS * seen_patients // seen_keys
        return max(1, min(length, max(left // LIST_THREADS, length // 4)))

    def _held(self, patient: str) -> bool:
        return self._index.head(f"{self._prefix}{patient}/") is not None

    def _saved(self, patient: str) -> tuple[list[ObjectInfo], float] | None:
        """The patient's objects, in key order, from the listings the index holds of its subtree, and when
        the oldest of them was taken; None unless it holds every directory of it."""
        pending, objects, oldest = [f"{self._prefix}{patient}/"], [], time.time()
        while pending:
            prefix = pending.pop()
            saved = self._index.get(prefix, 0.0)
            if saved is None:
                return None
            oldest = min(oldest, saved[0])
            for name, entry in saved[1].items():
                if entry.is_dir:
                    pending.append(f"{prefix}{name}/")
                elif entry.obj is not None:
                    objects.append(entry.obj)
        return sorted(objects, key=lambda obj: obj.key), oldest

    def _list_run(self, run: list[str], end: str | None) -> tuple[int, int, list[Listed]]:
        """One flat listing from the first patient of ``run`` to ``end``; keys of patients outside the run
        (``a-b/`` sorts between ``a`` and ``a/``) are another run's."""
        listed = time.time()
        listing = self._bucket.list_tree(self._prefix, start_after=self._prefix + run[0], end=end)
        groups: dict[str, list[ObjectInfo]] = {patient: [] for patient in run}
        within, group = "\0", None  # keys come sorted: a patient's keys follow one another
        for obj in listing.objects:
            if not obj.key.startswith(within):
                patient = obj.key[len(self._prefix):].split("/", 1)[0]
                within, group = f"{self._prefix}{patient}/", groups.get(patient)
            if group is not None:
                group.append(obj)
        reduce = clinical_patient if self.folder == CLINICAL_FOLDER else image_patient
        return len(run), len(listing.objects), [reduce(patient, f"{self._prefix}{patient}/", objects, listed)
                                                for patient, objects in groups.items()]

    # -- reading --------------------------------------------------------------------------------
    def _rows(self, listed: Listed) -> Made:
        rows = self._clinical_rows(listed) if self.folder == CLINICAL_FOLDER else self._series_rows(listed)
        self._progress.add(done=1, read=1)
        return listed.patient, listed.fingerprint, listed.listed, rows

    def _series_rows(self, listed: Listed) -> list[Row]:
        rows = []
        for facts in listed.series:
            tags = self._twin_tags(listed.patient, facts) if facts.first else {}
            path = f"{self.folder}/{listed.patient}/{facts.study}/{facts.series}"
            rows.append(series_row(self.folder, listed.patient, facts.study, facts.series, tags, facts.images,
                                   facts.bytes, path))
        return rows

    def _twin_tags(self, patient: str, facts: Series) -> dict[str, str]:
        key = (f"{self._namespace.prefix}{twin_folder(self.folder)}/{patient}/{facts.study}/{facts.series}/"
               f"{twin_name(facts.first)}")
        try:
            body = self._bucket.get_head(key, MAX_TWIN_BYTES + 1)
        except NotFound:
            return {}  # a series without its twin: the listing's facts alone
        if len(body) > MAX_TWIN_BYTES:
            self._refuse(key, MAX_TWIN_BYTES)
            return {}
        try:
            tags = selected_tags_from_metadata_json(body, SERIES_TAGS)
        except Exception as error:  # one twin, however malformed, spoils only its own row
            self._bad_input(key, error)
            return {}
        if not tags:  # not DICOM JSON, or no element that could be shown
            self._bad_input(key, "no DICOM element in it could be read")
        return tags

    def _clinical_rows(self, listed: Listed) -> list[Row]:
        latest = latest_clinical_file([obj.key.rsplit("/", 1)[1] for obj in listed.files])
        if latest is None:
            return []
        bodies = {obj.key.rsplit("/", 1)[1]: b"" for obj in listed.files}
        obj = next(obj for obj in listed.files if obj.key.endswith("/" + latest))
        if obj.size > MAX_CLINICAL_BYTES:
            self._refuse(obj.key, MAX_CLINICAL_BYTES)
            bodies[latest] = b"{}"
        else:
            bodies[latest] = self._bucket.get_range(obj.key, 0, obj.size, obj.etag)
        try:
            row, problem = patient_row(listed.patient, list(bodies.items()))
        except Exception as error:  # one file spoils only its own row
            self._bad_input(obj.key, error)
            return []
        if problem is not None:
            self._bad_input(obj.key, problem)
        return [] if row is None else [row]

    def _refuse(self, key: str, limit: int) -> None:
        self._progress.add(refused=1)
        log.warning("catalog: %s is larger than %d bytes; refused, its cells stay empty", key, limit)

    def _bad_input(self, key: str, error: object) -> None:
        self._progress.add(errors=1)
        log.warning("catalog: %s could not be read (%s); its cells stay empty", key, error)


def build_pools() -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
    """The build's own listing and reading pools, at a lower priority: no reader of the mount waits on them."""
    return (ThreadPoolExecutor(LIST_THREADS, "catalog-list", initializer=_lower_priority),
            ThreadPoolExecutor(READ_THREADS, "catalog-read", initializer=_lower_priority))


def build_folders(namespace: Namespace, index: ListingIndex, bucket: Bucket, folders: Sequence[str],
                  progress: Progress, relist: bool, db: CatalogDB) -> None:
    """Catalog ``folders`` at once into ``db``, sharing the build's pools: a CT folder's listing is bound by
    the CPU that parses its pages, an X-ray or clinical folder by the round trips of its GETs, so together
    they take little more than the longer. ``relist``: list every known patient of an image folder again
    (see :meth:`FolderBuild.run`). Raises NccidfsError when S3 fails."""
    _lower_priority()
    list_pool, read_pool = build_pools()
    builds = [FolderBuild(namespace, index, bucket, folder, progress, list_pool, read_pool) for folder in folders]
    try:
        listed = []
        for build in builds:
            patients = build.patients()
            progress.add(total=len(patients))
            listed.append(patients)

        def finish(build: FolderBuild, patients: list[str]) -> None:
            build.run(patients, db.fingerprints(build.folder), relist, functools.partial(db.put, build.folder),
                      functools.partial(db.confirm, build.folder))
            db.prune(build.folder, set(patients))

        with ThreadPoolExecutor(len(builds) or 1, "catalog-folder", initializer=_lower_priority) as each:
            for future in [each.submit(finish, build, patients) for build, patients in zip(builds, listed,
                                                                                            strict=True)]:
                future.result()
    finally:
        list_pool.shutdown(wait=False, cancel_futures=True)
        read_pool.shutdown(wait=False, cancel_futures=True)
