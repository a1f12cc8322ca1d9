"""Decoding an image's pixels for the derived builders, with one error type for every way it fails."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset


def read_pixels(dicom: bytes) -> tuple[Dataset, npt.NDArray[Any]]:
    """The dataset and its stored pixel values as pydicom decodes them. Raises ValueError for bytes
    that are no DICOM image, or whose pixels pydicom cannot decode (a codec it lacks, data cut short),
    so the caller has one exception to turn into an I/O error."""
    try:
        dataset = dcmread(BytesIO(dicom), force=True)
        return dataset, dataset.pixel_array
    except Exception as error:  # pydicom raises many types for missing, short or undecodable pixels
        raise ValueError(f"pixels not decodable: {error}") from error
