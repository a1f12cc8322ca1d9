"""Tests for nccidfs.derived.mosaic through the volume planner: a real Siemens mosaic (nibabel's DWI
test file, whose pixels nibabel blanked: here filled with a pattern, its header kept) is cut into its
slices in the grid's order, placed from the twin alone; what cannot be placed is refused with a reason,
and an image whose CSA header puts its slices the other way fails to encode rather than giving a
flipped volume. That it is the volume dcm2niix makes is checked with the corpus (test_derived_corpus.py
and, through a mount, tests/integration/test_corpus.py)."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from nccidfs.demo.warehouse import metadata_json
from nccidfs.derived.volume import HEADER_BYTES, Rejection, VolumePlan, build_volume, encode_slices, plan_volume
from tests.corpus import MOSAIC_SIDE, MOSAIC_TILE, nibabel_file, patterned_mosaic
from tests.unit.test_derived_volume import encode, metadata_twin

TILE, SIDE, SLICES = MOSAIC_TILE, MOSAIC_SIDE, 48


@pytest.fixture(scope="module")
def mosaic() -> bytes:
    return patterned_mosaic("siemens_dwi_0.dcm.gz")


def plan_of(images: dict[str, bytes]) -> VolumePlan | Rejection:
    return plan_volume({ident: json.loads(metadata_json(dicom)) for ident, dicom in images.items()})


def test_a_mosaic_is_planned_as_its_slices_from_the_twin_alone(mosaic: bytes) -> None:
    plan = plan_of({"b0": mosaic})
    assert isinstance(plan, VolumePlan), plan
    assert (plan.rows, plan.columns, len(plan.slices)) == (TILE, TILE, SLICES)
    assert plan.frames == tuple(range(SLICES))
    assert plan.size == HEADER_BYTES + SLICES * TILE * TILE * 2


def test_each_slice_is_its_tile_in_row_major_order_of_the_grid(mosaic: bytes) -> None:
    plan = plan_of({"b0": mosaic})
    assert isinstance(plan, VolumePlan), plan
    voxels = np.frombuffer(build_volume(plan, {"b0": mosaic})[HEADER_BYTES:], "<i2").reshape(SLICES, TILE, TILE)
    whole = dcmread(BytesIO(mosaic)).pixel_array
    for index in (0, 1, SIDE, 20, SLICES - 1):
        top, left = (index // SIDE) * TILE, (index % SIDE) * TILE
        assert np.array_equal(voxels[index], whole[top:top + TILE, left:left + TILE]), index
        assert voxels[index][0, 0] == index * 80


def test_the_first_slice_sits_at_the_grid_corner_moved_by_half_the_spare_tiles(mosaic: bytes) -> None:
    plan = plan_of({"b0": mosaic})
    assert isinstance(plan, VolumePlan), plan
    dataset = dcmread(BytesIO(mosaic), stop_before_pixels=True)
    row, column = np.array(dataset.ImageOrientationPatient[:3], float), np.array(dataset.ImageOrientationPatient[3:])
    spacing = float(dataset.PixelSpacing[0])
    corner = np.array(dataset.ImagePositionPatient, float) + (row + column) * spacing * (SIDE - 1) * TILE / 2
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ plan.affine
    assert np.allclose(lps[:3, 3], corner, atol=1e-4)
    assert np.allclose(lps[:3, 2], np.cross(row, column) * float(dataset.SpacingBetweenSlices), atol=1e-4)


def flipped_columns(dicom: bytes) -> tuple[bytes, dict[str, Any]]:
    """The mosaic with its column direction reversed in the image and its twin: row x column now points
    against the CSA header's SliceNormalVector."""
    dataset: Dataset = dcmread(BytesIO(dicom))
    orientation = [float(v) for v in dataset.ImageOrientationPatient]
    dataset.ImageOrientationPatient = orientation[:3] + [-v for v in orientation[3:]]
    return encode(dataset), metadata_twin(dataset)


def test_a_mosaic_whose_csa_normal_runs_against_the_plan_fails_to_encode(mosaic: bytes) -> None:
    image, twin = flipped_columns(mosaic)
    plan = plan_volume({"b0": twin})
    assert isinstance(plan, VolumePlan), plan
    with pytest.raises(ValueError, match="its slices run the other way"):
        encode_slices(plan, [0, 1], image)


def test_mosaics_of_another_layout_and_single_images_do_not_mix(mosaic: bytes) -> None:
    single = nibabel_file("decimal_rescale.dcm")
    outcome = plan_of({"a": mosaic, "b": single})
    assert isinstance(outcome, Rejection)
    assert "mosaics of different layouts, or mosaics and single images: a and b" in outcome.reason


def test_a_mosaic_without_a_slice_spacing_is_refused(mosaic: bytes) -> None:
    twin = json.loads(metadata_json(mosaic))
    for tag in ("00180088", "00180050"):  # SpacingBetweenSlices, SliceThickness
        twin.pop(tag)
    outcome = plan_volume({"b0": twin})
    assert isinstance(outcome, Rejection)
    assert "neither SpacingBetweenSlices nor SliceThickness" in outcome.reason
