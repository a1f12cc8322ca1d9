"""An X-ray (DX, CR) as an 8-bit greyscale PNG, ready to look at: the modality LUT, then the VOI LUT or
window, applied as DICOM PS3.3 C.11 says (through pydicom's ``apply_modality_lut`` and
``apply_voi_lut``), and MONOCHROME1 inverted so that bright is dense everywhere.

Why the PNG is not compressed: the mount shows a file's size at stat time, before the image is
downloaded, and a read must return exactly that many bytes. A deflate-compressed PNG's size depends on
the pixels; one made of deflate's stored blocks depends on Rows and Columns alone, which the metadata
twin gives. So ``png_size(rows, columns)`` is known at listing time and ``build_png`` writes the file
block by block to that size. zlib's own level 0 is not used because how it cuts stored blocks is its
implementation's choice (zlib and zlib-ng differ); writing the blocks here fixes the layout. The cost is
the size: one byte per pixel plus one per row, about what the 16-bit DICOM takes halved.

Grey levels: a VOI LUT's n-bit output keeps its top 8 bits; a window's output range (pydicom's, the
modality output range) is stretched onto 0 .. 255, and so is an image's own minimum to maximum when it
has no VOI at all; values are then floored. With a VOI LUT or a window this is how dcmtk's
``dcmj2pnm`` renders a MONOCHROME2 image, level for level, as the tests check. MONOCHROME1 levels are
then mirrored (255 - level); dcmtk inverts before it quantises, so the two may differ by one level.
When an image has both a VOI LUT and a window, the LUT is used, as pydicom prefers it: for X-ray it is
the manufacturer's display curve, while the window is often a coarse summary of it.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut, apply_windowing

from nccidfs.derived.pixels import read_pixels

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_OVERHEAD = 12  # length, type and CRC around each chunk's data
_IHDR_BYTES = 13
_ZLIB_OVERHEAD = 2 + 4  # zlib header, Adler-32 trailer
_STORED_BLOCK_MAX = 65535  # deflate's stored block holds at most this many bytes after its 5-byte head
_STORED_BLOCK_HEAD = 5
_ZLIB_HEADER = b"\x78\x01"  # deflate with a 32 KiB window, no dictionary, "fastest" level; a multiple of 31

_LEVEL_EPSILON = 1e-6

Grey = npt.NDArray[np.uint8]


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
    """Stored values -> 8-bit display values: modality LUT, VOI LUT or window, polarity."""
    values = apply_modality_lut(pixels, dataset)
    if _has_voi_lut(dataset) and values.dtype.kind == "f":
        values = np.rint(values).astype(np.int64)  # a LUT is indexed by integers
    low, factor = _to_grey(values, dataset)
    scaled = (apply_voi_lut(values, dataset).astype(np.float64) - low) * factor
    # A level the formula reaches exactly must not drop one below it through float rounding.
    grey: Grey = np.clip(np.floor(scaled + _LEVEL_EPSILON), 0, 255).astype(np.uint8)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 255 - grey  # levels mirrored exactly: the same bins as MONOCHROME2, dark for bright
    return grey


def _has_voi_lut(dataset: Dataset) -> bool:
    """Whether apply_voi_lut will use a VOI LUT: a first item with both a descriptor and data."""
    sequence = dataset.get("VOILUTSequence")
    return bool(sequence) and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None


def _to_grey(values: npt.NDArray[Any], dataset: Dataset) -> tuple[float, float]:
    """(offset, factor) that take the VOI step's output onto 0 .. 255 (before flooring).

    A LUT's n-bit output keeps its top 8 bits, the bit-depth reduction dcmtk makes. A window's range
    (what it maps everything below and above itself to) and, with no VOI at all, the image's own
    minimum and maximum are stretched linearly onto 0 .. 255.
    """
    if _has_voi_lut(dataset):
        return 0.0, 256.0 / 2 ** int(dataset.VOILUTSequence[0].LUTDescriptor[2])
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        with np.errstate(over="ignore"):  # SIGMOID's exp overflows to inf, giving its lower end exactly
            low, high = (float(end) for end in apply_windowing(np.array([-1e300, 1e300]), dataset))
    else:
        low, high = float(values.min()), float(values.max())
    return low, (255.0 / (high - low) if high > low else 0.0)


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
