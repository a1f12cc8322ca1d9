"""Tests for nccidfs.derived.catalog: series.csv and patients.csv built from the demo warehouse read back
with the csv module to the warehouse's own facts, in the same bytes whatever the input order, and the
patient rules are NHSX's (positive on any data_ file, the latest file of the cohort's kind wins)."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import defaultdict
from typing import Any

import pytest

from nccidfs.demo.warehouse import DemoObject
from nccidfs.derived.catalog import (
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    SERIES_TAGS,
    Row,
    patients_csv,
    patients_rows,
    series_csv,
    series_row,
)
from nccidfs.dicom import selected_tags_from_metadata_json, tags_from_metadata_json

IMAGE_KEY = re.compile(
    r"^training/(?P<folder>ct|mri|xray)/(?P<pid>[^/]+)/(?P<study>[^/]+)/(?P<series>[^/]+)/[^/]+\.dcm$"
)
CLINICAL_KEY = re.compile(r"^training/data/(?P<pid>[^/]+)/(?P<name>[^/]+)$")


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def series_rows_of(warehouse: list[DemoObject]) -> list[Row]:
    """The rows the mount would make: the series' images grouped by key, one twin's tags each."""
    bodies = {obj.key: obj.body for obj in warehouse}
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for key in bodies:
        match = IMAGE_KEY.match(key)
        if match:
            groups[match.group("folder", "pid", "study", "series")].append(key)
    rows = []
    for (folder, pid, study, series), keys in groups.items():
        first = min(keys).replace(f"training/{folder}/", f"training/{folder}-metadata/")[: -len(".dcm")] + ".json"
        tags = tags_from_metadata_json(bodies[first])
        total = sum(len(bodies[key]) for key in keys)
        path = f"{folder}/{pid}/{study}/{series}"
        rows.append(series_row(folder, pid, study, series, tags, len(keys), total, path))
    return rows


def clinical_of(warehouse: list[DemoObject]) -> dict[str, list[tuple[str, bytes]]]:
    clinical: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for obj in warehouse:
        match = CLINICAL_KEY.match(obj.key)
        if match:
            clinical[match["pid"]].append((match["name"], obj.body))
    return clinical


def test_series_csv_has_one_row_per_demo_series_with_its_tags(warehouse: list[DemoObject]) -> None:
    table = read_csv(series_csv(series_rows_of(warehouse)))
    assert [row["path"] for row in table] == sorted(row["path"] for row in table)
    assert tuple(table[0]) == SERIES_COLUMNS
    by_modality: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in table:
        by_modality[row["Modality"]].append(row)
    assert {modality: len(rows) for modality, rows in by_modality.items()} == {"CT": 3, "MR": 1, "DX": 2, "CR": 1}
    thin = next(row for row in by_modality["CT"] if row["SeriesDescription"] == "CT THORAX STANDARD 2.5mm")
    assert (thin["folder"], thin["images"], thin["Rows"], thin["Columns"]) == ("ct", "24", "512", "512")
    assert (thin["SliceThickness"], thin["PixelSpacing"]) == ("2.5", "0.703125\\0.703125")
    assert thin["BodyPartExamined"] == "CHEST" and thin["Manufacturer"] == "GE MEDICAL SYSTEMS"
    assert thin["path"] == "/".join(("ct", thin["Patient_ID"], thin["StudyInstanceUID"], thin["SeriesInstanceUID"]))
    assert re.fullmatch(r"20(20|21)\d{4}", thin["StudyDate"])
    image_bytes = sum(len(obj.body) for obj in warehouse if IMAGE_KEY.match(obj.key))
    assert sum(int(row["bytes"]) for row in table) == image_bytes


def test_series_csv_is_the_same_bytes_in_any_input_order(warehouse: list[DemoObject]) -> None:
    rows = series_rows_of(warehouse)
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    assert series_csv(shuffled) == series_csv(rows)


def test_a_series_without_some_tags_leaves_their_cells_empty() -> None:
    row = series_row("xray", "Covid1", "1.2", "1.2.3", {"Modality": "CR"}, 1, 10, "xray/Covid1/1.2/1.2.3")
    (read,) = read_csv(series_csv([row]))
    assert read["Modality"] == "CR" and read["SliceThickness"] == "" and read["Rows"] == ""


def test_patients_csv_follows_nhsx_cohorts_and_latest_files(warehouse: list[DemoObject]) -> None:
    clinical = clinical_of(warehouse)
    table = read_csv(patients_csv(patients_rows(clinical)))
    assert [row["Patient_ID"] for row in table] == sorted(clinical)
    assert tuple(table[0])[: len(PATIENT_COLUMNS)] == PATIENT_COLUMNS
    for row in table:
        names = sorted(name for name, _ in clinical[row["Patient_ID"]])
        positive = any(name.startswith("data_") for name in names)
        assert row["filename_covid_status"] == str(positive)
        assert row["latest_file"] == names[-1]  # the demo gives each patient files of one kind only
        assert (row["filename_earliest_date"], row["filename_latest_date"]) == (names[0][-15:-5], names[-1][-15:-5])
        latest = json.loads(dict(clinical[row["Patient_ID"]])[names[-1]])
        assert row["Pseudonym"] == latest["Pseudonym"] and row["Sex"] == latest["Sex"]
        assert row["SwabStatus" if not positive else "Death"] == str(latest.get("SwabStatus", latest.get("Death")))
    assert sum(row["filename_covid_status"] == "True" for row in table) == 4


def test_the_latest_data_file_wins_and_spans_the_dates(warehouse: list[DemoObject]) -> None:
    clinical = clinical_of(warehouse)
    patient = next(pid for pid, files in clinical.items() if len(files) == 2)
    (row,) = patients_rows({patient: list(reversed(clinical[patient]))})
    assert row["Death"] == "1" and row["Date of death"] != ""  # the later file records the death
    assert row["filename_earliest_date"] < row["filename_latest_date"]


def record(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def test_a_data_file_makes_a_patient_positive_even_after_a_later_status_file() -> None:
    files = [
        ("status_2020-04-01.json", record(SwabStatus=0)),
        ("data_2020-05-01.json", record(Death=0, Sex="F")),
        ("status_2020-09-30.json", record(SwabStatus=0, Sex="M")),
    ]
    (row,) = patients_rows({"Covid9": files})
    assert row["filename_covid_status"] == "True" and row["latest_file"] == "data_2020-05-01.json"
    assert (row["filename_earliest_date"], row["filename_latest_date"]) == ("2020-04-01", "2020-09-30")
    assert row["Sex"] == "F" and "SwabStatus" not in row


def test_segmentation_data_is_lifted_and_nested_values_are_json() -> None:
    body = record(
        Sex="F",
        SwabDates=[{"SwabDate": "01/02/2021", "SwabStatus": 0}],
        OtherDataSources={"SegmentationData": {"Sex": "M", "Lesions": 3}},
        Note='said "no", twice,\nthen yes',
    )
    table = read_csv(patients_csv(patients_rows({"Covid2": [("data_2021-02-03.json", body)]})))
    (row,) = table
    assert row["Sex"] == "M" and row["Lesions"] == "3" and "OtherDataSources" not in row
    assert json.loads(row["SwabDates"]) == [{"SwabDate": "01/02/2021", "SwabStatus": 0}]
    assert row["Note"] == 'said "no", twice,\nthen yes'  # quoting survives the round trip


def test_files_not_named_by_date_are_ignored_and_broken_json_keeps_the_row() -> None:
    clinical = {
        "Covid3": [("notes.txt", b"x"), ("data_2020-13-45.json", b"{}"), ("data_2020-12-01.json", b"{]")],
        "Covid4": [("readme.json", record(Sex="M"))],
    }
    assert patients_rows({"Covid4": clinical["Covid4"]}) == []
    (row,) = patients_rows({"Covid3": clinical["Covid3"]})
    assert row == {
        "Patient_ID": "Covid3",
        "filename_covid_status": "True",
        "filename_earliest_date": "2020-12-01",
        "filename_latest_date": "2020-12-01",
        "latest_file": "data_2020-12-01.json",
    }


def test_a_field_named_like_a_fixed_column_does_not_override_it() -> None:
    (row,) = patients_rows({"Covid5": [("status_2020-06-01.json", record(Patient_ID="forged", SwabStatus=0))]})
    assert row["Patient_ID"] == "Covid5"


@pytest.mark.parametrize("order", [1, 2])
def test_patients_csv_is_the_same_bytes_in_any_input_order(warehouse: list[DemoObject], order: int) -> None:
    clinical = clinical_of(warehouse)
    items = list(clinical.items())
    random.Random(order).shuffle(items)
    assert patients_csv(patients_rows(dict(items))) == patients_csv(patients_rows(clinical))


def test_clinical_file_prefixes_match_whatever_their_case_as_nhsx_do() -> None:
    rows = patients_rows({"Covid9": [("Status_2020-01-01.json", b'{"a": 1}'), ("DATA_2020-02-02.json", b'{"a": 2}')]})
    assert rows[0]["filename_covid_status"] == "True" and rows[0]["latest_file"] == "DATA_2020-02-02.json"


def test_the_series_tags_of_a_twin_are_those_of_its_whole_mapping(warehouse: list[DemoObject]) -> None:
    twins = [obj.body for obj in warehouse if "-metadata/" in obj.key]
    assert twins
    for body in twins:
        whole = tags_from_metadata_json(body)
        assert selected_tags_from_metadata_json(body, SERIES_TAGS) == {
            keyword: text for keyword, text in whole.items() if keyword in SERIES_TAGS}
    assert selected_tags_from_metadata_json(b"{]", SERIES_TAGS) == {}
