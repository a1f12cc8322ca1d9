"""The frames of an enhanced multi-frame image (Enhanced CT, Enhanced MR...) as single-frame metadata, so
that a volume is planned from frames exactly as it is from single-frame images.

An enhanced image keeps what differs from frame to frame in its Per-frame Functional Groups Sequence
(5200,9230), one item per frame, and what all frames share in the Shared Functional Groups Sequence
(5200,9229) (PS3.3 C.7.6.16). Each functional group is a sequence of one item holding ordinary
attributes (the Plane Position group holds ImagePositionPatient, Pixel Measures holds PixelSpacing, Pixel
Value Transformation holds RescaleSlope...). A frame's metadata is the image's own top level, overlaid
with the shared groups' attributes, then with its own groups'. Pure: DICOM JSON in, DICOM JSON out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword

SINGLE = -1  # the frame number of a single-frame image: decode the whole pixel data


def _tag(keyword: str) -> str:
    return f"{tag_for_keyword(keyword):08X}"


_FRAMES = _tag("NumberOfFrames")
_SHARED = _tag("SharedFunctionalGroupsSequence")
_PER_FRAME = _tag("PerFrameFunctionalGroupsSequence")


class NotFrames(ValueError):
    """A multi-frame image whose frames cannot be told apart (no per-frame groups, or too few)."""


def frames_of(meta: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """(frame number, the frame's metadata) for each frame of an image: ``[(SINGLE, meta)]`` for a
    single-frame one. Raises NotFrames for several frames without one per-frame item each."""
    count = _number_of_frames(meta)
    per_frame = _items(meta.get(_PER_FRAME))
    if count <= 1 and not per_frame:
        return [(SINGLE, meta)]
    if len(per_frame) != count:
        raise NotFrames(f"{count} frames with {len(per_frame)} per-frame functional groups")
    shared = _items(meta.get(_SHARED))
    top = {tag: value for tag, value in meta.items() if tag not in (_SHARED, _PER_FRAME, _FRAMES)}
    frames: list[tuple[int, Mapping[str, Any]]] = []
    for number, groups in enumerate(per_frame):
        frame = dict(top)
        for source in (*shared, groups):
            frame.update(_group_attributes(source))
        frames.append((number, frame))
    return frames


def _number_of_frames(meta: Mapping[str, Any]) -> int:
    attribute = meta.get(_FRAMES)
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    try:
        return int(values[0]) if isinstance(values, list) and values else 1
    except (TypeError, ValueError):
        return 1


def _items(attribute: Any) -> list[Mapping[str, Any]]:
    """The items of a sequence element in DICOM JSON ([] when absent or malformed)."""
    values = attribute.get("Value") if isinstance(attribute, dict) else None
    return [item for item in values if isinstance(item, dict)] if isinstance(values, list) else []


def _group_attributes(groups: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes inside each standard functional group (a sequence of one item) of a groups item.
    Private groups are left out: Philips's (2005,140F) repeats ImagePositionPatient in its own sense."""
    attributes: dict[str, Any] = {}
    for tag, element in groups.items():
        if not _is_private(tag):
            for item in _items(element)[:1]:
                attributes.update({inner: value for inner, value in item.items() if not _is_private(inner)})
    return attributes


def _is_private(tag: str) -> bool:
    """Whether a DICOM JSON key (8 hex digits) is a private element: an odd group."""
    try:
        return int(tag[:4], 16) % 2 == 1
    except ValueError:
        return True
