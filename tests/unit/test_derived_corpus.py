"""The builders on the corpus of real scanner files (tests/corpus.py), without a mount: each series that
dcm2niix makes one volume of is that volume (voxels equal, affines within 1e-3 mm after both are brought
to the closest canonical orientation), with the voxel type dcm2niix chooses; the demo MR series in each
transfer syntax likewise; series that are no stack of slices are refused with their reason; and each
real CR X-ray's PNG is what dcmtk renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nccidfs.demo.warehouse import DemoObject, metadata_json
from nccidfs.derived.image import build_png
from nccidfs.derived.volume import Rejection, VolumePlan, build_volume, plan_volume, sidecar
from tests.corpus import (
    CorpusSeries,
    crafted_series,
    dcm2niix,
    dcmj2pnm,
    differences,
    real_series,
    refused_series,
    xray_images,
)
from tests.unit.test_derived_image import decode_png

needs_tools = pytest.mark.skipif(shutil.which("dcm2niix") is None or shutil.which("dcmcjpeg") is None,
                                 reason="needs dcm2niix and dcmtk")


def plan(series: CorpusSeries) -> VolumePlan | Rejection:
    return plan_volume({f"image{i:03d}": json.loads(metadata_json(dicom)) for i, dicom in enumerate(series.images)})


def built(series: CorpusSeries, tmp_path: Path) -> nib.Nifti1Image:
    outcome = plan(series)
    assert isinstance(outcome, VolumePlan), outcome
    data = build_volume(outcome, {f"image{i:03d}": dicom for i, dicom in enumerate(series.images)})
    assert len(data) == outcome.size
    path = tmp_path / "nccidfs.nii"
    path.write_bytes(data)
    return nib.load(path)


def assert_is_dcm2niix_volume(series: CorpusSeries, tmp_path: Path) -> None:
    references = dcm2niix(series.reference_images, tmp_path)
    assert references, f"dcm2niix made no volume of {series.label}"
    ours = built(series, tmp_path)
    voxels, affine = differences(ours, references[0])
    assert voxels <= series.tolerance, series.label
    assert affine < 1e-3, series.label
    assert ours.get_data_dtype() == references[0].get_data_dtype(), series.label


@pytest.fixture(scope="module")
def crafted(warehouse: list[DemoObject]) -> list[CorpusSeries]:
    return crafted_series(warehouse)


@needs_tools
@pytest.mark.parametrize("series", real_series(), ids=lambda series: series.label)
def test_each_real_series_is_the_volume_dcm2niix_makes(series: CorpusSeries, tmp_path: Path) -> None:
    assert_is_dcm2niix_volume(series, tmp_path)


@needs_tools
@pytest.mark.parametrize("index", range(11))
def test_the_demo_mr_in_each_transfer_syntax_is_the_volume_dcm2niix_makes(
        crafted: list[CorpusSeries], index: int, tmp_path: Path) -> None:
    assert len(crafted) == 11
    assert_is_dcm2niix_volume(crafted[index], tmp_path)


def seconds(time_of_day: str) -> float:
    hours, minutes, rest = time_of_day.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(rest)


@needs_tools
@pytest.mark.parametrize("series", [s for s in real_series() + refused_series() if not s.reference],
                         ids=lambda series: series.label)
def test_sidecar_fields_are_written_as_dcm2niix_writes_them(series: CorpusSeries, tmp_path: Path) -> None:
    """Every field both sidecars have holds the same value in the same form: names, units, times,
    manufacturer, lists and backslash-joined strings, numbers."""
    dcm2niix(series.images, tmp_path)
    reference = json.loads(sorted((tmp_path / "dcm2niix-out").glob("*.json"))[0].read_text())
    ours = json.loads(sidecar(plan(series)))
    shared = set(ours) & set(reference) - {"ConversionSoftware"}
    assert len(shared) >= 7, sorted(shared)
    for name in sorted(shared):
        if name == "AcquisitionTime":  # dcm2niix goes through a double: its last digit may be off by one
            assert abs(seconds(ours[name]) - seconds(reference[name])) < 2e-6, series.label
        elif name == "ImageType":  # dcm2niix may add what it reads from private tags (REAL, PHASE...)
            assert set(ours[name]) <= set(reference[name]), series.label
        else:
            assert ours[name] == reference[name], (series.label, name)


@pytest.mark.parametrize("series", refused_series(), ids=lambda series: series.label)
def test_series_that_are_no_stack_of_slices_are_refused_with_the_reason(series: CorpusSeries) -> None:
    outcome = plan(series)
    assert isinstance(outcome, Rejection)
    assert series.expect in outcome.reason


@needs_tools
@pytest.mark.parametrize("series", xray_images(), ids=lambda series: series.label)
def test_each_real_xray_png_is_what_dcmj2pnm_renders(series: CorpusSeries, tmp_path: Path) -> None:
    ours = decode_png(build_png(series.images[0]))
    reference = dcmj2pnm(series.reference_images[0], tmp_path)
    assert np.array_equal(ours, reference), series.label
    assert ours.std() > 20
