"""Siemens mosaics: one image whose pixels are the slices of a whole volume, laid out as tiles, so that a
mosaic is planned slice by slice as single-frame images are.

A mosaic says how many slices it holds in NumberOfImagesInMosaic, Siemens's private (0019,xx0A) in the
block whose creator is "SIEMENS MR HEADER" (the twin keeps it; the binary CSA header, which repeats it,
is nulled there). The tiles fill a square grid of ceil(sqrt(n)) a side, row by row, the first slice at
the top left; grid cells past the n-th are blank. ImagePositionPatient of a mosaic is the top-left
corner of the whole grid, as if it were one slice: the first slice's position is that corner moved
along the row and column directions by half of what the grid is larger than a tile, and each next slice
one slice spacing (SpacingBetweenSlices, else SliceThickness) further along the slice normal. This is
how dcm2niix and nibabel place the slices.

The normal's sign is the one thing the twin cannot give: Siemens writes it as SliceNormalVector in the
CSA image header, and a mosaic whose slices run against row x column (some sagittal acquisitions) would
be planned upside down. Planning assumes row x column; ``check_slice_normal`` holds each image to that
when its pixels are read, so such a mosaic fails with a reason instead of giving a flipped volume.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from nccidfs.derived.bids import json_values

with warnings.catch_warnings():  # nibabel.nicom warns on import that its DICOM readers (unused here) are experimental
    warnings.simplefilter("ignore", UserWarning)
    from nibabel.nicom import csareader

MOSAIC_MARK = "MOSAIC"  # in ImageType of a Siemens mosaic
# Siemens's private NumberOfImagesInMosaic: (0019,xx0A) in the block that (0019,00xx) names "SIEMENS MR
# HEADER", which Siemens puts at xx = 10. Another creator's (0019,100A) is something else (GE's, for one).
_IMAGES_IN_MOSAIC = "0019100A"
_SIEMENS_CREATOR = ("00190010", "SIEMENS MR HEADER")
_ROWS, _COLUMNS, _POSITION = "00280010", "00280011", "00200032"  # the tags a tile's metadata replaces
_NORMAL_AGREEMENT = 0.99  # |cos| of the angle between the CSA normal and row x column: the same axis


class NotMosaic(ValueError):
    """An image marked as a mosaic whose tiles cannot be placed from its metadata."""


@dataclass(frozen=True)
class Mosaic:
    """How the slices sit in one mosaic image."""

    count: int  # NumberOfImagesInMosaic: the slices, the first ``count`` tiles
    side: int  # tiles per side of the square grid

    def tile(self, pixels: npt.NDArray[Any], index: int) -> npt.NDArray[Any]:
        """Slice ``index``'s pixels, cut from the whole mosaic's."""
        rows, columns = pixels.shape[0] // self.side, pixels.shape[1] // self.side
        top, left = (index // self.side) * rows, (index % self.side) * columns
        return pixels[top:top + rows, left:left + columns]


def images_in_mosaic(meta: Mapping[str, Any]) -> int | None:
    """Siemens's NumberOfImagesInMosaic, when the twin has it under Siemens's private creator."""
    creator = meta.get(_SIEMENS_CREATOR[0])
    names = creator.get("Value") if isinstance(creator, dict) else None
    if not isinstance(names, list) or not names or str(names[0]).strip() != _SIEMENS_CREATOR[1]:
        return None
    tiles = meta.get(_IMAGES_IN_MOSAIC)
    count = tiles.get("Value") if isinstance(tiles, dict) else None
    return count[0] if isinstance(count, list) and count and isinstance(count[0], int) else None


def mosaic_of(meta: Mapping[str, Any]) -> Mosaic | None:
    """The layout of a mosaic image (None for any other image). Raises NotMosaic for one marked MOSAIC
    without a count, or whose size is not a whole number of tiles."""
    count = images_in_mosaic(meta)
    if count is None:
        if MOSAIC_MARK in json_values(meta, "ImageType"):
            raise NotMosaic("a Siemens mosaic without NumberOfImagesInMosaic: its tiles cannot be placed")
        return None
    if count < 1:
        raise NotMosaic(f"a Siemens mosaic of {count} slices")
    side = math.isqrt(count - 1) + 1  # ceil(sqrt(count))
    rows, columns = (json_values(meta, keyword) for keyword in ("Rows", "Columns"))
    if not (rows and columns and all(isinstance(v, int) and v > 0 and v % side == 0 for v in (*rows, *columns))):
        raise NotMosaic(f"a Siemens mosaic of {count} slices whose {rows}x{columns} pixels are not "
                        f"{side} whole tiles a side")
    return Mosaic(count, side)


def tiles_of(meta: Mapping[str, Any], mosaic: Mosaic) -> list[tuple[int, Mapping[str, Any]]]:
    """(tile number, the slice's metadata) for each slice of a mosaic: the image's metadata with the
    tile's rows, columns and position. Raises NotMosaic when the geometry is missing."""
    try:
        position = np.array([float(v) for v in json_values(meta, "ImagePositionPatient")])
        orientation = np.array([float(v) for v in json_values(meta, "ImageOrientationPatient")])
        row_spacing, column_spacing = (float(v) for v in json_values(meta, "PixelSpacing"))
    except (TypeError, ValueError):
        raise NotMosaic("a Siemens mosaic without a usable position, orientation or pixel spacing") from None
    if position.shape != (3,) or orientation.shape != (6,):
        raise NotMosaic("a Siemens mosaic without a usable position or orientation")
    rows, columns = json_values(meta, "Rows")[0], json_values(meta, "Columns")[0]
    tile_rows, tile_columns = rows // mosaic.side, columns // mosaic.side
    row_cosines, column_cosines = orientation[:3], orientation[3:]
    first = (position + row_cosines * column_spacing * (columns - tile_columns) / 2
             + column_cosines * row_spacing * (rows - tile_rows) / 2)
    step = np.cross(row_cosines, column_cosines) * _slice_spacing(meta)
    tiles: list[tuple[int, Mapping[str, Any]]] = []
    for index in range(mosaic.count):
        tile = dict(meta)
        tile[_ROWS] = {"vr": "US", "Value": [tile_rows]}
        tile[_COLUMNS] = {"vr": "US", "Value": [tile_columns]}
        tile[_POSITION] = {"vr": "DS", "Value": [float(v) for v in first + index * step]}
        tiles.append((index, tile))
    return tiles


def _slice_spacing(meta: Mapping[str, Any]) -> float:
    """SpacingBetweenSlices when positive, else SliceThickness: the step dcm2niix gives a mosaic."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        values = json_values(meta, keyword)
        try:
            spacing = float(values[0]) if values else 0.0
        except (TypeError, ValueError):
            continue
        if math.isfinite(spacing) and spacing > 0:
            return spacing
    raise NotMosaic("a Siemens mosaic with neither SpacingBetweenSlices nor SliceThickness")


def check_slice_normal(dataset: Dataset, orientation: Sequence[float]) -> None:
    """Raise ValueError when the image's CSA header puts its slices against row x column, the direction
    the plan assumed; an image without a CSA slice normal is taken as planned."""
    try:
        header = csareader.get_csa_header(dataset, "image")
        normal = csareader.get_slice_normal(header) if header else None
    except csareader.CSAReadError as error:
        raise ValueError(f"the mosaic's CSA header is unreadable: {error}") from error
    if normal is None:
        return
    planned = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    agreement = float(np.dot(np.asarray(normal, float), planned))
    if agreement < _NORMAL_AGREEMENT:
        raise ValueError(f"the mosaic's CSA SliceNormalVector {list(normal)} is not row x column "
                         f"{planned.round(6).tolist()}: its slices run the other way, so they are not served")
