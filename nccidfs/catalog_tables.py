"""Writing the published tables from the stored rows: ``series.csv`` and ``patients.csv`` streamed from the
catalog database to files (a whole-warehouse table never sits in memory), each row stamped with the time
its patient folder's listing was taken (``as_of``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nccidfs import catalog_parquet
from nccidfs.catalog_db import CatalogDB
from nccidfs.derived.catalog import SERIES_COLUMNS, Row, patient_columns, write_csv
from nccidfs.layout import CLINICAL_FOLDER


def iso_time(when: float) -> str:
    """A time as ISO 8601 in UTC, to the second: ``2026-12-04T15:40:00Z``."""
    return dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stamped(rows: Iterator[tuple[float, Row]]) -> Iterator[Row]:
    last, stamp = 0.0, ""
    for listed, row in rows:
        if listed != last:
            last, stamp = listed, iso_time(listed)
        yield {**row, "as_of": stamp}


def _unstamped(rows: Iterator[tuple[float, Row]]) -> Iterator[Row]:
    return (row for _, row in rows)


def write_tables(db: CatalogDB, state: dict[str, Any], every_table: bool) -> dict[str, Path]:
    """Write the tables of the folders in ``state["folders"]`` to temporary files; returns table name ->
    file, for :meth:`CatalogDB.publish`. Counts go into ``state["counts"]``.

    ``every_table``: a build of every folder the mount shows writes both tables, so a mount that shows no
    ``data/`` (credentials for image folders alone) or no image folder has a complete, empty table rather
    than one that is never built."""
    folders: dict[str, str] = state["folders"]
    images = [folder for folder in folders if folder != CLINICAL_FOLDER]
    written: dict[str, Path] = {}
    counts = {"series": 0, "patients": 0}
    parquet = catalog_parquet.available()
    if images or every_table:
        path = written["series.csv"] = db.temporary("series.csv")
        with open(path, "w", encoding="utf-8", newline="") as out:
            counts["series"] = _count_written(out, SERIES_COLUMNS, _stamped(db.rows(images)))
        if parquet:
            path = written["series.parquet"] = db.temporary("series.parquet")
            catalog_parquet.write_parquet(path, SERIES_COLUMNS, catalog_parquet.SERIES_TYPES,
                                          _stamped(db.rows(images)))
    if CLINICAL_FOLDER in folders or every_table:
        columns = patient_columns(_unstamped(db.rows([CLINICAL_FOLDER])))
        path = written["patients.csv"] = db.temporary("patients.csv")
        with open(path, "w", encoding="utf-8", newline="") as out:
            counts["patients"] = _count_written(out, columns, _stamped(db.rows([CLINICAL_FOLDER])))
        if parquet:
            path = written["patients.parquet"] = db.temporary("patients.parquet")
            catalog_parquet.write_parquet(path, columns, catalog_parquet.PATIENT_TYPES,
                                          _stamped(db.rows([CLINICAL_FOLDER])))
    state["counts"] = counts
    db.measure()
    return written


def _count_written(out: Any, columns: tuple[str, ...], rows: Iterator[Row]) -> int:
    count = 0

    def counted() -> Iterator[Row]:
        nonlocal count
        for row in rows:
            count += 1
            yield row

    write_csv(out, columns, counted())
    return count
