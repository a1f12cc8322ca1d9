"""Parquet twins of the published tables, with real types, where pyarrow is installed (``nccidfs[parquet]``).

The CSV is text for every reader; the Parquet file holds the same rows with the types a cohort needs:
counts and sizes as int64, slice thickness and cleaned measurements as float64, dates as date32, yes/no
as bool, ``as_of`` as a UTC timestamp, everything else as UTF-8 strings as the CSV writes them (without
the CSV's formula quote). A cell that does not fit its type is null. Written in batches, so memory holds
one batch, not the table.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from nccidfs.derived.catalog import Row
from nccidfs.derived.clinical import CLEANED_TYPES

BATCH_ROWS = 8192
# Series columns with a type other than text.
SERIES_TYPES = {"images": "integer", "Rows": "integer", "Columns": "integer", "SliceThickness": "number",
                "bytes": "integer", "as_of": "time"}
PATIENT_TYPES = {"filename_covid_status": "flag", "filename_earliest_date": "date", "filename_latest_date": "date",
                 "as_of": "time", **CLEANED_TYPES}


def available() -> bool:
    """Whether pyarrow is installed (the optional extra ``nccidfs[parquet]``)."""
    return importlib.util.find_spec("pyarrow") is not None


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _date(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        return None


def _time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _flag(text: str) -> bool | None:
    return {"True": True, "False": False}.get(text)


_CONVERT: dict[str, Callable[[str], Any]] = {"integer": _integer, "number": _number, "date": _date,
                                              "time": _time, "flag": _flag}


def write_parquet(path: Path, columns: Sequence[str], types: dict[str, str], rows: Iterable[Row]) -> None:
    """Write ``rows`` to ``path`` as Parquet, each column typed as ``types`` says (text otherwise)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = {"integer": pa.int64(), "number": pa.float64(), "date": pa.date32(), "time": pa.timestamp("ms", "UTC"),
             "flag": pa.bool_()}
    schema = pa.schema([(column, arrow.get(types.get(column, ""), pa.string())) for column in columns])
    converters = [_CONVERT.get(types.get(column, ""), str) for column in columns]
    with pq.ParquetWriter(path, schema) as writer:
        for batch in _batches(rows):
            arrays = [pa.array([convert(row[column]) if row.get(column, "") != "" else None for row in batch],
                               type=field.type) for field, column, convert in zip(schema, columns, converters,
                                                                                    strict=True)]
            writer.write_batch(pa.record_batch(arrays, schema=schema))


def _batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, BATCH_ROWS)):
        yield batch

