"""Selecting a cohort: SQL over the catalog's tables, and the objects of a selection from listings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from nccidfs.cohort import runs
from nccidfs.cohort.select import LISTING_THREADS, ListingSource, Selection, collect, load_catalog, select
from nccidfs.errors import ConfigError
from nccidfs.index import INDEX_FILE, ListingIndex
from nccidfs.namespace.rules import entries_from_listing, entries_from_tree
from nccidfs.objects import Listing
from tests.fakes import MemoryStore

SERIES = """folder,Modality,Patient_ID,StudyInstanceUID,SeriesInstanceUID,StudyDate,images,bytes,path
ct,CT,P1,1.2,1.2.1,20200315,120,1000,ct/P1/1.2/1.2.1
ct,CT,P1,1.2,1.2.2,20200315,9,100,ct/P1/1.2/1.2.2
xray,DX,P2,2.1,2.1.1,20200210,1,50,xray/P2/2.1/2.1.1
ct,CT,007,3.1,3.1.1,20210101,300,3000,ct/007/3.1/3.1.1
"""
PATIENTS = """Patient_ID,filename_covid_status,filename_earliest_date,filename_latest_date,latest_file,age
P1,True,2020-03-01,2020-04-01,data_2020-04-01.json,61
P2,False,2020-02-01,2020-02-01,status_2020-02-01.json,
P3,True,2020-05-01,2020-05-01,data_2020-05-01.json,45
007,False,2021-01-01,2021-01-01,status_2021-01-01.json,30
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    folder = tmp_path / ".nccidfs" / "catalog"
    folder.mkdir(parents=True)
    (folder / "series.csv").write_text(SERIES)
    (folder / "patients.csv").write_text(PATIENTS)
    (folder / "progress.json").write_text('{"state": "complete"}')
    return folder


def wanted(catalog: Path, where: str | None, patients: set[str] | None = None) -> dict[str, set[str]]:
    return dict(select(load_catalog(catalog, where or ""), where, patients).wanted)


def test_numbers_compare_as_numbers_and_identifiers_stay_text(catalog: Path) -> None:
    assert wanted(catalog, "images >= 100 AND Modality = 'CT'") == {
        "ct/P1/": {"ct/P1/1.2/1.2.1/"}, "ct-metadata/P1/": {"ct-metadata/P1/1.2/1.2.1/"}, "data/P1/": {"data/P1/"},
        "ct/007/": {"ct/007/3.1/3.1.1/"}, "ct-metadata/007/": {"ct-metadata/007/3.1/3.1.1/"},
        "data/007/": {"data/007/"}}
    assert set(wanted(catalog, "StudyDate >= '20210101'")) == {"ct/007/", "ct-metadata/007/", "data/007/"}
    assert set(wanted(catalog, "Patient_ID = '007'")) == {"ct/007/", "ct-metadata/007/", "data/007/"}


def test_patient_columns_select_their_series_and_patients_without_series(catalog: Path) -> None:
    assert set(wanted(catalog, "filename_covid_status")) == {"ct/P1/", "ct-metadata/P1/", "data/P1/", "data/P3/"}
    assert set(wanted(catalog, "age IS NULL")) == {"xray/P2/", "xray-metadata/P2/", "data/P2/"}


def test_only_the_columns_a_condition_names_are_loaded(catalog: Path) -> None:
    db = load_catalog(catalog, "age > 40")
    assert [row[1] for row in db.execute("PRAGMA table_info(patients)")] == ["Patient_ID", "age"]
    assert [row[1] for row in db.execute("PRAGMA table_info(series)")] == ["Patient_ID", "path"]
    assert set(select(db, "age > 40", None).wanted) == {"ct/P1/", "ct-metadata/P1/", "data/P1/", "data/P3/"}


def test_patients_file_narrows_the_condition(catalog: Path) -> None:
    assert set(wanted(catalog, "images > 5", {"P1"})) == {"ct/P1/", "ct-metadata/P1/", "data/P1/"}
    with pytest.raises(ConfigError, match="1 patients are not in the catalog: P9"):
        wanted(catalog, None, {"P1", "P9"})


@pytest.mark.parametrize(("where", "message"), [
    ("no_such_column = 1", "no such column"),
    ("images >", "syntax error"),
    ("1); ATTACH DATABASE 'x.db' AS x; --", "one statement|syntax error|incomplete"),
    ("(SELECT count(*) FROM pragma_table_info('series')) > 0", "not authorized"),
    ("load_extension('/tmp/x.so')", "not authorized"),
])
def test_a_bad_or_hostile_condition_is_one_config_error(catalog: Path, where: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        wanted(catalog, where)


def test_an_unbuilt_catalog_is_refused(catalog: Path) -> None:
    (catalog / "progress.json").write_text('{"state": "building"}')
    with pytest.raises(ConfigError, match="not built"):
        load_catalog(catalog)


def test_a_file_brings_its_twin_and_the_patients_clinical_files() -> None:
    selection = Selection()
    selection.add("ct/P1/s/se/img.dcm", is_file=True)
    assert dict(selection.wanted) == {"ct/P1/": {"ct/P1/s/se/img.dcm"},
                                      "ct-metadata/P1/": {"ct-metadata/P1/s/se/img.json"}, "data/P1/": {"data/P1/"}}


PREFIX = "training/"
OBJECTS = {f"{PREFIX}{key}": b"x" * n for n, key in enumerate([
    "ct/P1/1.2/1.2.1/a.dcm", "ct/P1/1.2/1.2.2/b.dcm", "ct-metadata/P1/1.2/1.2.1/a.json",
    "data/P1/data_2020-04-01.json", "data/P2/status.json"], 1)}
IDENTITY = {"endpoint": "e", "bucket": "b", "prefix": PREFIX}


def test_objects_come_from_the_index_where_it_holds_a_folder_whole(tmp_path: Path) -> None:
    store = MemoryStore(OBJECTS)
    index = ListingIndex(tmp_path / INDEX_FILE, IDENTITY)
    index.put(entries_from_tree(store.list_tree(f"{PREFIX}ct/P1/"), f"{PREFIX}ct/P1/", 0.0).items(), time.time())
    partial = entries_from_tree(store.list_tree(f"{PREFIX}data/P1/"), f"{PREFIX}data/P1/", 0.0)
    index.put(partial.items(), time.time())
    index.delete_under(f"{PREFIX}data/")  # nothing left of data/P1/: it is listed from the store
    index.close()
    store.requests.clear()
    selection = Selection()
    selection.add("ct/P1/1.2/1.2.1")
    source = ListingSource(tmp_path, IDENTITY, lambda: store, PREFIX)
    found = [obj.key[len(PREFIX):] for obj in collect(selection, source)]
    assert found == ["ct-metadata/P1/1.2/1.2.1/a.json", "ct/P1/1.2/1.2.1/a.dcm", "data/P1/data_2020-04-01.json"]
    assert (source.from_index, source.from_s3) == (1, 2)
    assert store.requests["list"] == 2


def test_a_series_listed_whole_serves_a_patient_folder_listed_only_in_part(tmp_path: Path) -> None:
    """The catalog looks a twin up in the series' own listing: the patient's metadata folder is not
    in the index whole, but the series is."""
    store = MemoryStore(OBJECTS)
    index = ListingIndex(tmp_path / INDEX_FILE, IDENTITY)
    for prefix in (f"{PREFIX}ct/P1/", f"{PREFIX}ct-metadata/P1/1.2/1.2.1/", f"{PREFIX}data/P1/"):
        index.put(entries_from_tree(store.list_tree(prefix), prefix, 0.0).items(), time.time())
    index.close()
    store.requests.clear()
    selection = Selection()
    selection.add("ct/P1/1.2/1.2.1")
    source = ListingSource(tmp_path, IDENTITY, lambda: store, PREFIX)
    assert len(collect(selection, source)) == 3
    assert (source.from_index, source.from_s3, store.requests["list"]) == (3, 0, 0)


def test_an_index_of_another_view_is_not_used(tmp_path: Path) -> None:
    store = MemoryStore(OBJECTS)
    index = ListingIndex(tmp_path / INDEX_FILE, {**IDENTITY, "view": "cohort x"})
    index.put(entries_from_tree(store.list_tree(f"{PREFIX}ct/P1/"), f"{PREFIX}ct/P1/", 0.0).items(), time.time())
    index.close()
    source = ListingSource(tmp_path, IDENTITY, lambda: store, PREFIX)
    source.objects({"ct/P1/": {"ct/P1/"}})
    assert (source.from_index, source.from_s3) == (0, 1)


def test_a_raw_field_named_as_its_cleaned_column_but_for_case_is_raw_prefixed(catalog: Path) -> None:
    # patients.csv keeps each raw clinical field and adds NHSX's cleaned column after it: SQL names ignore
    # case, so the raw "Age" would collide with the cleaned "age".
    (catalog / "patients.csv").write_text("Patient_ID,Age,age\nP1,61 years,61\nP2,unknown,\n")
    assert set(wanted(catalog, "age > 60")) == {"ct/P1/", "ct-metadata/P1/", "data/P1/"}
    assert set(wanted(catalog, "raw_Age = 'unknown'")) == {"xray/P2/", "xray-metadata/P2/", "data/P2/"}



# Names whose keys sort apart from their names ("P1-b/" and "P1./" before "P1/"), around the ones chosen.
MANY = [f"P{n}" for n in range(1500)] + ["P1-b", "P1.", "P10-", "P2 "]


def many_patients() -> dict[str, bytes]:
    objects = {}
    for patient in MANY:
        for series in ("se1", "se2"):
            objects[f"{PREFIX}xray/{patient}/st/{series}/i.dcm"] = patient.encode()
            objects[f"{PREFIX}xray-metadata/{patient}/st/{series}/i.json"] = b"{}"
        objects[f"{PREFIX}data/{patient}/data.json"] = b"{}"
    return objects


@pytest.mark.parametrize("indexed", ["none", "stale"])
def test_many_patients_are_listed_in_runs_exactly(tmp_path: Path, indexed: str) -> None:
    store = MemoryStore(many_patients())
    chosen = [p for n, p in enumerate(MANY) if n % 3 == 0 or n > 1480] + ["P1", "P1."]
    if indexed == "stale":  # the index's listing of xray/ predates some chosen patients
        index = ListingIndex(tmp_path / INDEX_FILE, IDENTITY)
        listing = store.list_dir(f"{PREFIX}xray/")
        older = Listing(tuple(p for p in listing.prefixes if not p.endswith(("P3/", "P1./"))), listing.objects)
        index.put([(f"{PREFIX}xray/", entries_from_listing(older, f"{PREFIX}xray/", 0.0))], time.time())
        index.close()
    store.requests.clear()
    selection = Selection()
    for patient in chosen:
        selection.add(f"xray/{patient}/st/se1")
    source = ListingSource(tmp_path, IDENTITY, lambda: store, PREFIX)
    found = [obj.key for obj in collect(selection, source)]
    expected = sorted(f"{PREFIX}{key}" for patient in set(chosen) for key in (
        f"xray/{patient}/st/se1/i.dcm", f"xray-metadata/{patient}/st/se1/i.json", f"data/{patient}/data.json"))
    assert found == expected
    assert source.from_s3 == 3 * len(set(chosen))
    # Three warehouse folders: the patients of each (but xray/ from the index) and about 4 runs a thread.
    assert source.listings == store.requests["list"] <= 3 * (1 + 1.5 * LISTING_THREADS * runs.RUNS_PER_THREAD)


def test_runs_pass_over_a_few_patients_not_wanted_and_end_at_the_next() -> None:
    every = [f"P{n}" for n in range(20)]
    wanted = {"P0", "P1", "P3", "P9", "P19"}  # in key order: P0 P1 P10..P19 P2 P3 ... P9
    assert runs.plan(every, wanted, longest=10) == [(["P0", "P1"], "P10"), (["P19", "P3"], "P4"), (["P9"], None)]
