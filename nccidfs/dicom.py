"""DICOM header tags as extended attributes: one flat ``Keyword -> text`` mapping per image, built either
from the image's warehouse metadata JSON twin or from the first bytes of the image itself.

Both sources yield the same mapping for the same image. Values go through pydicom on both paths and are
then rendered by one formatter. Numbers are normalised because the JSON twin stores DS values as JSON
floats and so loses their original strings. Only top-level, standard, non-empty, non-binary,
non-sequence elements appear; so does no text that is not valid Unicode (a JSON twin may escape a lone
surrogate, which no UTF-8 xattr value can carry). Every function here is pure: it parses the bytes it is
given and does no I/O.

Deflated images (the Deflated Explicit VR Little Endian transfer syntax) are inflated here, never by
pydicom, which inflates a whole dataset at once: a few hundred KiB of deflate can inflate a thousand
times over. :func:`undeflate` inflates at most a given number of bytes; a header is inflated at most
:data:`MAX_INFLATED_HEADER_BYTES` deep.
"""

from __future__ import annotations

import functools
import json
import re
import struct
import zlib
from collections.abc import Collection, Iterator
from io import BytesIO
from typing import Any

import msgspec
from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

XATTR_PREFIX = "user.dicom."
# Kernel xattr values may reach 64 KiB; a header value longer than this is free text nobody wants there.
MAX_VALUE_BYTES = 4096

_JSON_TAG = re.compile(r"[0-9A-Fa-f]{8}")  # DICOM JSON model keys: the tag as 8 hex digits
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
# Leading spaces are significant only in these texts (PS3.5 6.2); every other VR is stripped both ends.
_LEADING_SPACE_VRS = frozenset({"LT", "ST", "UT"})
# Command (0000) and file meta (0002) groups are not part of the dataset the JSON twin was made from.
_NON_DATASET_GROUPS = frozenset({0x0000, 0x0002})
_ANY_JSON = msgspec.json.Decoder()  # a JSON document of any shape, as json.loads gives it
# The element headers dcmread(stop_before_pixels=True) stops at: Pixel Data, Float and Double Float
# Pixel Data, as their tag's first 4 bytes in either byte order.
_PIXEL_TAG_BYTES = frozenset(
    struct.pack(order + "HH", 0x7FE0, element) for order in "<>" for element in (0x0010, 0x0009, 0x0008)
)
# A header is a few tens of KiB; inflating further only feeds a deflate bomb.
MAX_INFLATED_HEADER_BYTES = 1024 * 1024
# Part 10: a 128-byte preamble, "DICM", then the file meta group (0002) in Explicit VR Little Endian, whose
# VRs with a 4-byte length (PS3.5 7.1.2) are these.
_PREAMBLE = 128
_MAGIC = b"DICM"
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                              b"UV"})
_TRANSFER_SYNTAX_ELEMENT = 0x0010


def xattr_name(keyword: str) -> str:
    """The extended attribute that carries the element with this pydicom keyword."""
    return XATTR_PREFIX + keyword


def json_document(raw: bytes) -> Any:
    """``raw`` decoded as :func:`json.loads` decodes it, in less than half its time (a twin of 8 KB: 57
    against 143 µs): msgspec first, and :func:`json.loads` for what msgspec refuses (a lone surrogate,
    ``NaN``, a number past a double's range, a byte-order mark, nesting past its depth), so both give the
    same answer. Raises ValueError (bad UTF-8 or JSON) or RecursionError as :func:`json.loads` does."""
    try:
        return _ANY_JSON.decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return json.loads(raw)


def tags_from_metadata_json(raw: bytes) -> dict[str, str]:
    """Keyword -> display string for the top-level, text-like elements of a warehouse metadata JSON.

    Only elements with a ``"Value"`` are converted, and one at a time. The warehouse's nulls
    (``"InlineBinary": null`` and ``"00283010": null``) sit on binary elements and sequences, which are
    never shown, so they are dropped without being parsed. One malformed element costs only itself.
    Anything that is not a DICOM JSON object gives ``{}``.
    """
    try:
        document = json_document(raw)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        return {}
    if not isinstance(document, dict):
        return {}
    return _render(_json_elements(document))


def selected_tags_from_metadata_json(raw: bytes, keywords: Collection[str]) -> dict[str, str]:
    """:func:`tags_from_metadata_json` for these keywords alone: the twin's other elements are never
    converted, which is most of the cost when a few tags of a long header are wanted (the catalog).

    The twin is decoded by msgspec into the wanted members alone (their keys in upper or lower case hex,
    as the JSON model writes them); the rest is checked as JSON but never made into Python objects, about
    five times faster than :func:`json.loads`. A twin msgspec refuses (a lone surrogate, a huge integer,
    not an object) goes the :func:`json.loads` way, so both give the same answer. The wanted elements'
    values repeat from twin to twin (a modality, a manufacturer, a matrix size), so each distinct (tag, VR,
    values) is converted once (:func:`_element_text`)."""
    wanted, decoder, members = _wanted(tuple(keywords))
    try:
        twin = decoder.decode(raw)
        chosen = [(key, value) for name, key in members if (value := getattr(twin, name)) is not msgspec.UNSET]
    except (msgspec.DecodeError, RecursionError):
        try:
            document = json.loads(raw)
        except (ValueError, RecursionError):
            return {}
        if not isinstance(document, dict):
            return {}
        chosen = [(key, value) for key, value in document.items() if isinstance(key, str) and key.upper() in wanted]
    tags: dict[str, str] = {}
    for _, _, key, attribute in sorted((int(key, 16), at, key, value) for at, (key, value) in enumerate(chosen)):
        for keyword, text in _element_text_of(key, attribute):
            tags.setdefault(keyword, text)
    return tags


@functools.lru_cache(maxsize=16)  # the sets of keywords asked for are few
def _wanted(keywords: tuple[str, ...]) -> tuple[frozenset[str], msgspec.json.Decoder[Any], tuple[tuple[str, str], ...]]:
    """The JSON keys of ``keywords``' tags, a decoder of a twin into those members alone, and the
    decoded struct's (attribute, JSON key) pairs."""
    keys = sorted(f"{tag:08X}" for tag in map(tag_for_keyword, keywords) if tag is not None)
    names = {f"m{at}": key for at, key in enumerate(sorted({*keys, *(key.lower() for key in keys)}))}
    twin = msgspec.defstruct("Twin", [(name, Any, msgspec.UNSET) for name in names], rename=names)
    return frozenset(keys), msgspec.json.Decoder(twin), tuple(names.items())


def _element_text_of(key: str, attribute: Any) -> tuple[tuple[str, str], ...]:
    """The (keyword, text) a twin's element is shown as (none when it is not shown), through the cache
    when its values are plain scalars."""
    if isinstance(attribute, dict) and isinstance(attribute.get("vr"), str):
        value = attribute.get("Value")
        if isinstance(value, list) and all(item is None or isinstance(item, str | int | float) for item in value):
            return _element_text(key, attribute["vr"], tuple((type(item).__name__, item) for item in value))
    return tuple(_render(_json_elements({key: attribute})).items())


@functools.lru_cache(maxsize=8192)
def _element_text(key: str, vr: str, typed: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, str], ...]:
    """One element's (keyword, text); ``typed`` holds its values with their types, so that ``1``, ``1.0``
    and ``true`` stay apart."""
    return tuple(_render(_json_elements({key: {"vr": vr, "Value": [item for _, item in typed]}})).items())


def tags_from_dicom_header(head: bytes, complete: bool = False) -> dict[str, str] | None:
    """The same mapping from the first bytes of a DICOM file (Part 10 or a raw dataset).

    Returns None when ``head`` stops short of the Pixel Data element header, even if it holds every
    element before it. A cut exactly at an element boundary looks like a small complete dataset, so
    pydicom's partial result is not trusted. The caller then reads a longer range and calls again.
    With ``complete=True`` the caller says ``head`` is the whole object. A dataset without Pixel Data is
    then accepted, and bytes that do not parse give ``{}`` instead of None.
    """
    dataset = _read_header(head, complete)
    if dataset is None:
        return {} if complete else None
    return _render(_header_elements(dataset))


def undeflate(dicom: bytes, limit: int) -> tuple[bytes, bool]:
    """A deflated Part 10 file as the same file in Explicit VR Little Endian, its dataset inflated at most
    ``limit`` bytes, and whether the whole dataset fit; any other bytes are returned as they are, whole.

    Raises ValueError for a deflated stream that is not deflate."""
    meta = _file_meta(dicom)
    if meta is None or meta[1] != DeflatedExplicitVRLittleEndian:
        return dicom, True
    end = meta[0]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        dataset = inflater.decompress(dicom[end:], limit)
    except zlib.error as error:
        raise ValueError(f"deflated dataset does not inflate: {error}") from None
    file_meta = dcmread(BytesIO(dicom[:end]), force=True).file_meta
    file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return dicom[:_PREAMBLE] + _MAGIC + _encode_file_meta(file_meta) + dataset, inflater.eof


def _encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, file_meta, enforce_standard=False)
    return buffer.getvalue()


def _file_meta(dicom: bytes) -> tuple[int, str] | None:
    """(offset where the dataset starts, transfer syntax UID) of a Part 10 file; None for a raw dataset or
    a file meta group cut short. Read by hand: it is a flat run of Explicit VR Little Endian elements."""
    if dicom[_PREAMBLE:_PREAMBLE + len(_MAGIC)] != _MAGIC:
        return None
    at, syntax = _PREAMBLE + len(_MAGIC), ""
    while at + 8 <= len(dicom):
        group, element = struct.unpack_from("<HH", dicom, at)
        if group != 0x0002:
            return at, syntax
        if dicom[at + 4:at + 6] in _LONG_LENGTH_VRS:
            if at + 12 > len(dicom):
                return None
            length, value = struct.unpack_from("<I", dicom, at + 8)[0], at + 12
        else:
            length, value = struct.unpack_from("<H", dicom, at + 6)[0], at + 8
        if element == _TRANSFER_SYNTAX_ELEMENT:
            syntax = dicom[value:value + length].rstrip(b"\0 ").decode("ascii", "replace")
        at = value + length
    return None


def _read_header(head: bytes, complete: bool) -> Dataset | None:
    """The dataset before Pixel Data if ``head`` holds all of it, else None."""
    try:
        head, whole = undeflate(head, MAX_INFLATED_HEADER_BYTES)
    except ValueError:
        return None
    complete = complete and whole
    # Without a Pixel Data tag in the bytes no parse can succeed. Skipping pydicom then saves time and
    # the warnings it logs about values cut short (a transfer syntax UID, a character set).
    if not complete and not any(tag in head for tag in _PIXEL_TAG_BYTES):
        return None
    buffer = BytesIO(head)
    try:
        dataset = dcmread(buffer, stop_before_pixels=True, force=True)
    except Exception:  # force=True on arbitrary bytes: pydicom fails with many exception types
        return None
    # dcmread leaves the buffer at the Pixel Data tag when it stopped there. Anywhere else, it ran out of
    # bytes, maybe in the middle of a value, which pydicom then keeps short without complaint.
    end = buffer.tell()
    if head[end : end + 4] in _PIXEL_TAG_BYTES:
        return dataset
    if complete and end == len(head) and not _has_short_value(dataset):
        return dataset
    return None


def _has_short_value(dataset: Dataset) -> bool:
    """Whether a value was cut off by the end of the bytes: pydicom reads short values silently."""
    return any(
        isinstance(elem, RawDataElement)
        and elem.value is not None
        and elem.length != 0xFFFFFFFF
        and len(elem.value) < elem.length
        for elem in dataset.elements()
    )


def _header_elements(dataset: Dataset) -> Iterator[tuple[str, DataElement]]:
    """(keyword, converted element) for the shown tags of a dataset read from DICOM bytes."""
    for tag in sorted(dataset.keys()):
        keyword = _shown_keyword(tag)
        if keyword is None:
            continue
        try:
            elem = dataset[tag]
        except Exception:  # a corrupt value (bad length, bad encoding) costs only its own element
            continue
        yield keyword, elem


def _json_elements(document: dict[Any, Any]) -> Iterator[tuple[str, DataElement]]:
    """(keyword, element) for the shown tags of a DICOM JSON object, nulls and binaries skipped."""
    tags: list[tuple[BaseTag, dict[Any, Any]]] = []
    for key, attribute in document.items():
        if isinstance(key, str) and _JSON_TAG.fullmatch(key) and isinstance(attribute, dict):
            tags.append((BaseTag(int(key, 16)), attribute))
    tags.sort(key=lambda entry: entry[0])
    for tag, attribute in tags:
        keyword = _shown_keyword(tag)
        vr, value = attribute.get("vr"), attribute.get("Value")
        if keyword is None or not isinstance(vr, str) or _is_hidden_vr(vr) or not _is_json_value(vr, value):
            continue
        try:
            elem = DataElement.from_json(Dataset, f"{tag:08X}", vr, value, "Value")
        except Exception:  # malformed JSON values raise anything from KeyError to ValueError
            continue
        yield keyword, elem


def _is_json_value(vr: str, value: Any) -> bool:
    """Whether a "Value" has the JSON model's shape: a list of person-name objects or of plain scalars.
    pydicom would turn anything else into the text of a Python object."""
    item_type = dict if vr == "PN" else str | int | float
    return isinstance(value, list) and all(item is None or isinstance(item, item_type) for item in value)


def _shown_keyword(tag: BaseTag) -> str | None:
    """The keyword a tag is shown under, or None for private, group length, file meta or unknown tags."""
    if tag.is_private or tag.element == 0 or tag.group in _NON_DATASET_GROUPS:
        return None
    return keyword_for_tag(tag) or None


def _is_hidden_vr(vr: str) -> bool:
    """Sequences and binary values have no text form; ambiguous VRs such as "OB or OW" count as binary."""
    return any(part == "SQ" or part in _BINARY_VRS for part in vr.split(" or "))


def _render(elements: Iterator[tuple[str, DataElement]]) -> dict[str, str]:
    """The display mapping; the first element wins when repeating groups (60xx overlays) share a keyword."""
    tags: dict[str, str] = {}
    for keyword, elem in elements:
        if keyword in tags or _is_hidden_vr(elem.VR):
            continue
        text = _display(elem)
        if text:
            tags[keyword] = text
    return tags


def _display(elem: DataElement) -> str:
    """An element's value as text: values joined with the DICOM separator, empty if all are empty."""
    value = elem.value
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    parts = [_display_one(item, elem.VR) for item in values]
    if not any(parts):
        return ""
    text = "\\".join(parts)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape: no UTF-8 text carries it
        return ""
    if len(encoded) <= MAX_VALUE_BYTES:
        return text
    return encoded[:MAX_VALUE_BYTES].decode("utf-8", errors="ignore")  # never split a character


def _display_one(item: Any, vr: str) -> str:
    """One value as text. Numbers are normalised so the DICOM and JSON paths agree; strings as stored."""
    if item is None or isinstance(item, bytes):  # bytes: a value pydicom could not convert to text
        return ""
    if isinstance(item, PersonName):
        return item.components[0].strip() if item.components else ""
    try:
        if vr in ("DS", "FD"):
            return _number(float(item))
        if vr == "FL":
            return _number(_shortest_float32(float(item)))
        if vr == "IS":
            return str(int(item))
        if vr == "AT":
            tag = Tag(item)
            return f"({tag.group:04X},{tag.element:04X})"
    except (ValueError, TypeError, OverflowError):  # an invalid number is shown as stored
        pass
    text = str(item)
    return text.rstrip(" \x00") if vr in _LEADING_SPACE_VRS else text.strip(" \x00")


def _number(value: float) -> str:
    """Shortest round-trip text, integral values without ".0": "120" from the file's "120" and from
    the JSON's 120.0 alike."""
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _shortest_float32(value: float) -> float:
    """The shortest decimal that is still the same 32-bit float: 0.1 rather than 0.10000000149011612."""
    try:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:  # not a 32-bit float at all (only malformed JSON gets here)
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.unpack("<f", struct.pack("<f", candidate))[0] == single:
            return candidate
    return value
