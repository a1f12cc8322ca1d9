"""Selecting a cohort: which series and patients, from the catalog's tables; which objects, from listings.

The condition is SQL over the catalog's two CSV tables, loaded into an in-memory SQLite database as
``series`` and ``patients`` and joined by Patient_ID in the view ``cohort`` (every series with its
patient's columns, and every patient without a series once). Columns have NUMERIC affinity, so numbers
compare as numbers (``images >= 100``, ``StudyDate >= 20200301`` or ``'20200301'``); ``True`` and
``False`` are stored as 1 and 0; an empty cell is NULL. The condition may only read: an authorizer
refuses anything but SELECT and reads (no ATTACH, no PRAGMA, no writes).

The objects of a selection are the selected series' folders, their ``-metadata`` twins and the selected
patients' clinical folders (``data/<Patient_ID>/``). They come from the mount's listing index
(``listings.sqlite3``, read-only) where it holds a patient's folder whole, and otherwise from S3: a
folder at a time for a few patients, in flat listings of runs of patients for many (:mod:`nccidfs.cohort.runs`).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import operator
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nccidfs.cohort import runs
from nccidfs.cohort.tree import prefix_end
from nccidfs.derived.clinical import CLEANED_COLUMNS
from nccidfs.errors import ConfigError
from nccidfs.index import INDEX_FILE, SCHEMA_VERSION
from nccidfs.layout import CLINICAL_FOLDER, patient_folder, twin_folder_path, twin_of
from nccidfs.objects import ObjectInfo
from nccidfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)

CATALOG = ".nccidfs/catalog"
# Folders listed in S3 at once, for the patients the listing index does not hold whole.
LISTING_THREADS = 16
# A warehouse folder with at least this many patients to list has them listed in runs, not one by one.
RUNS_FROM = 2 * LISTING_THREADS
# A CSV cell as SQL: "True" and "False" as 1 and 0, an empty cell as NULL, anything else as it is.
_CELL = "CASE ?{0} WHEN 'True' THEN 1 WHEN 'False' THEN 0 ELSE NULLIF(?{0}, '') END"
_TEXT_COLUMNS = {"Patient_ID", "folder", "path", "latest_file"}
# The columns a selection reads whatever the condition.
_NEEDED = {"Patient_ID", "path"}
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


@dataclass
class Selection:
    """Per patient folder (``ct/<Patient_ID>/``), the folders under it that are wanted; the patient's
    whole folder is wanted when that set holds the folder itself."""

    wanted: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, relative: str, is_file: bool = False) -> None:
        """Add a folder or file (relative to the prefix: ``ct/P/study/series``) and its twin, and the
        patient's clinical folder."""
        parts = relative.strip("/").split("/")
        if len(parts) < 2:
            raise ConfigError(f"{relative}: not inside a patient's folder (such as ct/<Patient_ID>/...)")
        folder, patient = parts[0], parts[1]
        below = "/".join(parts) + ("" if is_file else "/")
        self.wanted[f"{folder}/{patient}/"].add(below)
        twin = (twin_of(below) if is_file else twin_folder_path(below)) if len(parts) > 2 else None
        if twin is not None and folder != CLINICAL_FOLDER:
            self.wanted[twin.split("/", 1)[0] + f"/{patient}/"].add(twin)
        self.wanted[f"{CLINICAL_FOLDER}/{patient}/"].add(f"{CLINICAL_FOLDER}/{patient}/")

    @property
    def patients(self) -> set[str]:
        return {folder.split("/")[1] for folder in self.wanted}


# -- the catalog --------------------------------------------------------------------------------------
def load_catalog(folder: Path, condition: str | None = None) -> sqlite3.Connection:
    """A catalog (a mount's ``.nccidfs/catalog``, or a copy of its two tables) in memory, as tables
    ``series`` and ``patients`` and the view ``cohort``. A build still under way is refused.

    Only the columns whose names occur in ``condition`` are loaded, besides those a selection needs
    (a patient table holds a hundred clinical fields; loading them all took most of the time of a
    selection); None loads every column. A name the condition uses is always loaded, so SQLite still
    reports a name the catalog lacks as an unknown column."""
    try:
        progress = folder / "progress.json"
        state = json.loads(progress.read_bytes()).get("state") if progress.exists() else "complete"
        if state != "complete":
            raise ConfigError(f"the catalog in {folder} is not built ({state}); run: nccidfs catalog build MOUNTPOINT")
        tables = {name: (folder / f"{name}.csv").read_text() for name in ("series", "patients")}
    except BlockingIOError:  # EAGAIN: no build has completed yet
        raise ConfigError(f"the catalog in {folder} is not built yet; run: nccidfs catalog build MOUNTPOINT") from None
    except OSError as error:
        raise ConfigError(f"cannot read the catalog in {folder}: {error.strerror or error}") from None
    db = sqlite3.connect(":memory:")
    columns = {name: _load(db, name, text, condition) for name, text in tables.items()}
    extra = [c for c in columns["patients"] if c not in columns["series"]]
    series_cols = [f's."{c}"' for c in columns["series"]]
    patient_cols = [f'p."{c}"' for c in extra]
    nulls = ["NULL" if c != "Patient_ID" else 'p."Patient_ID"' for c in columns["series"]]
    db.execute(f"CREATE VIEW cohort AS SELECT {', '.join(series_cols + patient_cols)} FROM series s "
               'LEFT JOIN patients p ON p."Patient_ID" = s."Patient_ID" '
               f"UNION ALL SELECT {', '.join(nulls + patient_cols)} FROM patients p "
               'WHERE p."Patient_ID" NOT IN (SELECT "Patient_ID" FROM series)')
    return db


def _load(db: sqlite3.Connection, table: str, text: str, condition: str | None) -> list[str]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if not header or "Patient_ID" not in header:
        raise ConfigError(f"the catalog's {table}.csv has no Patient_ID column")
    mentioned = None if condition is None else condition.lower()
    names = sql_names(header, table)
    kept = [n for n, c in enumerate(names) if c in _NEEDED or mentioned is None or c.lower() in mentioned]
    columns = [names[n] for n in kept]
    quoted = ", ".join('"' + c.replace('"', '""') + ('" TEXT' if _is_text(c) else '" NUMERIC') for c in columns)
    db.execute(f"CREATE TABLE {table} ({quoted})")
    # Cells are taken and converted without a Python step per cell: itemgetter picks the columns kept,
    # and SQLite turns "True", "False" and "" into 1, 0 and NULL as it inserts them.
    cells = ", ".join(_CELL.format(n) for n in range(1, len(columns) + 1))
    rows = map(operator.itemgetter(*kept), reader) if len(kept) > 1 else ((row[kept[0]],) for row in reader)
    try:
        db.executemany(f"INSERT INTO {table} VALUES ({cells})", rows)
    except (sqlite3.Error, csv.Error, IndexError) as error:
        raise ConfigError(f"the catalog's {table}.csv, line {reader.line_num}: {error or 'too few cells'}") from None
    db.execute(f'CREATE INDEX {table}_patient ON {table} ("Patient_ID")')
    return columns


def sql_names(header: list[str], table: str) -> list[str]:
    """The CSV's column names as SQL columns, which SQLite compares ignoring case: a raw clinical field
    named as its cleaned column is but for case (``Age`` beside NHSX's ``age``) is ``raw_Age``."""
    cleaned = {name.lower() for name in CLEANED_COLUMNS}
    names = [f"raw_{name}" if name.lower() in cleaned and name not in CLEANED_COLUMNS else name for name in header]
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            raise ConfigError(f"the catalog's {table}.csv has two columns named {name!r} but for case")
        seen.add(name.lower())
    return names


def _is_text(column: str) -> bool:
    """Identifiers stay text even when they look like numbers (a Patient_ID "007", a UID "1.2")."""
    return column in _TEXT_COLUMNS or column.endswith("UID")


def _read_only(action: int, *args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED else sqlite3.SQLITE_DENY


def select(db: sqlite3.Connection, where: str | None, patients: set[str] | None) -> Selection:
    """The series and patients of the catalog that meet ``where`` and are among ``patients``."""
    if patients is not None:
        db.execute("CREATE TEMP TABLE chosen (Patient_ID TEXT PRIMARY KEY)")
        db.executemany("INSERT OR IGNORE INTO chosen VALUES (?)", ((p,) for p in patients))
        known = {row[0] for row in db.execute('SELECT "Patient_ID" FROM series UNION '
                                              'SELECT "Patient_ID" FROM patients')}
        missing = sorted(patients - known)
        if missing:
            raise ConfigError(f"{len(missing)} patients are not in the catalog: {', '.join(missing[:5])}")
    conditions = [f"({where})"] if where else []
    if patients is not None:
        conditions.append('"Patient_ID" IN (SELECT Patient_ID FROM temp.chosen)')
    query = 'SELECT DISTINCT "Patient_ID", path FROM cohort' + (
        " WHERE " + " AND ".join(conditions) if conditions else "")
    db.set_authorizer(_read_only)
    try:
        rows = db.execute(query).fetchall()
    except sqlite3.Error as error:
        raise ConfigError(f"--where: {error}") from None
    finally:
        db.set_authorizer(None)
    selection = Selection()
    for patient, path in rows:
        if path is None:
            selection.add(f"{CLINICAL_FOLDER}/{patient}")
        else:
            selection.add(str(path))
    return selection


def select_paths(mountpoint: Path, paths: Iterable[str]) -> Selection:
    """A selection of paths in the mount (absolute, or relative to it), files or folders."""
    selection = Selection()
    for line in paths:
        path = line.strip()
        if not path:
            continue
        absolute = Path(path) if Path(path).is_absolute() else mountpoint / path
        if mountpoint not in absolute.parents:
            raise ConfigError(f"--paths: {path} is not in the mount {mountpoint}")
        if not absolute.exists():
            raise ConfigError(f"--paths: {path} is not in the mount {mountpoint}")
        selection.add(str(absolute.relative_to(mountpoint)), absolute.is_file())
    return selection


# -- the objects --------------------------------------------------------------------------------------
class ListingSource:
    """Every object under a patient folder: from the listing index where it holds the folder whole, else
    listed from S3. Remembers when the listings it used were made."""

    def __init__(self, cache_dir: Path, identity: dict[str, str], store: Callable[[], ObjectStore],
                 prefix: str) -> None:
        self._store = store  # made only when the index lacks a folder (boto3 takes a second to start)
        self.prefix = prefix
        self._db = _open_index(cache_dir / INDEX_FILE, identity)
        self.earliest, self.latest = float("inf"), 0.0
        self.from_index = self.from_s3 = 0
        self.listings = 0  # listings sent to S3 (each a request per 1,000 keys)

    def objects(self, wanted: dict[str, set[str]]) -> list[ObjectInfo]:
        """Every object of each patient folder (relative to the prefix, ending in ``/``), or of the folders
        wanted under it: a patient's folder the index lacks whole may still hold the wanted series whole
        (the catalog looks a series' twin up in the series' own listing). What the index lacks is listed
        from S3 (:meth:`_listed`)."""
        found: list[ObjectInfo] = []
        missing = []
        held = self._held({folder.split("/", 1)[0] for folder in wanted})
        for folder, below in wanted.items():
            indexed = self._indexed(self.prefix + folder) if folder in held else None
            if indexed is not None:
                found.extend(indexed)
                continue
            if folder in below:
                missing.append(folder)
                continue
            for directory in sorted({item if item.endswith("/") else item.rsplit("/", 1)[0] + "/" for item in below}):
                indexed = self._indexed(self.prefix + directory) if folder in held else None
                if indexed is None:
                    missing.append(directory)
                else:
                    found.extend(indexed)
        if missing:
            found.extend(self._listed(missing))
        return found

    def _listed(self, missing: list[str]) -> list[ObjectInfo]:
        """The objects of folders the index lacks, listed from S3: each folder flat where a warehouse folder
        has few of them, else the patients' folders in runs (:mod:`nccidfs.cohort.runs`)."""
        listed_at = time.time()
        store = self._store()
        patients: dict[str, set[str]] = defaultdict(set)  # warehouse folder -> patients
        for folder in missing:
            top, patient = folder.split("/", 2)[:2]
            patients[top].add(patient)
        calls: list[Callable[[], list[ObjectInfo]]] = []
        for top, chosen in sorted(patients.items()):
            base = f"{self.prefix}{top}/"
            if len(chosen) < RUNS_FROM:
                calls += [functools.partial(self._list, store, self.prefix + folder)
                          for folder in missing if folder.startswith(f"{top}/")]
                continue
            every = self._patients(base)
            if every is None:
                every = [name[len(base):-1] for name in store.list_dir(base).prefixes]
                self.listings += 1
            calls += [functools.partial(self._list_run, store, base, run, end)
                      for run, end in runs.plan(every, chosen, runs.longest_run(len(chosen), LISTING_THREADS))]
        with ThreadPoolExecutor(LISTING_THREADS) as pool:
            found = [obj for objects in pool.map(lambda call: call(), calls) for obj in objects]
        self._seen(listed_at)
        self.from_s3 += len(missing)
        self.listings += len(calls)
        return found

    @staticmethod
    def _list(store: ObjectStore, prefix: str) -> list[ObjectInfo]:
        return list(store.list_tree(prefix).objects)

    @staticmethod
    def _list_run(store: ObjectStore, base: str, run: list[str], end: str | None) -> list[ObjectInfo]:
        """One flat listing from the run's first patient to ``end``; the keys of patients outside the run are
        dropped."""
        wanted = set(run)
        listing = store.list_tree(base, start_after=base + run[0], end=None if end is None else f"{base}{end}/")
        return [obj for obj in listing.objects if obj.key[len(base):].split("/", 1)[0] in wanted]

    def _patients(self, base: str) -> list[str] | None:
        """The patients of a warehouse folder as the index last listed it (the catalog build lists each)."""
        if self._db is None:
            return None
        rows = self._db.execute("SELECT e.name, e.size FROM dirs d JOIN entries e ON e.dir = d.id WHERE d.prefix = ?",
                                (base,)).fetchall()
        if not rows:
            return None
        return [name for name, size in rows if size < 0]

    def _seen(self, when: float) -> None:
        self.earliest, self.latest = min(self.earliest, when), max(self.latest, when)

    def _held(self, tops: set[str]) -> set[str]:
        """The patient folders (``ct/<Patient_ID>/``) under which the index holds any listing: one query for
        each warehouse folder, so that the patients it holds nothing of are not asked for one by one."""
        held: set[str] = set()
        if self._db is None:
            return held
        for top in tops:
            base = f"{self.prefix}{top}/"
            for (prefix,) in self._db.execute("SELECT prefix FROM dirs WHERE prefix > ? AND prefix < ?",
                                              (base, prefix_end(base))):
                held.add(patient_folder(prefix[len(self.prefix):]))
        return held

    def _indexed(self, prefix: str) -> list[ObjectInfo] | None:
        if self._db is None:
            return None
        rows = self._db.execute(
            "SELECT d.prefix, d.fetched, e.name, e.size, e.etag, e.mtime FROM dirs d LEFT JOIN entries e "
            "ON e.dir = d.id WHERE d.prefix >= ? AND d.prefix < ?", (prefix, prefix_end(prefix))).fetchall()
        directories = {row[0] for row in rows}
        if prefix not in directories:
            return None
        objects = []
        for directory, fetched, name, size, etag, mtime in rows:
            self._seen(fetched)
            if name is None:
                continue
            if size < 0:
                if f"{directory}{name}/" not in directories:
                    return None  # a folder inside whose listing was dropped: not whole
                continue
            objects.append(ObjectInfo(directory + name, size, etag.hex() if isinstance(etag, bytes) else etag, mtime))
        self.from_index += 1
        return objects


def _open_index(path: Path, identity: dict[str, str]) -> sqlite3.Connection | None:
    """The mount's listing index, read-only, if it is of this schema and for this warehouse."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        row = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
    except sqlite3.Error as error:
        log.info("listing index %s not used: %s", path, error)
        return None
    stamp = json.loads(row[0]) if row else {}
    if stamp != {"schema": SCHEMA_VERSION, **identity}:
        log.info("listing index %s is for another warehouse or view; listing from S3", path)
        db.close()
        return None
    return db


def collect(selection: Selection, source: ListingSource) -> list[ObjectInfo]:
    """The objects of a selection, in key order, each once."""
    wanted = selection.wanted
    chosen: dict[str, ObjectInfo] = {}
    prefix_length = len(source.prefix)
    for obj in source.objects(wanted):
        relative = obj.key[prefix_length:]
        below = wanted[patient_folder(relative)]
        if relative in below or any(relative.startswith(item) for item in below if item.endswith("/")):
            chosen[obj.key] = obj
    return sorted(chosen.values())
