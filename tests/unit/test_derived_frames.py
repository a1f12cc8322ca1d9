"""Tests for nccidfs.derived.frames: each frame of an enhanced image gets its own metadata from the shared
and per-frame functional groups, private groups left out; frames that cannot be told apart are refused."""

from __future__ import annotations

from typing import Any

import pytest

from nccidfs.derived.frames import SINGLE, NotFrames, frames_of

POSITION, SPACING, SLOPE = "00200032", "00280030", "00281053"


def sequence(*items: dict[str, Any]) -> dict[str, Any]:
    return {"vr": "SQ", "Value": list(items)}


def group(tag: str, **attributes: Any) -> dict[str, Any]:
    """One functional group: a sequence of one item holding the attributes."""
    return {tag: sequence({key: {"vr": "DS", "Value": value} for key, value in attributes.items()})}


def enhanced(frames: int, per_frame: list[dict[str, Any]]) -> dict[str, Any]:
    return {"00280008": {"vr": "IS", "Value": [frames]},
            "52009229": sequence({**group("00289110", **{SPACING: [0.5, 0.5]})}),
            "52009230": sequence(*per_frame),
            "00080060": {"vr": "CS", "Value": ["MR"]}}  # fmt: skip


def test_a_single_frame_image_is_one_frame_of_itself() -> None:
    meta = {"00080060": {"vr": "CS", "Value": ["CT"]}}
    assert frames_of(meta) == [(SINGLE, meta)]


def test_each_frame_takes_the_shared_groups_then_its_own() -> None:
    per_frame = [{**group("00209113", **{POSITION: [0, 0, z]}), **group("00289145", **{SLOPE: [z + 1]})}
                 for z in (0.0, 2.0, 4.0)]
    frames = frames_of(enhanced(3, per_frame))
    assert [number for number, _ in frames] == [0, 1, 2]
    assert [frame[POSITION]["Value"] for _, frame in frames] == [[0, 0, 0.0], [0, 0, 2.0], [0, 0, 4.0]]
    assert [frame[SLOPE]["Value"] for _, frame in frames] == [[1.0], [3.0], [5.0]]
    assert all(frame[SPACING]["Value"] == [0.5, 0.5] for _, frame in frames)
    assert all(frame["00080060"]["Value"] == ["MR"] for _, frame in frames)
    assert all("52009230" not in frame and "00280008" not in frame for _, frame in frames)


def test_a_private_group_does_not_override_the_standard_one() -> None:
    private = {"2005140F": sequence({POSITION: {"vr": "DS", "Value": [9, 9, 9]}})}
    per_frame = [{**group("00209113", **{POSITION: [0, 0, z]}), **private} for z in (0.0, 1.0)]
    assert [frame[POSITION]["Value"] for _, frame in frames_of(enhanced(2, per_frame))] == [[0, 0, 0.0], [0, 0, 1.0]]


@pytest.mark.parametrize("items", [0, 2])
def test_frames_without_one_per_frame_item_each_are_refused(items: int) -> None:
    per_frame = [group("00209113", **{POSITION: [0, 0, z]}) for z in range(items)]
    with pytest.raises(NotFrames, match=f"3 frames with {items} per-frame"):
        frames_of(enhanced(3, per_frame))
