"""Decoding an image's pixels for the derived builders, with one error type for every way it fails.

Decoders: pydicom's pixel-data handlers, with the codecs made for DICOM that the base install brings:
pylibjpeg with its libjpeg plugin (JPEG baseline, extended and lossless, process 14 and SV1) and its
openjpeg plugin (JPEG 2000 and HTJ2K, lossless and lossy), pylibjpeg-rle (RLE, faster than pydicom's
own) and pyjpegls (CharLS: JPEG-LS lossless and near-lossless). Uncompressed syntaxes, big endian and
deflate are pydicom's own. ``undecodable_reason`` tells, from a metadata twin alone, whether the image
can be decoded here, so that a view is never listed when every read of it would fail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import iter_pixels
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

_TRANSFER_SYNTAX = "00020010"  # (0002,0010) TransferSyntaxUID: in a twin only when it kept the file meta
_NATIVE_SYNTAXES = (ImplicitVRLittleEndian, ExplicitVRLittleEndian)
NATIVE_BITS = 16


def read_pixels(dicom: bytes, parsed: Dataset | None = None) -> tuple[Dataset, npt.NDArray[Any]]:
    """The dataset and its stored pixel values as pydicom decodes them (``parsed``: the dataset of these
    bytes, when the caller has it). Raises ValueError for bytes that are no DICOM image, or whose pixels
    pydicom cannot decode (a codec it lacks, data cut short), so the caller has one exception to turn
    into an I/O error."""
    try:
        dataset = parsed if parsed is not None else dcmread(BytesIO(dicom), force=True)
        native = native_pixels(dataset)
        return dataset, native if native is not None else dataset.pixel_array
    except Exception as error:  # pydicom raises many types for missing, short or undecodable pixels
        raise ValueError(f"pixels not decodable: {error}") from error


def native_pixels(dataset: Dataset) -> npt.NDArray[Any] | None:
    """The pixels of a single-frame 16-bit greyscale image stored uncompressed in little endian (most CT
    and MR slices), read as pydicom reads them (the bits above BitsStored cleared, or copies of the sign
    bit when signed) but without its decoder's setup for each image, which costs three times the parse
    of a CT slice. None for any other image: pydicom decodes those."""
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    frames = dataset.get("NumberOfFrames")
    if (syntax not in _NATIVE_SYNTAXES or dataset.get("BitsAllocated") != NATIVE_BITS
            or dataset.get("SamplesPerPixel", 1) != 1 or frames not in (None, "", 1, "1")):
        return None
    rows, columns, stored, signed = (dataset.get(keyword) for keyword in
                                     ("Rows", "Columns", "BitsStored", "PixelRepresentation"))
    data = dataset.get("PixelData")
    if (not all(isinstance(value, int) for value in (rows, columns, stored)) or signed not in (0, 1)
            or not 1 <= stored <= NATIVE_BITS or not isinstance(data, bytes) or len(data) < rows * columns * 2):
        return None
    return native_values(data, 0, rows, columns, stored, signed == 1)


def native_values(buffer: bytes, offset: int, rows: int, columns: int, stored: int,
                  signed: bool) -> npt.NDArray[Any]:
    """The stored values of 16-bit pixels at ``offset`` in ``buffer``: the bits above ``stored`` cleared,
    or copies of the sign bit when ``signed``, as pydicom's decoder gives them."""
    raw = np.frombuffer(buffer, "<u2", count=rows * columns, offset=offset).reshape(rows, columns)
    unused = NATIVE_BITS - stored
    if not unused:  # every bit stored: the values are the bytes as they are, read in place (no copy)
        whole: npt.NDArray[Any] = raw.view("<i2") if signed else raw
        return whole
    if not signed:
        unsigned: npt.NDArray[np.uint16] = raw & np.uint16((1 << stored) - 1)
        return unsigned
    shifted: npt.NDArray[np.int16] = (raw << np.uint16(unused)).view("<i2") >> unused  # back arithmetically:
    return shifted  # the sign bit copied into the bits above BitsStored


def read_frames(dicom: bytes, frames: Sequence[int]) -> list[npt.NDArray[Any]]:
    """The stored values of some frames of a multi-frame image, in the order asked, the image parsed once
    and only those frames decoded (an enhanced image may hold hundreds). Raises ValueError as
    ``read_pixels`` does, and for a frame past the last."""
    wanted = sorted(set(frames))
    try:
        decoded = dict(zip(wanted, iter_pixels(BytesIO(dicom), indices=wanted), strict=True))
    except Exception as error:  # as above; zip's ValueError when the image has fewer frames
        raise ValueError(f"frames {wanted[0]}-{wanted[-1]} not decodable: {error}") from error
    return [decoded[frame] for frame in frames]


@cache
def is_decodable(transfer_syntax: str) -> bool:
    """Whether this install has a decoder for the transfer syntax (a UID)."""
    try:
        return bool(get_decoder(UID(transfer_syntax)).is_available)
    except (NotImplementedError, ValueError):  # no decoder at all for this UID
        return False


def undecodable_reason(twin: Mapping[str, Any]) -> str | None:
    """Why the image of this metadata twin cannot be decoded here, or None when it can (or when the
    twin does not say its transfer syntax: the warehouse's twins leave the file meta out)."""
    attribute = twin.get(_TRANSFER_SYNTAX)
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    if not isinstance(values, list) or not values or not isinstance(values[0], str):
        return None
    uid = UID(values[0])
    if is_decodable(uid):
        return None
    name = uid.name if uid.is_valid and uid.name != str(uid) else "an unknown transfer syntax"
    return f"pixels in {name} ({uid}), which no installed decoder reads"
