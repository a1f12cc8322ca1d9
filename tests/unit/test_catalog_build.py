"""The catalog's build over an in-memory store: tables complete or absent, rows kept under their listings'
fingerprints and read again only when those change, bulk listings, bad inputs confined to their rows."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from nccidfs.catalog_build import MAX_TWIN_BYTES, FolderBuild, image_patient
from nccidfs.catalog_db import CatalogDB
from nccidfs.derived.catalog import SERIES_TAGS, render_csv, spreadsheet_cell, valid_text
from nccidfs.dicom import selected_tags_from_metadata_json, tags_from_metadata_json
from nccidfs.errors import NotReady
from nccidfs.index import ListingIndex
from nccidfs.namespace import Namespace
from nccidfs.namespace.rules import is_safe_name
from nccidfs.objects import Listing, ObjectInfo
from nccidfs.views.catalog import CatalogBuilder, CatalogView
from tests.fakes import FailingStore

PREFIX = "training/"


def twin(description: str) -> bytes:
    return json.dumps({"00080060": {"vr": "CS", "Value": ["CT"]},
                       "0008103E": {"vr": "LO", "Value": [description]}}).encode()


def warehouse(patients: range, images: int = 3) -> dict[str, bytes]:
    objects = {}
    for number in patients:
        for series in range(2):
            folder = f"ct/P{number}/1.{number}/1.{number}.{series}"
            for image in range(images):
                objects[f"{PREFIX}{folder}/i{image}.dcm"] = b"x" * (10 + image)
                objects[f"{PREFIX}{folder.replace('ct/', 'ct-metadata/', 1)}/i{image}.json"] = twin(f"s{series}")
        objects[f"{PREFIX}data/P{number}/status_2020-01-0{1 + number % 9}.json"] = b'{"Sex": "F"}'
    return objects


def finished(builder: CatalogBuilder) -> dict[str, Any]:
    """The progress of the build under way once it has ended."""
    deadline = time.monotonic() + 30
    while (progress := builder.progress())["state"] == "building":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return progress


class Catalog:
    """A builder, its view and its database over one store, as the daemon wires them."""

    def __init__(self, store: FailingStore, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        index = ListingIndex(directory / "index.db", {})
        self.namespace = Namespace(store, PREFIX, ["ct", "ct-metadata", "data"], 60.0, 100_000, index)
        self.db = CatalogDB(directory, {"bucket": "b"})
        self.builder = CatalogBuilder(self.namespace, index, store, self.db)
        self.view = CatalogView(self.builder, self.db, 0.0)

    def build(self, folders: list[str] | None = None, relist: bool = False) -> dict[str, object]:
        self.builder.start(folders, again=True, relist=relist)
        return finished(self.builder)

    def table(self, name: str) -> list[dict[str, str]]:
        opened = self.view.open([name])
        try:
            return list(csv.DictReader(io.StringIO(opened.read(0, 1 << 30).decode("utf-8"))))
        finally:
            opened.release()


def twin_gets(store: FailingStore) -> int:
    return sum(1 for key, _, _ in store.ranges if "-metadata/" in key)


@pytest.mark.parametrize(("text", "cell"), [
    ("=1+2", "'=1+2"), ("+1-2", "'+1-2"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"),
    ("\r=1", "'\r=1"), ("-3", "-3"), ("-1.5e-3", "-1.5e-3"), ("+", "'+"), ("a=b", "a=b"), ("", ""),
])
def test_a_cell_a_spreadsheet_would_run_is_quoted_and_a_number_is_left(text: str, cell: str) -> None:
    assert spreadsheet_cell(text) == cell


def test_lone_surrogates_become_the_replacement_character_in_valid_utf8() -> None:
    assert valid_text("a\ud800b\udc80") == "a\ufffdb\ufffd" and valid_text("😀") == "😀"
    data = render_csv(("=h\udc80",), [{"=h\udc80": "\ud83d"}])
    assert data.decode("utf-8") == "'=h\ufffd\n\ufffd\n"


def test_a_patients_listing_gives_its_series_and_a_fingerprint_of_keys_and_etags() -> None:
    prefix = "training/ct/P1/"
    objects = [ObjectInfo(prefix + key, size, etag, 0.0) for key, size, etag in [
        ("S/R/b.dcm", 5, "e1"), ("S/R/a.dcm", 7, "e2"), ("S/R/notes.txt", 100, "e3"), ("S/R2/x/y.dcm", 1, "e4"),
        ("S/bad\x01/c.dcm", 1, "e5"), ("loose.dcm", 1, "e6")]]
    listed = image_patient("P1", prefix, objects, 1.0)
    assert [(s.study, s.series, s.images, s.bytes, s.first) for s in listed.series] == [
        ("S", "R", 2, 12, "a.dcm"), ("S", "R2", 0, 0, "")]
    changed = [*objects[:-1], objects[-1]._replace(etag="e7")]
    assert image_patient("P1", prefix, changed, 1.0).fingerprint != listed.fingerprint
    assert image_patient("P1", prefix, list(objects), 2.0).fingerprint == listed.fingerprint


@pytest.mark.parametrize("odd", ["c\x01.dcm", "é.dcm", "x" * 252 + ".dcm", "x" * 251 + ".dcm"])
def test_an_image_is_counted_exactly_when_the_mount_shows_its_name(odd: str) -> None:
    prefix = "training/ct/P1/"
    objects = [ObjectInfo(prefix + key, 1, "e", 0.0) for key in sorted(["S/R/a.dcm", f"S/R/{odd}"])]
    listed = image_patient("P1", prefix, objects, 1.0)
    assert listed.series[0].images == 1 + is_safe_name(odd)


def test_a_table_is_refused_until_a_build_completes_then_holds_every_series(tmp_path: Path) -> None:
    store = FailingStore(warehouse(range(5)))
    catalog = Catalog(store, tmp_path)
    store.stall = 0.3
    with pytest.raises(NotReady):
        catalog.view.open(["series.csv"])  # and that open started a build
    assert catalog.builder.progress()["state"] == "building"
    store.stall = 0.0
    done = catalog.build()
    assert done["state"] == "complete" and done["series"] == 10
    rows = catalog.table("series.csv")
    assert [row["path"] for row in rows] == sorted(f"ct/P{n}/1.{n}/1.{n}.{s}" for n in range(5) for s in range(2))
    assert {row["SeriesDescription"] for row in rows} == {"s0", "s1"} and rows[0]["images"] == "3"


def test_bulk_listings_and_one_twin_get_per_series(tmp_path: Path) -> None:
    store = FailingStore(warehouse(range(40)))
    catalog = Catalog(store, tmp_path)
    store.requests.clear()
    catalog.build()
    assert twin_gets(store) == 80
    # Per folder: a listing of its patients, then flat runs: one patient each at first, then runs of many
    # (a listing per patient would take 40 per folder).
    assert store.requests["list"] <= 2 * 20, store.requests


def test_a_second_build_reads_nothing_and_new_patients_alone_are_read(tmp_path: Path) -> None:
    store = FailingStore(warehouse(range(6)))
    catalog = Catalog(store, tmp_path)
    catalog.build()
    first = catalog.table("series.csv")
    again = Catalog(store, tmp_path / ".")  # as after a remount: the same directory
    before = len(store.ranges)
    assert again.table("series.csv") == first and len(store.ranges) == before
    store.objects.update(warehouse(range(6, 8)))
    again.namespace.invalidate("/")
    done = again.build()
    assert twin_gets(store) - sum(1 for key, _, _ in store.ranges[:before] if "-metadata/" in key) == 4
    # The known CT patients are kept unlisted; data/ is listed whole and its known patients unchanged.
    assert (done["patients_read"], done["patients_reused"], done["patients_kept"]) == (4, 6, 6)
    assert len(again.table("series.csv")) == 16 and len(again.table("patients.csv")) == 8


def built_then_grown(tmp_path: Path, patients: int, more: int) -> tuple[Catalog, FailingStore, list[dict[str, str]]]:
    """A catalog built over ``patients`` patients, its series table, then ``more`` patients added to the
    bucket and the listings dropped (as ``nccidfs refresh`` drops them)."""
    store = FailingStore(warehouse(range(patients)))
    catalog = Catalog(store, tmp_path)
    catalog.build()
    table = catalog.table("series.csv")
    store.objects.update(warehouse(range(patients, patients + more)))
    catalog.namespace.invalidate("/")
    return catalog, store, table


def test_a_failing_store_fails_the_build_and_keeps_the_last_complete_tables(tmp_path: Path) -> None:
    catalog, store, before = built_then_grown(tmp_path, 3, 2)
    store.down = True
    failed = catalog.build()
    assert failed["state"] == "failed" and "503" in str(failed["reason"])
    assert catalog.table("series.csv") == before


def test_an_oversized_twin_is_refused_and_its_row_kept(tmp_path: Path) -> None:
    objects = warehouse(range(2), images=1)
    objects[f"{PREFIX}ct-metadata/P1/1.1/1.1.0/i0.json"] = b" " * (MAX_TWIN_BYTES + 1)
    objects[f"{PREFIX}ct-metadata/P0/1.0/1.0.0/i0.json"] = b"{]"
    catalog = Catalog(FailingStore(objects), tmp_path)
    done = catalog.build()
    assert (done["state"], done["refused"], done["errors"], done["series"]) == ("complete", 1, 1, 4)
    rows = {row["path"]: row for row in catalog.table("series.csv")}
    assert rows["ct/P1/1.1/1.1.0"]["Modality"] == "" and rows["ct/P1/1.1/1.1.1"]["Modality"] == "CT"


def test_a_build_of_one_folder_keeps_the_tables_of_the_others(tmp_path: Path) -> None:
    catalog = Catalog(FailingStore(warehouse(range(3))), tmp_path)
    catalog.build()
    patients = catalog.table("patients.csv")
    done = catalog.build(["ct"])
    assert done["building"] == ["ct"] and catalog.table("patients.csv") == patients
    with pytest.raises(Exception, match="not an image folder"):
        catalog.builder.start(["data"])


def test_the_parquet_twins_hold_the_rows_with_their_types(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    store = FailingStore(warehouse(range(3)))
    store.objects[f"{PREFIX}data/P1/data_2020-02-03.json"] = b'{"Age": "52.5", "Death": 1, "Note": "=1+1"}'
    catalog = Catalog(store, tmp_path)
    catalog.build()
    series = pq.read_table(catalog.db.table_path("series.parquet"))
    types = {field.name: str(field.type) for field in series.schema}
    assert (types["images"], types["bytes"], types["SliceThickness"], types["path"]) == (
        "int64", "int64", "double", "string")
    assert types["as_of"] == "timestamp[ms, tz=UTC]"
    assert series.column("path").to_pylist() == [row["path"] for row in catalog.table("series.csv")]
    patients = pq.read_table(catalog.db.table_path("patients.parquet")).to_pylist()
    one = next(row for row in patients if row["Patient_ID"] == "P1")
    assert one["filename_covid_status"] is True and str(one["filename_earliest_date"]) == "2020-01-02"
    assert (one["age"], one["death"], one["Note"]) == (52.0, True, "=1+1")  # no CSV quote in Parquet


def test_listings_the_mount_already_holds_are_not_listed_again(tmp_path: Path) -> None:
    store = FailingStore(warehouse(range(4)))
    catalog = Catalog(store, tmp_path)
    for path in ["/ct", *(f"/ct/P{number}" for number in range(4))]:  # as a walk of ct/ leaves them
        catalog.namespace.list(path)
    store.requests.clear()
    done = catalog.build(["ct"])
    assert store.requests["list"] == 0 and twin_gets(store) == 8
    assert done["series"] == 8 and [row["images"] for row in catalog.table("series.csv")] == ["3"] * 8


def test_a_mount_without_the_clinical_folder_builds_series_and_an_empty_patients_table(tmp_path: Path) -> None:
    store = FailingStore({key: body for key, body in warehouse(range(2)).items() if "/data/" not in key})
    index = ListingIndex(tmp_path / "index.db", {})
    namespace = Namespace(store, PREFIX, ["ct", "ct-metadata"], 60.0, 100_000, index)
    db = CatalogDB(tmp_path, {})
    builder = CatalogBuilder(namespace, index, store, db)
    builder.start()
    progress = finished(builder)
    assert (progress["state"], progress["building"], progress["series"]) == ("complete", ["ct"], 4)
    opened = CatalogView(builder, db, 0.0).open(["patients.csv"])  # complete: no clinical file is listed
    try:
        (header, *rows) = opened.read(0, 1 << 20).decode().splitlines()
    finally:
        opened.release()
    assert header.startswith("Patient_ID") and rows == []


@pytest.mark.parametrize(("seen", "keys", "left", "length"), [
    (1, 10_000, 5_000, 1),  # one patient says little
    (6, 6_000, 5_000, 30),  # 1,000 keys a patient: 30,000 keys a run
    (6, 18, 5_000, 2_500),  # 3 keys a patient; near the end, down to a quarter so all threads have a run
    (6, 18, 60_000, 10_000),
    (600, 600_000, 60, 10),  # 1,000 keys a patient, 60 left: 10 a run for the 6 threads
])
def test_runs_hold_about_chunk_keys_and_leave_work_for_every_thread(seen: int, keys: int, left: int,
                                                                    length: int) -> None:
    assert FolderBuild._run_length(seen, keys, left) == length


def test_an_unexpected_failure_ends_the_build_as_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog = Catalog(FailingStore(warehouse(range(2))), tmp_path)

    def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(catalog.db, "put", broken)
    done = catalog.build()
    assert done["state"] == "failed" and "disk on fire" in str(done["reason"])
    with pytest.raises(NotReady):
        catalog.view.open(["series.csv"])


def test_a_stale_table_is_served_while_an_update_starts(tmp_path: Path) -> None:
    catalog, _, old = built_then_grown(tmp_path, 2, 1)
    catalog.builder.mark_stale()
    assert catalog.builder.progress()["stale"] is True
    assert catalog.table("series.csv") == old  # at once, the last complete one
    done = finished(catalog.builder)
    assert (done["stale"], done["patients_read"]) == (False, 2)
    assert len(catalog.table("series.csv")) == 6


class RecordingStore(FailingStore):
    """A store that keeps every key its flat listings returned."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        super().__init__(objects)
        self.listed: list[str] = []

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        listing = super().list_tree(prefix, start_after, end)
        self.listed.extend(obj.key for obj in listing.objects)
        return listing


def test_after_a_refresh_only_new_patients_are_listed_and_read_and_old_rows_keep_their_as_of(
        tmp_path: Path) -> None:
    store = RecordingStore(warehouse(range(30)))
    catalog = Catalog(store, tmp_path)
    catalog.build()
    old = {row["path"]: row["as_of"] for row in catalog.table("series.csv")}
    time.sleep(1.1)  # as_of is to the second
    store.objects.update(warehouse(range(30, 33)))
    catalog.namespace.invalidate("/")
    store.listed.clear()
    store.ranges.clear()
    done = catalog.build()
    ct_listed = {key.split("/")[2] for key in store.listed if key.startswith(f"{PREFIX}ct/")}
    assert ct_listed == {"P30", "P31", "P32"}, "no known patient's images are listed again"
    assert twin_gets(store) == 6
    assert (done["patients_read"], done["patients_kept"]) == (3 + 3, 30)
    rows = {row["path"]: row["as_of"] for row in catalog.table("series.csv")}
    assert {path: rows[path] for path in old} == old
    assert all(rows[path] > max(old.values()) for path in set(rows) - set(old)) and len(rows) == 66
    assert catalog.builder.progress()["as_of"]["ct"] == min(old.values())


def test_a_relist_finds_a_known_patients_new_series_that_an_update_keeps_as_of_its_listing(
        tmp_path: Path) -> None:
    store = RecordingStore(warehouse(range(8)))
    catalog = Catalog(store, tmp_path)
    catalog.build()
    store.objects[f"{PREFIX}ct/P3/1.3/1.3.9/i0.dcm"] = b"new"
    catalog.namespace.invalidate("/")
    done = catalog.build()
    assert done["series"] == 16 and done["patients_kept"] == 8
    catalog.namespace.invalidate("/")
    store.ranges.clear()
    done = catalog.build(relist=True)
    assert done["series"] == 17 and done["patients_kept"] == 0
    assert (done["patients_read"], done["patients_reused"]) == (1, 7 + 8)
    assert twin_gets(store) == 3  # P3 alone read again: a twin GET for each of its three series


@pytest.mark.parametrize("document", [
    {"00080060": {"vr": "CS", "Value": ["CT"]}, "00280010": {"vr": "US", "Value": [512]},
     "00180050": {"vr": "DS", "Value": [2.5]}, "00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}]}},
    {"00080060": {"vr": "CS", "Value": ["MR"]}, "0008103e": {"vr": "LO", "Value": ["lower case key"]}},
    {"00280010": {"vr": "US", "Value": [1]}, "00280030": {"vr": "DS", "Value": [1, 0.5]}},
    {"00280010": {"vr": "US", "Value": [True]}, "00280030": {"vr": "DS", "Value": [1.0, 0.5]}},
    {"00080060": {"vr": "CS", "Value": ["\ud800"]}, "0008103E": {"vr": "LO", "Value": ["kept"]}},
    {"00080060": {"vr": "CS", "Value": [10 ** 30]}, "00080070": {"vr": "LO", "Value": [None, "B"]}},
    {"00080060": "not an element", "00080070": {"vr": "LO"}, "00080020": {"vr": "DA", "Value": "20200101"}},
    ["not", "an", "object"],
])
def test_the_series_tags_of_a_twin_are_those_of_its_whole_conversion(document: object) -> None:
    raw = json.dumps(document).encode()
    for _ in range(2):  # the second time through the converted-element cache
        whole = tags_from_metadata_json(raw)
        assert selected_tags_from_metadata_json(raw, SERIES_TAGS) == {
            keyword: text for keyword, text in whole.items() if keyword in SERIES_TAGS}


def test_a_database_of_an_earlier_schema_is_started_anew(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    old = sqlite3.connect(tmp_path / "catalog.sqlite3")
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO meta VALUES ('identity', ?)", (json.dumps({"schema": 1, "bucket": "b"}),))
    old.execute("CREATE TABLE patients (folder TEXT NOT NULL, patient TEXT NOT NULL, fingerprint TEXT NOT NULL, "
                "rows TEXT NOT NULL, PRIMARY KEY (folder, patient)) WITHOUT ROWID")
    old.execute("INSERT INTO patients VALUES ('ct', 'P0', 'x', '[]')")
    old.commit()
    old.close()
    catalog = Catalog(FailingStore(warehouse(range(2))), tmp_path)
    done = catalog.build()
    assert (done["state"], done["series"], done["patients_read"]) == ("complete", 4, 4)


def test_progress_never_waits_on_a_write_of_the_database(tmp_path: Path) -> None:
    catalog = Catalog(FailingStore(warehouse(range(2))), tmp_path)
    catalog.build()
    answers: list[dict[str, Any]] = []
    with catalog.db._writing():  # a long write under way, as while a whole folder's listings are confirmed
        asking = threading.Thread(target=lambda: answers.append(catalog.builder.progress()), daemon=True)
        asking.start()
        asking.join(timeout=2.0)
        assert answers and answers[0]["series"] == 4, "progress.json waited for the write"
