"""Series that hold several images at each slice position (multi-echo, dynamic or functional MR, diffusion
with several b-values): which attribute tells the images at one position apart, so that the series
becomes a 4D volume, one 3D volume after another, as dcm2niix makes it.

The attribute is the first of ``SPLIT_KEYWORDS`` that, at every position, gives each image there a value
of its own, and the same set of values at every position; the volumes are then in the order of those
values. A series where no attribute does that (a slice acquired twice, a position missing from one
volume) is no volume. Pure: numbers and dicts in, indices out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# In dcm2niix's spirit: echoes first, then time, then diffusion weighting, then acquisition order.
SPLIT_KEYWORDS = (
    "EchoNumbers",
    "EffectiveEchoTime",  # enhanced MR's echo, per frame
    "EchoTime",
    "TemporalPositionIdentifier",
    "TemporalPositionIndex",  # enhanced MR's time point, per frame
    "DiffusionBValue",
    "TriggerTime",
    "AcquisitionNumber",
    "AcquisitionTime",
)


class NotSplit(ValueError):
    """Several images at one position that no attribute tells apart."""


def positions(depths: Sequence[float], tolerance: float) -> list[list[int]]:
    """The images' indices grouped by slice position (depth along the normal, within ``tolerance``),
    positions in ascending depth."""
    order = sorted(range(len(depths)), key=lambda i: depths[i])
    groups: list[list[int]] = []
    for index in order:
        if groups and depths[index] - depths[groups[-1][0]] <= tolerance:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def split_volumes(groups: Sequence[Sequence[int]],
                  keys: Sequence[Mapping[str, Any]]) -> tuple[str, list[Any], list[list[int]]]:
    """(keyword, its values in order, the images' indices of each volume) for positions that each hold
    several images. Raises NotSplit when no keyword tells them apart."""
    counts = {len(group) for group in groups}
    if len(counts) != 1:
        raise NotSplit(f"{min(counts)} to {max(counts)} images at each position: volumes of different sizes")
    for keyword in SPLIT_KEYWORDS:
        values = _values_by_position(groups, keys, keyword)
        if values is not None:
            ordered = sorted(values[0], key=_sort_key)
            volumes = [[next(i for i in group if keys[i][keyword] == value) for group in groups] for value in ordered]
            return keyword, ordered, volumes
    raise NotSplit(f"{counts.pop()} images at each position, and no echo, time or b-value tells them apart")


def _values_by_position(groups: Sequence[Sequence[int]], keys: Sequence[Mapping[str, Any]],
                        keyword: str) -> list[set[Any]] | None:
    """The keyword's values at each position, if each image has its own and every position the same set."""
    sets = []
    for group in groups:
        values = [keys[i].get(keyword) for i in group]
        if None in values or len(set(values)) != len(values):
            return None
        sets.append(set(values))
    return sets if all(found == sets[0] for found in sets) else None


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers in numeric order, text after them in text order."""
    return (0, value) if isinstance(value, int | float) else (1, str(value))
