"""Whether an image is the image its metadata twin describes, checked before its pixels are decoded.

A derived file is sized and planned from the twins, but its voxels, rescale and geometry must come from
the images. So each image is held to what its twin promised: the pixel format (rows, columns, frames,
samples, bits), the rescale, and the geometry (spacing, orientation, position). Any difference is a
ValueError naming the element and both values, and the derived file is never made of it.

The check also bounds the work of a hostile image: a deflated dataset is inflated at most as far as the
twin's pixels and :data:`HEADER_SLACK` take it, and an image that agrees with its twin decodes to at most
:attr:`Expected.pixel_bytes`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from nccidfs.dicom import undeflate

# What an image must share with its twin; an element absent from both agrees.
CHECKED = (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "RescaleSlope", "RescaleIntercept", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
)  # fmt: skip
# Room for everything in a dataset besides its pixels (a header is tens of KiB; private blobs can be MiBs).
HEADER_SLACK = 16 * 1024 * 1024
# The twin stores decimal strings as JSON numbers; the image keeps the strings. Both round-trip a float.
_TOLERANCE = 1e-6

Numbers = tuple[float, ...]


@dataclass(frozen=True)
class Expected:
    """What a twin promises about its image: the checked elements' numbers, and its pixel bytes."""

    values: tuple[Numbers, ...]  # one per CHECKED keyword, () where the twin has none

    def _first(self, keyword: str, default: int) -> int:
        numbers = self.values[CHECKED.index(keyword)]
        return max(0, int(numbers[0])) if numbers else default

    @property
    def pixels(self) -> int:
        """Rows x Columns x frames x samples: the values the image decodes to."""
        return (self._first("Rows", 0) * self._first("Columns", 0) * self._first("NumberOfFrames", 1)
                * self._first("SamplesPerPixel", 1))

    @property
    def pixel_bytes(self) -> int:
        """The pixels' bytes as stored uncompressed."""
        return self.pixels * -(-self._first("BitsAllocated", 16) // 8)


def expected(twin: Mapping[str, Any]) -> Expected:
    """The promises of a parsed twin (DICOM JSON). Raises ValueError for a checked element that is not numbers."""
    values = []
    for keyword in CHECKED:
        attribute = twin.get(f"{tag_for_keyword(keyword):08X}")
        raw = attribute.get("Value") if isinstance(attribute, dict) else None
        values.append(_numbers(raw if isinstance(raw, list) else [], keyword, "its metadata twin"))
    return Expected(tuple(values))


def checked(dicom: bytes, promised: Expected) -> bytes:
    """The image's bytes, inflated if deflated, once it is shown to be the image its twin describes.
    Raises ValueError with the reason otherwise."""
    return checked_image(dicom, promised)[0]


def checked_image(dicom: bytes, promised: Expected) -> tuple[bytes, Dataset]:
    """As ``checked``, with the whole dataset it parsed (pixels still encoded), so that the pixels are
    decoded without parsing the image a second time."""
    limit = promised.pixel_bytes + HEADER_SLACK
    try:
        plain, whole = undeflate(dicom, limit)
    except ValueError as error:
        raise ValueError(f"the image does not inflate: {error}") from None
    if not whole:
        raise ValueError(f"the image inflates past {limit} bytes, more than the {promised.pixel_bytes} pixel "
                         "bytes its metadata twin gives")
    try:
        dataset = dcmread(BytesIO(plain), force=True)  # within the bound above: plain is inflated that far
    except Exception as error:  # force=True on arbitrary bytes: pydicom fails with many exception types
        raise ValueError(f"the image has no readable header: {error}") from None
    reason = disagreement(dataset, promised)
    if reason is not None:
        raise ValueError(reason)
    return plain, dataset


def disagreement(header: Dataset, promised: Expected) -> str | None:
    """The first checked element where the image's header and its twin differ, in words; None if none."""
    for keyword, twin_numbers in zip(CHECKED, promised.values, strict=True):
        try:
            raw = header.get(keyword)
        except Exception:  # a corrupt value: pydicom converts on access and fails with many types
            return f"the image's {keyword} is unreadable"
        items = [] if raw is None or raw == "" else list(raw) if isinstance(raw, MultiValue | list) else [raw]
        try:
            image_numbers = _numbers(items, keyword, "the image")
        except ValueError as error:
            return str(error)
        if len(image_numbers) != len(twin_numbers) or not all(
                math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)
                for a, b in zip(image_numbers, twin_numbers, strict=True)):
            return f"the image's {keyword} is {_shown(image_numbers)}, its metadata twin says {_shown(twin_numbers)}"
    return None


def _numbers(raw: Any, keyword: str, where: str) -> Numbers:
    try:
        numbers = tuple(float(item) for item in raw)
    except (TypeError, ValueError):
        raise ValueError(f"{keyword} in {where} is not numbers") from None
    if not all(math.isfinite(number) for number in numbers):
        raise ValueError(f"{keyword} in {where} is not finite")
    return numbers


def _shown(numbers: Numbers) -> str:
    return "absent" if not numbers else "\\".join(f"{number:g}" for number in numbers)
