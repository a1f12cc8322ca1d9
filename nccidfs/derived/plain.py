"""The header of a plain image read by hand: a Part 10 file in Implicit or Explicit VR Little Endian, whose
elements are walked to Pixel Data for the few the agreement check needs (:data:`~nccidfs.derived.agreement.CHECKED`
and the pixel format), without building a pydicom dataset.

Why: most CT and MR slices are stored so, and for them pydicom's parse cost more than the rest of making
their voxels. The walk is strict: anything it does not read exactly as pydicom would (another transfer
syntax, no preamble, tags out of order or repeated, a VR or value it does not expect, a value that is not
a plain number, no Pixel Data, an element cut short, a walk too deep) gives None, and the caller parses
the image with pydicom instead. Values are never guessed.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

# Part 10: a 128-byte preamble, "DICM", the file meta group (0002) in Explicit VR Little Endian.
_PREAMBLE = 128
_MAGIC = b"DICM"
_META_GROUP = 0x0002
_TRANSFER_SYNTAX = 0x00020010
_PIXEL_DATA = 0x7FE00010
# Explicit VRs whose length takes 4 bytes after 2 reserved ones (PS3.5 7.1.2); the others take 2.
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                              b"UV"})
_SHORT_LENGTH_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                               b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_UNDEFINED = 0xFFFFFFFF
# An element's start: its tag, then its length (Implicit VR) or its VR and a 2-byte length (Explicit VR),
# which a VR of 4-byte length leaves 0 and follows with the length.
_IMPLICIT = struct.Struct("<HHI")
_EXPLICIT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")
# Items and delimiters inside a sequence of undefined length (PS3.5 7.5): tag, then a 4-byte length.
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# Sequences nested deeper than this are left to pydicom.
MAX_DEPTH = 8
_SYNTAXES: dict[str, bool] = {ImplicitVRLittleEndian: True, ExplicitVRLittleEndian: False}  # UID -> implicit VR
# The elements read, by tag: keyword and VR. Unsigned shorts are the pixel format, decimal and integer
# strings the rest.
_WANTED: dict[int, tuple[str, bytes]] = {
    tag_for_keyword(keyword) or 0: (keyword, vr) for keyword, vr in (
        ("SamplesPerPixel", b"US"), ("NumberOfFrames", b"IS"), ("Rows", b"US"), ("Columns", b"US"),
        ("PixelSpacing", b"DS"), ("BitsAllocated", b"US"), ("BitsStored", b"US"), ("PixelRepresentation", b"US"),
        ("RescaleIntercept", b"DS"), ("RescaleSlope", b"DS"), ("ImagePositionPatient", b"DS"),
        ("ImageOrientationPatient", b"DS"),
    )
}  # fmt: skip
_PIXEL_VRS = (b"OW", b"OB")
# A number as a DS or IS holds it (PS3.5 6.2), once the padding is stripped.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_PADDING = b" \0"

Numbers = tuple[float, ...]


@dataclass(frozen=True)
class PlainHeader:
    """The wanted elements of a plain image (keyword -> numbers, () for an empty value; an absent element
    is not in ``values``) and where its Pixel Data's bytes lie."""

    values: Mapping[str, Numbers]
    pixels_at: int
    pixels_length: int


class _NotPlain(Exception):
    """Raised inside the walk for anything it leaves to pydicom."""


def plain_header(dicom: bytes) -> PlainHeader | None:
    """The wanted elements and Pixel Data's place, or None when the image is not one this walk reads
    exactly (then pydicom must parse it)."""
    try:
        at, implicit = _dataset_start(dicom)
        return _walk(dicom, at, implicit)
    except (_NotPlain, struct.error):
        return None


def _dataset_start(dicom: bytes) -> tuple[int, bool]:
    """Where the dataset starts after the file meta group, and whether it is in Implicit VR."""
    if dicom[_PREAMBLE:_PREAMBLE + len(_MAGIC)] != _MAGIC:
        raise _NotPlain
    at, syntax = _PREAMBLE + len(_MAGIC), None
    while True:
        group, element = struct.unpack_from("<HH", dicom, at)
        if group != _META_GROUP:
            break
        at, start, length = _explicit_element(dicom, at)
        if length == _UNDEFINED:
            raise _NotPlain
        if (group << 16 | element) == _TRANSFER_SYNTAX:
            syntax = dicom[start:start + length].rstrip(_PADDING).decode("ascii", "replace")
    if syntax not in _SYNTAXES:
        raise _NotPlain
    implicit = _SYNTAXES[syntax]
    if implicit and dicom[at + 4:at + 6] in _LONG_LENGTH_VRS | _SHORT_LENGTH_VRS:
        raise _NotPlain  # explicit VRs in an implicit file: pydicom reads it its own way
    return at, implicit


def _explicit_element(dicom: bytes, at: int) -> tuple[int, int, int]:
    """(end, value start, length) of an Explicit VR element; the end is undefined with the length."""
    vr = dicom[at + 4:at + 6]
    if vr in _LONG_LENGTH_VRS:
        (length,) = struct.unpack_from("<I", dicom, at + 8)
        start = at + 12
    elif vr in _SHORT_LENGTH_VRS:
        (length,) = struct.unpack_from("<H", dicom, at + 6)
        start = at + 8
    else:
        raise _NotPlain
    return start + (0 if length == _UNDEFINED else length), start, length


def _walk(dicom: bytes, at: int, implicit: bool) -> PlainHeader:
    """The dataset's elements from ``at`` to the end of the file: every one well formed, in order."""
    values: dict[str, Numbers] = {}
    pixels: tuple[int, int] | None = None
    previous, size = -1, len(dicom)
    while at < size:
        if implicit:
            group, element, length = _IMPLICIT.unpack_from(dicom, at)
            vr, start = b"", at + 8
        else:
            group, element, vr, length = _EXPLICIT.unpack_from(dicom, at)
            if vr in _LONG_LENGTH_VRS:
                (length,) = _LONG_LENGTH.unpack_from(dicom, at + 8)
                start = at + 12
            elif vr in _SHORT_LENGTH_VRS:
                start = at + 8
            else:
                raise _NotPlain
        tag = group << 16 | element
        if tag <= previous:
            raise _NotPlain  # out of order or repeated: pydicom's dataset, not this walk, says what it holds
        previous = tag
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA:
                raise _NotPlain  # encapsulated
            end = _skip_sequence(dicom, start, implicit or vr == b"UN", 1)
        else:
            end = start + length
            if end > size:
                raise _NotPlain
        if tag in _WANTED:
            keyword, wanted_vr = _WANTED[tag]
            if vr and vr != wanted_vr:
                raise _NotPlain
            values[keyword] = _numbers(dicom[start:end], wanted_vr)
        elif tag == _PIXEL_DATA:
            if vr and vr not in _PIXEL_VRS:
                raise _NotPlain
            pixels = (start, length)
        at = end
    if pixels is None:
        raise _NotPlain
    return PlainHeader(values, *pixels)


def _skip_sequence(dicom: bytes, at: int, implicit: bool, depth: int) -> int:
    """The end of a sequence of undefined length whose items start at ``at``."""
    if depth > MAX_DEPTH:
        raise _NotPlain
    while True:
        tag, length = _tag_and_length(dicom, at)
        at += 8
        if tag == _SEQUENCE_END:
            return at
        if tag != _ITEM:
            raise _NotPlain
        at = _skip_item(dicom, at, implicit, depth) if length == _UNDEFINED else at + length
        if at > len(dicom):
            raise _NotPlain


def _skip_item(dicom: bytes, at: int, implicit: bool, depth: int) -> int:
    """The end of an item of undefined length whose elements start at ``at``."""
    while True:
        tag, length = _tag_and_length(dicom, at)
        if tag == _ITEM_END:
            return at + 8
        if implicit:
            start = at + 8
            end = start + length
        else:
            end, start, length = _explicit_element(dicom, at)
        if length == _UNDEFINED:
            end = _skip_sequence(dicom, start, implicit or dicom[at + 4:at + 6] == b"UN", depth + 1)
        if end > len(dicom):
            raise _NotPlain
        at = end


def _tag_and_length(dicom: bytes, at: int) -> tuple[int, int]:
    group, element, length = struct.unpack_from("<HHI", dicom, at)
    return group << 16 | element, length


def _numbers(value: bytes, vr: bytes) -> Numbers:
    """An element's numbers as pydicom gives them: unsigned shorts, or the parts of a decimal or integer
    string between backslashes."""
    if vr == b"US":
        if len(value) % 2:
            raise _NotPlain
        return tuple(float(number) for number in struct.unpack(f"<{len(value) // 2}H", value))
    try:
        text = value.rstrip(_PADDING).decode("ascii")
    except UnicodeDecodeError:
        raise _NotPlain from None
    if not text:
        return ()
    pattern = _DECIMAL if vr == b"DS" else _INTEGER
    parts = [part.strip(" ") for part in text.split("\\")]
    if not all(pattern.fullmatch(part) for part in parts):
        raise _NotPlain
    return tuple(float(part) for part in parts)
