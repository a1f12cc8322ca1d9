"""Tests for nccidfs.derived.volume: a series planned from its metadata twins and built from its images
is the volume dcm2niix makes of the same files (after both are turned to the closest canonical
orientation), has exactly the planned size, and a series that is no volume is rejected with a reason."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from nccidfs.demo.warehouse import DemoObject
from nccidfs.derived.bids import sidecar_fields
from nccidfs.derived.volume import (
    HEADER_BYTES,
    Rejection,
    VolumePlan,
    build_volume,
    encode_slice,
    plan_volume,
    sidecar,
)

SERIES_KEY = re.compile(r"^training/(?P<folder>ct|mri)(?P<meta>-metadata)?/(?P<series>.+)/(?P<stem>[^/]+)\.(dcm|json)$")
needs_dcm2niix = pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="needs dcm2niix")


@dataclass
class Series:
    """One demo series: DICOM bytes and parsed metadata twins, both keyed by image stem."""

    path: str
    images: dict[str, bytes]
    metas: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def series(warehouse: list[DemoObject]) -> list[Series]:
    found: dict[str, Series] = {}
    for obj in warehouse:
        match = SERIES_KEY.match(obj.key)
        if match:
            entry = found.setdefault(match["series"], Series(match["series"], {}, {}))
            if match["meta"]:
                entry.metas[match["stem"]] = json.loads(obj.body)
            else:
                entry.images[match["stem"]] = obj.body
    assert len(found) == 4
    return sorted(found.values(), key=lambda s: (modality(s), s.path))  # three CT series, then one MR


def modality(source: Series) -> str:
    modalities = {meta["00080060"]["Value"][0] for meta in source.metas.values()}
    assert len(modalities) == 1
    return modalities.pop()


def metadata_twin(dataset: Dataset) -> dict[str, Any]:
    """A metadata twin as the warehouse makes it: the header as DICOM JSON, without pixel data."""
    header = dcmread(BytesIO(encode(dataset)), stop_before_pixels=True)
    twin: dict[str, Any] = json.loads(json.dumps(header.to_json_dict(bulk_data_threshold=10**20)))
    return twin


def encode(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def edited(source: Series, edit: Any) -> Series:
    """A copy of a series whose datasets went through ``edit(index, dataset)`` in their stored order;
    the metadata twins are made again from the edited images."""
    images: dict[str, bytes] = {}
    metas: dict[str, dict[str, Any]] = {}
    for index, stem in enumerate(sorted(source.images)):
        dataset = dcmread(BytesIO(source.images[stem]))
        edit(index, dataset)
        images[stem] = encode(dataset)
        metas[stem] = metadata_twin(dataset)
    return Series(source.path, images, metas)


def planned(source: Series) -> VolumePlan:
    plan = plan_volume(source.metas)
    assert isinstance(plan, VolumePlan), plan
    return plan


def run_dcm2niix(source: Series, tmp_path: Path) -> Path:
    """dcm2niix over the series' files, uncompressed; the folder of what it wrote."""
    folder, out = tmp_path / "dicom", tmp_path / "dcm2niix"
    folder.mkdir()
    out.mkdir()
    for stem, body in source.images.items():
        (folder / f"{stem}.dcm").write_bytes(body)
    subprocess.run(["dcm2niix", "-z", "n", "-f", "reference", "-o", str(out), str(folder)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    return out


def dcm2niix(source: Series, tmp_path: Path) -> nib.Nifti1Image:
    """The reference: dcm2niix's volume of the series' files."""
    return nib.load(run_dcm2niix(source, tmp_path) / "reference.nii")


def built(source: Series, tmp_path: Path) -> nib.Nifti1Image:
    """Our volume of the series, written to a file and loaded as any reader would (memory-mapped)."""
    plan = planned(source)
    data = build_volume(plan, source.images)
    assert len(data) == plan.size
    path = tmp_path / "nccidfs.nii"
    path.write_bytes(data)
    return nib.load(path)


def differences(ours: nib.Nifti1Image, reference: nib.Nifti1Image) -> tuple[float, float]:
    """(max voxel difference, max affine difference in mm) once both are in closest canonical order."""
    ours, reference = nib.as_closest_canonical(ours), nib.as_closest_canonical(reference)
    assert ours.shape == reference.shape
    voxels = float(np.abs(ours.get_fdata() - reference.get_fdata()).max())
    return voxels, float(np.abs(ours.affine - reference.affine).max())


@needs_dcm2niix
@pytest.mark.parametrize("index", range(4))
def test_every_demo_series_is_the_volume_dcm2niix_makes(series: list[Series], index: int, tmp_path: Path) -> None:
    ours, reference = built(series[index], tmp_path), dcm2niix(series[index], tmp_path)
    voxels, affine = differences(ours, reference)
    assert voxels == 0.0
    assert affine < 1e-3
    assert ours.get_data_dtype() == np.int16  # the stored values, untouched, with their rescale
    assert reference.get_data_dtype() == np.int16  # dcm2niix too turns these 12-bit unsigned values to int16
    expected = (1.0, -1024.0) if modality(series[index]) == "CT" else (1.0, 0.0)
    assert (ours.dataobj.slope, ours.dataobj.inter) == expected


def rotate(axis: int, degrees: float) -> np.ndarray:
    """A rotation matrix about one coordinate axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def oblique(index: int, dataset: Dataset) -> None:
    """Tilt the stack 20 degrees about x and 12 about y, keeping it evenly spaced along its normal."""
    rotation = rotate(0, 20) @ rotate(1, 12)
    position = np.asarray(dataset.ImagePositionPatient, dtype=float)
    dataset.ImageOrientationPatient = [round(float(v), 8) for v in (*rotation[:, 0], *rotation[:, 1])]
    dataset.ImagePositionPatient = [round(float(v), 6) for v in rotation @ position]


@needs_dcm2niix
def test_an_oblique_non_square_series_stored_in_reverse_order_matches_dcm2niix(
    series: list[Series], tmp_path: Path
) -> None:
    def reverse_and_tilt(index: int, dataset: Dataset) -> None:
        dataset.InstanceNumber = 100 - index  # stem order, instance order and position order all differ
        oblique(index, dataset)
        pixels = dataset.pixel_array[:, 30:230]  # 256 rows of 200 columns, 1.5 mm apart by 1.1 mm
        dataset.Columns = pixels.shape[1]
        dataset.PixelData = np.ascontiguousarray(pixels).tobytes()
        dataset.PixelSpacing = [1.5, 1.1]

    source = edited(series[-1], reverse_and_tilt)  # the MR series: 256x256x12, 1.5 mm pixels, 5 mm steps
    voxels, affine = differences(built(source, tmp_path), dcm2niix(source, tmp_path))
    assert voxels == 0.0
    assert affine < 1e-3


@needs_dcm2niix
def test_slices_with_their_own_rescale_become_exact_float32(series: list[Series], tmp_path: Path) -> None:
    def own_rescale(index: int, dataset: Dataset) -> None:
        dataset.RescaleSlope = 1 + index / 8
        dataset.RescaleIntercept = -1024 + index

    source = edited(series[-1], own_rescale)
    plan = planned(source)
    assert plan.dtype == np.float32
    ours = built(source, tmp_path)
    voxels, affine = differences(ours, dcm2niix(source, tmp_path))
    assert voxels < 1e-3
    assert affine < 1e-3
    first = dcmread(BytesIO(source.images[plan.slices[-1]]))
    expected = first.pixel_array.astype(float) * float(first.RescaleSlope) + float(first.RescaleIntercept)
    assert np.array_equal(np.asarray(ours.dataobj)[:, :, -1].T, expected)


def test_each_slice_sits_at_its_planned_offset_and_the_file_has_the_planned_size(series: list[Series]) -> None:
    source = series[0]
    plan = planned(source)
    data = build_volume(plan, source.images)
    assert plan.size == len(data) == HEADER_BYTES + 24 * 512 * 512 * 2
    middle = 11
    start = HEADER_BYTES + middle * plan.slice_bytes
    assert data[start : start + plan.slice_bytes] == encode_slice(plan, middle, source.images[plan.slices[middle]])
    positions = [source.metas[stem]["00200032"]["Value"][2] for stem in plan.slices]
    assert positions == sorted(positions)  # axial: the slice normal is +z, so z rises with k


def test_an_image_that_disagrees_with_its_metadata_fails_to_encode(series: list[Series]) -> None:
    source = series[-1]
    plan = planned(source)
    other = series[0].images[sorted(series[0].images)[0]]  # a 512x512 CT image in a 256x256 MR plan
    with pytest.raises(ValueError, match="pixels"):
        encode_slice(plan, 0, other)


def test_stored_values_past_the_planned_voxel_type_fail_to_encode(series: list[Series]) -> None:
    """A plan of int16 (the twin says 12 unsigned bits) and an image of 16 unsigned bits holding 40000:
    refused, never wrapped to a negative voxel."""
    source = series[-1]
    plan = planned(source)
    assert plan.dtype == np.dtype("<i2")
    stem = plan.slices[0]

    def wide(index: int, dataset: Dataset) -> None:
        dataset.BitsStored, dataset.HighBit = 16, 15
        pixels = dataset.pixel_array.astype("<u2")
        pixels[0, 0] = 40000
        dataset.PixelData = pixels.tobytes()

    with pytest.raises(ValueError, match="stored values do not fit int16"):
        encode_slice(plan, 0, edited(source, wide).images[stem])


def rejection(source: Series) -> str:
    outcome = plan_volume(source.metas)
    assert isinstance(outcome, Rejection), outcome
    return outcome.reason


def without(source: Series, position: int) -> Series:
    """The series less the image at ``position`` along the stack."""
    stem = planned(source).slices[position]
    return Series(source.path, source.images, {k: v for k, v in source.metas.items() if k != stem})


def test_a_missing_middle_slice_is_a_gap_not_a_volume(series: list[Series]) -> None:
    assert "uneven slice spacing" in rejection(without(series[0], 12))


def test_a_missing_end_slice_still_makes_a_volume(series: list[Series]) -> None:
    assert len(planned(without(series[0], 0)).slices) == 23


def test_images_of_mixed_sizes_are_not_a_volume(series: list[Series]) -> None:
    metas = dict(series[-1].metas)
    stem = sorted(metas)[3]
    metas[stem] = {**metas[stem], "00280010": {"vr": "US", "Value": [512]}}
    assert "different sizes" in rejection(Series("", {}, metas))


def test_two_images_at_one_position_are_not_a_volume(series: list[Series]) -> None:
    first, second = planned(series[-1]).slices[:2]
    metas = dict(series[-1].metas)
    metas[second] = {**metas[second], "00200032": metas[first]["00200032"]}
    assert "one position" in rejection(Series("", {}, metas))


def test_slices_shifted_within_the_plane_are_not_a_volume(series: list[Series]) -> None:
    def tilt(index: int, dataset: Dataset) -> None:  # a gantry tilt: each slice moves 1 mm along y
        x, y, z = dataset.ImagePositionPatient
        dataset.ImagePositionPatient = [x, y + float(dataset.InstanceNumber), z]

    reason = rejection(edited(series[-1], tilt))
    assert "drift within the image plane" in reason and reason.startswith("gantry tilt:")


def test_a_gantry_tilted_ct_names_the_tilt_and_its_angle(series: list[Series]) -> None:
    def tilt(index: int, dataset: Dataset) -> None:  # 15 degrees: each 1.25 mm step shifts y by 0.33 mm
        x, y, z = dataset.ImagePositionPatient
        dataset.ImagePositionPatient = [x, y + float(z) * np.tan(np.radians(15)), z]
        dataset.GantryDetectorTilt = 15

    assert rejection(edited(series[0], tilt)).startswith("gantry tilt of 15 degrees:")


def test_a_tilt_the_scanner_reconstructed_into_a_box_is_a_volume(series: list[Series]) -> None:
    def tilted_frame(index: int, dataset: Dataset) -> None:  # the tag says tilted, the slices stack squarely
        dataset.GantryDetectorTilt = 15

    assert len(planned(edited(series[0], tilted_frame)).slices) == 24


def test_a_siemens_mosaic_that_is_not_whole_tiles_is_refused_not_served_as_one_slice(series: list[Series]) -> None:
    siemens = {"00190010": {"vr": "LO", "Value": ["SIEMENS MR HEADER"]}, "0019100A": {"vr": "US", "Value": [48]}}
    metas = {stem: {**meta, **siemens} for stem, meta in series[-1].metas.items()}  # 256 rows: not 7 tiles
    assert "a Siemens mosaic of 48 slices whose [256]x[256] pixels are not 7 whole tiles a side" in rejection(
        Series("", {}, metas))
    marked = {stem: {**meta, "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "M", "MOSAIC"]}}
              for stem, meta in series[-1].metas.items()}
    assert "a Siemens mosaic without NumberOfImagesInMosaic" in rejection(Series("", {}, marked))


def test_another_creators_private_0019_100a_is_no_mosaic(series: list[Series]) -> None:
    ge = {"00190010": {"vr": "LO", "Value": ["GEMS_ACQU_01"]}, "0019100A": {"vr": "SS", "Value": [48]}}
    metas = {stem: {**meta, **ge} for stem, meta in series[-1].metas.items()}
    assert len(planned(Series("", {}, metas)).slices) == 12


@pytest.mark.parametrize(("keyword", "tag", "vr", "value", "says"), [
    ("Rows", "00280010", "US", [40000], "not a size"),
    ("Rows", "00280010", "US", [0], "not a size"),
    ("Rows", "00280010", "US", [-1], "not a size"),
    ("Columns", "00280011", "US", [2.5], "not a size"),
    ("PixelSpacing", "00280030", "DS", [0, 0.7], "not between 0"),
    ("PixelSpacing", "00280030", "DS", [-0.7, 0.7], "not between 0"),
    ("ImagePositionPatient", "00200032", "DS", [0, 0, 1e308], "beyond"),
    ("ImagePositionPatient", "00200032", "DS", [-1e308, 0, 0], "beyond"),
    ("ImagePositionPatient", "00200032", "DS", [0, float("inf"), 0], "not 3 numbers"),
    ("ImageOrientationPatient", "00200037", "DS", [0, 0, 0, 0, 0, 0], "orthogonal unit"),
    ("ImageOrientationPatient", "00200037", "DS", [1, 0, 0, 1, 0, 0], "orthogonal unit"),
])  # fmt: skip
def test_absurd_geometry_in_one_twin_is_a_reason_not_a_volume(
        series: list[Series], keyword: str, tag: str, vr: str, value: list[float], says: str) -> None:
    metas = dict(series[0].metas)
    stem = sorted(metas)[7]
    metas[stem] = json.loads(json.dumps({**metas[stem], tag: {"vr": vr, "Value": value}}))
    reason = rejection(Series("", {}, metas))
    assert stem in reason and says in reason and (keyword in reason or "rows" in reason)


@needs_dcm2niix
def test_unsigned_16_bit_images_stay_uint16_as_dcm2niix_keeps_them(series: list[Series], tmp_path: Path) -> None:
    def full_range(index: int, dataset: Dataset) -> None:  # an MR whose values use all 16 bits
        pixels = dataset.pixel_array.astype(np.uint32) * 64 + index
        dataset.PixelData = np.clip(pixels, 0, 65535).astype("<u2").tobytes()
        dataset.BitsStored, dataset.HighBit = 16, 15

    source = edited(series[-1], full_range)
    ours, reference = built(source, tmp_path), dcm2niix(source, tmp_path)
    assert planned(source).dtype == np.uint16
    assert ours.get_data_dtype() == reference.get_data_dtype() == np.uint16
    assert np.asarray(ours.dataobj).max() > 32767
    voxels, affine = differences(ours, reference)
    assert voxels == 0.0 and affine < 1e-3


def test_two_orientations_are_not_a_volume(series: list[Series]) -> None:
    metas = dict(series[-1].metas)
    stem = sorted(metas)[5]
    metas[stem] = {**metas[stem], "00200037": {"vr": "DS", "Value": [1, 0, 0, 0, 0, -1]}}
    assert "more than one orientation" in rejection(Series("", {}, metas))


def test_an_image_without_a_position_is_named_in_the_rejection(series: list[Series]) -> None:
    metas = dict(series[-1].metas)
    stem = sorted(metas)[2]
    metas[stem] = {key: value for key, value in metas[stem].items() if key != "00200032"}
    reason = rejection(Series("", {}, metas))
    assert stem in reason and "ImagePositionPatient" in reason


def test_an_empty_series_is_rejected() -> None:
    assert rejection(Series("", {}, {})) == "the series has no images"


def test_the_sidecar_names_the_acquisition_in_bids_terms(series: list[Series]) -> None:
    document = json.loads(sidecar(planned(series[-1])))
    assert document["Modality"] == "MR"
    assert document["EchoTime"] == 0.09 and document["RepetitionTime"] == 3.5  # seconds, as dcm2niix
    assert document["ImageOrientationPatientDICOM"] == [1, 0, 0, 0, 1, 0]
    assert document["SeriesDescription"] == "T2 TSE AX"
    assert "NoVolumeReason" not in document


def test_a_rejected_series_sidecar_gives_the_reason(series: list[Series]) -> None:
    outcome = plan_volume(without(series[0], 12).metas)
    document = json.loads(sidecar(outcome))
    assert document["NoVolumeReason"].startswith("uneven slice spacing")
    assert document["Modality"] == "CT" and document["SliceThickness"] == 1.25


def test_planning_needs_the_twins_alone(series: list[Series]) -> None:
    sizes = [planned(Series(source.path, {}, source.metas)).size for source in series]
    assert sizes == [HEADER_BYTES + 512 * 512 * 24 * 2] * 3 + [HEADER_BYTES + 256 * 256 * 12 * 2]


def test_bytes_that_are_no_image_fail_to_encode(series: list[Series]) -> None:
    with pytest.raises(ValueError, match="not decodable"):
        encode_slice(planned(series[0]), 0, b"not a DICOM file")


@pytest.mark.parametrize(("stored", "written"), [
    ("GE MEDICAL SYSTEMS", "GE"), ("GE Healthcare", "GE"), ("SIEMENS", "Siemens"), ("Siemens Healthineers", "Siemens"),
    ("Philips Medical Systems", "Philips"), ("TOSHIBA_MEC", "Toshiba"), ("CANON_MEC", "Canon"), ("UIH", "UIH"),
    ("Gendex", "Gendex"), ("Acme Medical Devices", "Acme Medical Devices"),
])  # fmt: skip
def test_the_sidecar_names_the_manufacturer_as_dcm2niix_does(stored: str, written: str) -> None:
    assert sidecar_fields({"00080070": {"vr": "LO", "Value": [stored]}})["Manufacturer"] == written


@pytest.mark.parametrize(("stored", "written"), [
    ("102053", "10:20:53.000000"), ("141127.937501", "14:11:27.937501"), ("1020", "10:20:00.000000"),
    ("102053.5", "10:20:53.500000"), ("10:20:53", "10:20:53"),
])  # fmt: skip
def test_the_sidecar_writes_acquisition_time_as_dcm2niix_does(stored: str, written: str) -> None:
    assert sidecar_fields({"00080032": {"vr": "TM", "Value": [stored]}})["AcquisitionTime"] == written


def test_the_sidecar_joins_code_strings_and_rounds_numbers_as_dcm2niix_does() -> None:
    fields = sidecar_fields({"00180020": {"vr": "CS", "Value": ["GR", "IR"]},
                             "00180087": {"vr": "DS", "Value": [1.4939999580383]},
                             "00080008": {"vr": "CS", "Value": ["DERIVED", "SECONDARY", "", "M"]},
                             "00180081": {"vr": "DS", "Value": [93.0]}})
    assert fields["ScanningSequence"] == "GR\\IR"
    assert fields["MagneticFieldStrength"] == 1.494
    assert fields["ImageType"] == ["DERIVED", "SECONDARY", "M"]
    assert fields["EchoTime"] == 0.093


def repeated(source: Series, count: int, edit: Any) -> Series:
    """The series acquired ``count`` times: each image again with ``edit(repeat, dataset)`` applied, its
    pixels changed (so that the volumes differ) and UIDs and instance numbers of its own."""
    images: dict[str, bytes] = {}
    metas: dict[str, dict[str, Any]] = {}
    for repeat in range(count):
        for index, stem in enumerate(sorted(source.images)):
            dataset = dcmread(BytesIO(source.images[stem]))
            dataset.PixelData = (dataset.pixel_array // (repeat + 1)).astype("<u2").tobytes()
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            dataset.InstanceNumber = repeat * 100 + index + 1
            edit(repeat, dataset)
            images[f"{repeat}-{stem}"] = encode(dataset)
            metas[f"{repeat}-{stem}"] = metadata_twin(dataset)
    return Series(source.path, images, metas)


def dcm2niix_all(source: Series, tmp_path: Path) -> dict[str, nib.Nifti1Image]:
    """Every file dcm2niix makes of the series, by name."""
    return {path.name: nib.load(path) for path in sorted(run_dcm2niix(source, tmp_path).glob("*.nii"))}


@needs_dcm2niix
def test_a_multi_echo_series_is_one_volume_per_echo_as_dcm2niix_splits_it(series: list[Series], tmp_path: Path) -> None:
    def echo(repeat: int, dataset: Dataset) -> None:
        dataset.EchoNumbers, dataset.EchoTime = repeat + 1, 90.0 * (repeat + 1)

    source = repeated(series[-1], 2, echo)
    references = dcm2niix_all(source, tmp_path)
    assert sorted(references) == ["reference_e1.nii", "reference_e2.nii"]
    plan = planned(source)
    assert plan.volumes == 2 and plan.size == HEADER_BYTES + 2 * 12 * 256 * 256 * 2
    ours = built(source, tmp_path)
    assert ours.shape == (256, 256, 12, 2)
    for volume, name in enumerate(sorted(references)):
        voxels, affine = differences(ours.slicer[..., volume], references[name])
        assert voxels == 0.0 and affine < 1e-3, name
    document = json.loads(sidecar(plan))
    assert document["VolumeSplitBy"] == "EchoNumbers" and document["VolumeSplitValues"] == [1, 2]


@needs_dcm2niix
def test_a_dynamic_series_is_the_4d_volume_dcm2niix_makes(series: list[Series], tmp_path: Path) -> None:
    def time_point(repeat: int, dataset: Dataset) -> None:
        dataset.TemporalPositionIdentifier = repeat + 1
        dataset.AcquisitionTime = f"1504{10 + 7 * repeat:02d}"

    source = repeated(series[-1], 3, time_point)
    references = dcm2niix_all(source, tmp_path)
    assert list(references) == ["reference.nii"] and references["reference.nii"].shape == (256, 256, 12, 3)
    ours = built(source, tmp_path)
    voxels, affine = differences(ours, references["reference.nii"])
    assert voxels == 0.0 and affine < 1e-3
    assert json.loads(sidecar(planned(source)))["VolumeSplitBy"] == "TemporalPositionIdentifier"


def test_images_at_one_position_that_nothing_tells_apart_are_no_volume(series: list[Series]) -> None:
    source = repeated(series[-1], 2, lambda repeat, dataset: None)
    source.metas = {stem: {k: v for k, v in meta.items() if k not in ("00080032", "00200012")}
                    for stem, meta in source.metas.items()}  # no AcquisitionTime, no AcquisitionNumber
    reason = rejection(source)
    assert "several images at one position" in reason and "no echo, time or b-value" in reason


def test_volumes_of_different_lengths_are_no_volume(series: list[Series]) -> None:
    def echo(repeat: int, dataset: Dataset) -> None:
        dataset.EchoNumbers = repeat + 1

    source = repeated(series[-1], 2, echo)
    first = sorted(source.metas)[0]
    source.metas = {stem: meta for stem, meta in source.metas.items() if stem != first}
    assert "volumes of different sizes" in rejection(source)
