"""Tables of the warehouse as CSV: ``series.csv`` with one row per image series, ``patients.csv`` with
one row per patient's clinical record.

``patients.csv`` follows the table NHSX's own ingest builds (``nccid_cleaning.etl.patient_jsons_to_df``
in nhsx/nccid-cleaning), so numbers from the mount agree with work done on their pipeline:

- a patient is COVID-positive when any ``data_<date>.json`` exists for them, else negative;
- the row holds every field of the latest file of that kind (positive: the latest ``data_`` file,
  negative: the latest ``status_`` file), with ``OtherDataSources.SegmentationData`` lifted to the top
  level as their loader does;
- three columns come from the file names of all of the patient's files, under NHSX's names:
  ``filename_covid_status``, ``filename_earliest_date``, ``filename_latest_date``.

Unlike NHSX, the fields are not cleaned (their ``clean_data_df`` does that downstream, on this same
table), the nested ``OtherDataSources`` object is not kept beside its lifted fields, and a field holding
a list or an object is written as compact JSON. Columns are the patient id, the three file-name columns,
the latest file's name, then every field in the order first met, patients taken in id order.

No Parquet twin: pyarrow would add about 40 MB to every install for a file any reader can build from
the CSV in one line.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Row = dict[str, str]

SERIES_COLUMNS = (
    "folder",
    "Modality",
    "Patient_ID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "StudyDate",
    "SeriesDescription",
    "BodyPartExamined",
    "Manufacturer",
    "images",
    "Rows",
    "Columns",
    "SliceThickness",
    "PixelSpacing",
    "bytes",
    "path",
)
# The series tags copied as the metadata twin shows them (nccidfs.dicom.tags_from_metadata_json).
_SERIES_TAGS = (
    "Modality", "StudyDate", "SeriesDescription", "BodyPartExamined", "Manufacturer", "Rows", "Columns",
    "SliceThickness", "PixelSpacing",
)  # fmt: skip
PATIENT_COLUMNS = ("Patient_ID", "filename_covid_status", "filename_earliest_date", "filename_latest_date",
                   "latest_file")  # fmt: skip
# NHSX match the prefix whatever its case (Data_, Status_): so do we.
_CLINICAL_NAME = re.compile(r"(?P<kind>data|status)_(?P<date>\d{4}-\d{2}-\d{2})\.json", re.IGNORECASE)
_SEGMENTATION = ("OtherDataSources", "SegmentationData")


def series_row(
    modality: str,
    patient: str,
    study: str,
    series: str,
    first_meta: Mapping[str, str],
    image_count: int,
    total_bytes: int,
    path: str,
) -> Row:
    """One row of series.csv. ``modality`` is the warehouse folder (ct, mri, xray); ``first_meta`` is
    the display mapping of one image's metadata twin (``tags_from_metadata_json``); ``path`` is where
    the series lies in the mount. The identifiers come from the keys, which are what a user navigates."""
    row = {column: "" for column in SERIES_COLUMNS}
    row.update({tag: first_meta.get(tag, "") for tag in _SERIES_TAGS})
    row.update(
        folder=modality,
        Patient_ID=patient,
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        images=str(image_count),
        bytes=str(total_bytes),
        path=path,
    )
    return row


def series_csv(rows: Iterable[Mapping[str, str]]) -> bytes:
    """series.csv: the rows sorted by path, so the same warehouse always gives the same bytes."""
    return render_csv(SERIES_COLUMNS, sorted(rows, key=lambda row: row["path"]))


def patients_rows(clinical: Mapping[str, Sequence[tuple[str, bytes]]]) -> list[Row]:
    """One row per patient with a clinical file, in patient id order; ``clinical`` maps a patient id
    to its ``(file name, JSON bytes)`` pairs. Files whose names are not ``{data,status}_<date>.json``
    are ignored, and a patient with none is left out."""
    rows = []
    for patient in sorted(clinical):
        row = _patient_row(patient, clinical[patient])
        if row is not None:
            rows.append(row)
    return rows


def patients_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    """patients.csv: the fixed columns, then every clinical field in the order first met."""
    fields: dict[str, None] = dict.fromkeys(PATIENT_COLUMNS)
    for row in rows:
        fields.update(dict.fromkeys(row))
    return render_csv(tuple(fields), rows)


def render_csv(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> bytes:
    """RFC 4180 CSV in UTF-8 with a header line and LF line ends; a missing value is an empty cell."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def _patient_row(patient: str, files: Sequence[tuple[str, bytes]]) -> Row | None:
    """The NHSX row of one patient: cohort and dates from all file names, fields from the latest file."""
    dated = []
    for name, body in files:
        match = _CLINICAL_NAME.fullmatch(name)
        date = _date(match["date"]) if match else None
        if match and date:
            dated.append((date, match["kind"].lower(), name, body))
    if not dated:
        return None
    positive = any(kind == "data" for _, kind, _, _ in dated)
    _, _, latest_name, latest_body = max(entry for entry in dated if (entry[1] == "data") == positive)
    dates = [date for date, _, _, _ in dated]
    row = {
        "Patient_ID": patient,
        "filename_covid_status": str(positive),
        "filename_earliest_date": min(dates).isoformat(),
        "filename_latest_date": max(dates).isoformat(),
        "latest_file": latest_name,
    }
    for field, value in _clinical_fields(latest_body).items():
        row.setdefault(field, _cell(value))  # a field never overrides the columns above
    return row


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:  # a name like data_2020-13-45.json
        return None


def _clinical_fields(body: bytes) -> dict[str, Any]:
    """A clinical record's fields with SegmentationData's lifted to the top; {} if not a JSON object."""
    try:
        record = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(record, dict):
        return {}
    sources = record.pop(_SEGMENTATION[0], None)
    segmentation = sources.get(_SEGMENTATION[1]) if isinstance(sources, dict) else None
    if isinstance(segmentation, dict):
        record.update(segmentation)
    return record


def _cell(value: Any) -> str:
    """A JSON value as CSV text: strings as they are, null as empty, numbers and booleans as JSON
    writes them, lists and objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
