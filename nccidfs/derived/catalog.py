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

The fields are kept as submitted, and NHSX's ``clean_data_df`` rules add cleaned columns beside them
(:mod:`nccidfs.derived.clinical`). Unlike NHSX, the nested ``OtherDataSources`` object is not kept beside
its lifted fields, and a field holding a list or an object is written as compact JSON. Columns are the
patient id, the three file-name columns, the latest file's name, ``as_of``, every raw field in the order
first met, then the cleaned columns; patients are taken in id order.

Every cell is valid UTF-8 (:func:`valid_text`: a lone surrogate, which JSON may hold, becomes U+FFFD),
and no cell of the CSV can be a live spreadsheet formula (:func:`spreadsheet_cell`, the OWASP rule).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from nccidfs.derived.clinical import CLEANED_COLUMNS, clean
from nccidfs.layout import CLINICAL_FILE_NAME, POSITIVE_KIND

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
    "as_of",
)
# The series tags copied as the metadata twin shows them (nccidfs.dicom.tags_from_metadata_json).
SERIES_TAGS = (
    "Modality", "StudyDate", "SeriesDescription", "BodyPartExamined", "Manufacturer", "Rows", "Columns",
    "SliceThickness", "PixelSpacing",
)  # fmt: skip
PATIENT_COLUMNS = ("Patient_ID", "filename_covid_status", "filename_earliest_date", "filename_latest_date",
                   "latest_file", "as_of")  # fmt: skip
# A cell starting with one of these is a formula to a spreadsheet (OWASP, CSV injection); TAB and CR too,
# since some spreadsheets strip them and read what follows.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A number as JSON or DICOM writes it; "-3" or "-1.5e-3" is data, not a formula, and stays as it is.
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SURROGATE = re.compile("[\ud800-\udfff]")
_SEGMENTATION = ("OtherDataSources", "SegmentationData")
_CLEANED = frozenset(CLEANED_COLUMNS)


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
    row.update({tag: valid_text(first_meta.get(tag, "")) for tag in SERIES_TAGS})
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
        row, _ = patient_row(patient, clinical[patient])
        if row is not None:
            rows.append(row)
    return rows


def patient_columns(rows: Iterable[Mapping[str, str]]) -> tuple[str, ...]:
    """patients.csv's columns: the fixed ones, every raw clinical field in the order first met, then the
    cleaned columns that any row has, in :data:`~nccidfs.derived.clinical.CLEANED_COLUMNS` order."""
    fields: dict[str, None] = dict.fromkeys(PATIENT_COLUMNS)
    cleaned: set[str] = set()
    for row in rows:
        cleaned.update(name for name in row if name in _CLEANED)
        fields.update(dict.fromkeys(name for name in row if name not in _CLEANED))
    return (*fields, *(name for name in CLEANED_COLUMNS if name in cleaned))


def patients_csv(rows: Sequence[Mapping[str, str]]) -> bytes:
    """patients.csv: the fixed columns, then every clinical field in the order first met."""
    return render_csv(patient_columns(rows), rows)


def render_csv(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> bytes:
    """RFC 4180 CSV in UTF-8 with a header line and LF line ends; a missing value is an empty cell."""
    out = io.StringIO()
    write_csv(out, columns, rows)
    return out.getvalue().encode("utf-8")


def write_csv(out: IO[str], columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> None:
    """The CSV of :func:`render_csv` written to a text stream, header and cells made safe to open."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([spreadsheet_cell(valid_text(column)) for column in columns])
    for row in rows:
        writer.writerow([spreadsheet_cell(valid_text(row.get(column, ""))) for column in columns])


def spreadsheet_cell(text: str) -> str:
    """``text`` as a cell no spreadsheet takes for a formula: one starting with = + - @ TAB or CR gets a
    single quote before it (OWASP's rule for CSV injection), unless it is a plain number ("-3", "-1.5e-3"),
    which a spreadsheet reads as that number."""
    if text.startswith(FORMULA_STARTS) and _NUMBER.fullmatch(text) is None:
        return "'" + text
    return text


def valid_text(text: str) -> str:
    """``text`` with every lone surrogate (JSON's ``"\\udc80"`` decodes to one, and UTF-8 cannot hold it)
    replaced by U+FFFD, the replacement character."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def listing_fingerprint(keys: Sequence[str], etags: Sequence[str]) -> str:
    """A digest of a listing's keys and their ETags, in the order given: rows made from a listing are
    still right while the listing's fingerprint is the same. Two joins and one hash, whatever the number
    of keys: NUL separates keys (a key holding one, which the mount never shows, could blur the line
    between two), a newline the keys from the ETags."""
    digest = hashlib.sha256("\0".join(keys).encode("utf-8", "surrogateescape"))
    digest.update(b"\n" + "\0".join(etags).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def patient_row(patient: str, files: Sequence[tuple[str, bytes]]) -> tuple[Row | None, str | None]:
    """The NHSX row of one patient (None without a dated clinical file), and what was wrong with its
    latest file if it gave no fields (not JSON, not an object): the row then holds the file-name columns.
    Only the body of :func:`latest_clinical_file` is read."""
    dated = _dated(name for name, _ in files)
    if not dated:
        return None, None
    positive, (_, _, latest_name) = _cohort_and_latest(dated)
    dates = [date for date, _, _ in dated]
    row = {
        "Patient_ID": valid_text(patient),
        "filename_covid_status": str(positive),
        "filename_earliest_date": min(dates).isoformat(),
        "filename_latest_date": max(dates).isoformat(),
        "latest_file": valid_text(latest_name),
    }
    try:
        fields = _clinical_fields(dict(files)[latest_name])
    except ValueError as error:
        return row, f"{latest_name}: {error}"
    raw = {valid_text(name): valid_text(_cell(value)) for name, value in fields.items()}
    for name, value in raw.items():
        row.setdefault(name, value)  # never overrides the columns above
    for name, value in clean(raw).items():
        row.setdefault(name, value)
    return row, None


def latest_clinical_file(names: Iterable[str]) -> str | None:
    """The file whose fields make the patient's row: the latest of the cohort's kind (positive: ``data_``,
    negative: ``status_``); None when no name is ``{data,status}_<date>.json``."""
    dated = _dated(names)
    return _cohort_and_latest(dated)[1][2] if dated else None


def _dated(names: Iterable[str]) -> list[tuple[dt.date, str, str]]:
    """(date, kind, name) of every clinical file named by a valid date."""
    dated = []
    for name in names:
        match = CLINICAL_FILE_NAME.fullmatch(name)
        date = _date(match["date"]) if match else None
        if match and date:
            dated.append((date, match["kind"].lower(), name))
    return dated


def _cohort_and_latest(dated: list[tuple[dt.date, str, str]]) -> tuple[bool, tuple[dt.date, str, str]]:
    """NHSX's rule: positive when any ``data_`` file exists; the latest file of the cohort's kind wins."""
    positive = any(kind == POSITIVE_KIND for _, kind, _ in dated)
    return positive, max(entry for entry in dated if (entry[1] == POSITIVE_KIND) == positive)


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:  # a name like data_2020-13-45.json
        return None


def _clinical_fields(body: bytes) -> dict[str, Any]:
    """A clinical record's fields with SegmentationData's lifted to the top; ValueError if it is not a
    JSON object."""
    try:
        record = json.loads(body)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as error:  # bad UTF-8 or bad JSON
        raise ValueError(f"not JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
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
