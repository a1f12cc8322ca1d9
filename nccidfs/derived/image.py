"""An X-ray (DX, CR) as an 8-bit greyscale PNG, ready to look at: the modality LUT, then the VOI LUT or
window, applied as DICOM PS3.3 C.11 says (through pydicom's ``apply_modality_lut``, ``apply_voi_lut``
and ``apply_windowing``), and MONOCHROME1 inverted so that bright is dense everywhere.

Why the PNG is not compressed: the mount shows a file's size at stat time, before the image is
downloaded, and a read must return exactly that many bytes. A deflate-compressed PNG's size depends on
the pixels; one made of deflate's stored blocks depends on Rows and Columns alone, which the metadata
twin gives. So ``png_size(rows, columns)`` is known at listing time and ``build_png`` writes the file
block by block to that size. zlib's own level 0 is not used because how it cuts stored blocks is its
implementation's choice (zlib and zlib-ng differ); writing the blocks here fixes the layout. The cost is
the size: one byte per pixel plus one per row, about what the 16-bit DICOM takes halved.

Grey levels, as dcmtk's ``dcmj2pnm`` renders them, level for level and with no bias either way (the
tests check each case against it): MONOCHROME2 runs from black to white, MONOCHROME1 from white to
black. A VOI LUT's n-bit output is scaled by ``(last - first + 1) / 2**n`` from the first level (for
MONOCHROME2 its top 8 bits; for MONOCHROME1 254/2**n down from white, dcmtk's scaling); a LINEAR window
follows PS3.3 C.11.2.1.2.1, computed in dcmtk's order; a SIGMOID window's output range is stretched
onto the levels; an image with no VOI at all gets the window spanning its own minimum to maximum
(``dcmj2pnm +Wm``). Levels are then truncated.
When an image has both a VOI LUT and a window, the LUT is used, as pydicom prefers it: for X-ray it is
the manufacturer's display curve, while the window is often a coarse summary of it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing

from nccidfs.derived.pixels import read_pixels

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_OVERHEAD = 12  # length, type and CRC around each chunk's data
_IHDR_BYTES = 13
_ZLIB_OVERHEAD = 2 + 4  # zlib header, Adler-32 trailer
_STORED_BLOCK_MAX = 65535  # deflate's stored block holds at most this many bytes after its 5-byte head
_STORED_BLOCK_HEAD = 5
_ZLIB_HEADER = b"\x78\x01"  # deflate with a 32 KiB window, no dictionary, "fastest" level; a multiple of 31

_BLACK, _WHITE = 0, 255

Grey = npt.NDArray[np.uint8]
# Rows rendered at a time: each step of the display makes float64 arrays the size of its input (a whole
# 3400 x 3400 image at once peaked at about 37 bytes a pixel).
BAND_ROWS = 256
Levels = npt.NDArray[np.float64]


def png_size(rows: int, columns: int) -> int:
    """The exact size of the PNG ``build_png`` makes of an image of this many rows and columns."""
    raw = rows * (columns + 1)  # each row opens with its filter type byte
    blocks = max(1, -(-raw // _STORED_BLOCK_MAX))
    idat = _ZLIB_OVERHEAD + raw + blocks * _STORED_BLOCK_HEAD
    return len(_SIGNATURE) + (_CHUNK_OVERHEAD + _IHDR_BYTES) + (_CHUNK_OVERHEAD + idat) + _CHUNK_OVERHEAD


def build_png(dicom: bytes) -> bytes:
    """The display PNG of a single-frame greyscale DICOM image (the first frame of a multi-frame one).
    Raises ValueError for an image with no greyscale pixels pydicom can decode."""
    dataset, pixels = read_pixels(dicom)
    if dataset.get("SamplesPerPixel", 1) != 1:
        raise ValueError(f"{dataset.get('PhotometricInterpretation')} image: only greyscale is shown")
    if pixels.ndim == 3:
        pixels = pixels[0]
    grey = display_grey(pixels, dataset)
    data = encode_png(grey)
    if len(data) != png_size(*grey.shape):  # a broken invariant of encode_png, not bad input
        raise AssertionError(f"PNG of {len(data)} bytes, expected {png_size(*grey.shape)}")
    return data


def display_grey(pixels: npt.NDArray[Any], dataset: Dataset) -> Grey:
    """Stored values -> 8-bit display values: modality LUT, VOI LUT or window, polarity. Each value is
    computed on its own (dcmtk's arithmetic), a band of :data:`BAND_ROWS` rows at a time, so the float
    arrays of each step are the band's size, not the image's."""
    bands = [slice(top, top + BAND_ROWS) for top in range(0, pixels.shape[0], BAND_ROWS)]
    render = _renderer(dataset, pixels, bands)
    grey: Grey = np.empty(pixels.shape, dtype=np.uint8)
    for band in bands:
        levels = render(apply_modality_lut(pixels[band], dataset))
        grey[band] = np.clip(np.trunc(levels), _BLACK, _WHITE).astype(np.uint8)
    return grey


def _renderer(dataset: Dataset, pixels: npt.NDArray[Any],
              bands: list[slice]) -> Callable[[npt.NDArray[Any]], Levels]:
    """Modality values -> display levels, by the image's VOI LUT, window or, with neither, the window
    that spans the image's own values (dcmj2pnm's +Wm)."""
    # MONOCHROME1 is drawn with its output range reversed: the lowest VOI output is white.
    first, last = (_WHITE, _BLACK) if dataset.get("PhotometricInterpretation") == "MONOCHROME1" else (_BLACK, _WHITE)
    if _has_voi_lut(dataset):
        return lambda values: _through_lut(np.rint(values).astype(np.int64), dataset, first, last)
    if "WindowCenter" in dataset and "WindowWidth" in dataset and _window_function(dataset) == "SIGMOID":
        return lambda values: _through_sigmoid(values, dataset, first, last)
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        center, width = (float(_first(dataset[keyword].value)) for keyword in ("WindowCenter", "WindowWidth"))
    else:
        extremes = [(float(values.min()), float(values.max()))
                    for values in (apply_modality_lut(pixels[band], dataset) for band in bands)]
        low, high = min(low for low, _ in extremes), max(high for _, high in extremes)
        center, width = (low + high + 1) / 2, high - low + 1
    return lambda values: _through_window(values.astype(np.float64), center, width, first, last)


def _first(value: Any) -> Any:
    """The first of a multi-valued element (WindowCenter may hold several windows), or the value."""
    return value[0] if isinstance(value, MultiValue | list | tuple) else value


def _window_function(dataset: Dataset) -> str:
    return str(dataset.get("VOILUTFunction", "LINEAR")).strip().upper()


def _has_voi_lut(dataset: Dataset) -> bool:
    """Whether apply_voi_lut will use a VOI LUT: a first item with both a descriptor and data."""
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None


def _through_lut(values: npt.NDArray[Any], dataset: Dataset, first: int, last: int) -> Levels:
    """A VOI LUT's n-bit output scaled onto the 256 levels: ``first + output * (last - first + 1) / 2**n``,
    dcmtk's scaling (for MONOCHROME2 the output's top 8 bits)."""
    bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
    output = apply_voi_lut(values, dataset).astype(np.float64)
    levels: Levels = first + output * ((last - first + 1) / 2**bits)
    return levels


def _through_window(values: Levels, center: float, width: float, first: int, last: int) -> Levels:
    """The LINEAR window of PS3.3 C.11.2.1.2.1 onto ``first .. last``, computed in dcmtk's order
    (``offset + value * gradient``) so that values on a level's edge fall on the same side."""
    width_1 = width - 1
    left, right = center - 0.5 - width_1 / 2, center - 0.5 + width_1 / 2
    if width_1 <= 0:
        return np.where(values <= left, float(first), float(last))
    span = float(last - first)
    offset = last - ((center - 0.5) / width_1 + 0.5) * span
    inside = offset + values * (span / width_1)
    levels: Levels = np.where(values <= left, float(first), np.where(values > right, float(last), inside))
    return levels


def _through_sigmoid(values: npt.NDArray[Any], dataset: Dataset, first: int, last: int) -> Levels:
    """The SIGMOID window (through pydicom), its output range stretched onto ``first .. last``."""
    with np.errstate(over="ignore"):  # exp overflows to inf, giving the lower end exactly
        low, high = (float(end) for end in apply_windowing(np.array([-1e300, 1e300]), dataset))
        output = apply_windowing(values, dataset).astype(np.float64)
    scale = (last - first) / (high - low) if high > low else 0.0
    levels: Levels = first + (output - low) * scale
    return levels


def encode_png(grey: Grey) -> bytes:
    """An 8-bit greyscale PNG of ``grey`` (rows x columns), every row unfiltered, in stored blocks."""
    rows, columns = grey.shape
    raw = np.hstack([np.zeros((rows, 1), dtype=np.uint8), grey]).tobytes()  # filter type 0 per row
    header = struct.pack(">IIBBBBB", columns, rows, 8, 0, 0, 0, 0)  # 8-bit greyscale, not interlaced
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", _stored_zlib(raw)) + _chunk(b"IEND", b"")


def _stored_zlib(raw: bytes) -> bytes:
    """A zlib stream holding ``raw`` in stored (uncompressed) deflate blocks of the largest size."""
    parts = [_ZLIB_HEADER]
    starts = range(0, max(len(raw), 1), _STORED_BLOCK_MAX)
    for start in starts:
        block = raw[start : start + _STORED_BLOCK_MAX]
        final = 1 if start == starts[-1] else 0
        parts.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF))
        parts.append(block)
    parts.append(struct.pack(">I", zlib.adler32(raw)))
    return b"".join(parts)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
