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

import numpy.typing as npt
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from nccidfs.derived.pixels import NATIVE_BITS, native_values
from nccidfs.derived.plain import plain_header
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
        if _differ(image_numbers, twin_numbers):
            return f"the image's {keyword} is {_shown(image_numbers)}, its metadata twin says {_shown(twin_numbers)}"
    return None


def checked_plain_pixels(dicom: bytes, promised: Expected) -> npt.NDArray[Any] | None:
    """The stored values of a single-frame 16-bit greyscale image in Implicit or Explicit VR Little Endian
    that agrees with its twin, read without pydicom (:mod:`nccidfs.derived.plain`): as ``checked_image``
    and ``read_pixels`` give them, at a fraction of the cost. None for any other image, and for one that
    does not agree: ``checked_image`` then parses it and says why."""
    header = plain_header(dicom)
    if header is None:
        return None
    values = header.values
    if any(not all(math.isfinite(number) for number in image) or _differ(image, twin)
           for image, twin in ((values.get(keyword, ()), twin) for keyword, twin in zip(CHECKED, promised.values,
                                                                                           strict=True))):
        return None
    rows, columns, stored, signed = (values.get(keyword, ()) for keyword in
                                     ("Rows", "Columns", "BitsStored", "PixelRepresentation"))
    if (values.get("BitsAllocated") != (NATIVE_BITS,) or values.get("SamplesPerPixel", (1,)) != (1,)
            or values.get("NumberOfFrames", ()) not in ((), (1,)) or any(len(v) != 1 for v in (rows, columns, stored))
            or signed not in ((0,), (1,)) or not 1 <= stored[0] <= NATIVE_BITS
            or header.pixels_length < rows[0] * columns[0] * 2):
        return None  # as native_pixels: pydicom decodes these
    return native_values(dicom, header.pixels_at, int(rows[0]), int(columns[0]), int(stored[0]), signed == (1,))


def _differ(image: Numbers, twin: Numbers) -> bool:
    return len(image) != len(twin) or not all(math.isclose(a, b, rel_tol=_TOLERANCE, abs_tol=_TOLERANCE)
                                              for a, b in zip(image, twin, strict=True))


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
