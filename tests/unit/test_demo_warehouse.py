"""Tests for the synthetic demo warehouse: its layout, determinism, DICOM validity and the real
warehouse's quirks (nulled InlineBinary and VOI LUT Sequence in metadata JSON, clinical date formats)."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import uuid
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import ExplicitVRLittleEndian

from nccidfs.demo.warehouse import DemoObject, generate_warehouse

PREFIX = "training/"
IMAGE_KEY = re.compile(
    r"^training/(?P<folder>ct|mri|xray)(?P<meta>-metadata)?/(?P<pid>Covid\d+)/(?P<study>[0-9.]+)/"
    r"(?P<series>[0-9.]+)/(?P<stem>[0-9a-f-]{36})\.(?P<ext>dcm|json)$"
)
CLINICAL_KEY = re.compile(r"^training/data/(?P<pid>Covid\d+)/(?P<name>[^/]+)$")
CLINICAL_NAME = re.compile(r"^(data|status)_\d{4}-\d{2}-\d{2}\.json$")
MODALITIES = {"ct": {"CT"}, "mri": {"MR"}, "xray": {"DX", "CR"}}
BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
VOI_LUT_SEQUENCE = 0x00283010
POSITIVE_FIELDS = (
    "Date of Positive Covid Swab", "Date of acquisition of 1st RT-PCR", "Date of acquisition of 2nd RT-PCR",
    "Date of result of 1st RT-PCR", "Date of result of 2nd RT-PCR", "Date of admission",
    "Date of ITU admission", "Date of intubation", "Date of 1st CXR", "Date of 2nd CXR",
    "Date last known alive", "Date of death", "Duration of symptoms", "Respiratory rate on admission",
    "Heart rate on admission", "NEWS2 score on arrival", "APACHE score on ITU arrival", "PaO2",
    "Creatinine on admission", "D-dimer on admission", "Fibrinogen  if d-dimer not performed",
    "WCC on admission", "Lymphocyte count on admission", "Platelet count on admission", "CRP on admission",
    "Urea on admission", "O2 saturation", "Temperature on admission", "Ferritin", "Troponin I", "Troponin T",
    "Systolic BP", "Diastolic BP", "FiO2", "Smoking status", "Pack year history", "PMH hypertension",
    "PMH CKD", "If CKD, stage", "PMH CVS disease", "PMH Lung disease", "PMH diabetes mellitus type II",
    "Current ACEi use", "Current Angiotension receptor blocker use", "Current NSAID used",
    "1st RT-PCR result", "2nd RT-PCR result", "Final COVID Status", "CXR severity", "CXR severity 3",
    "COVID CODE", "COVID CODE 2", "ITU admission", "Intubation", "Death",
)  # fmt: skip
COMMON_FIELDS = ("Pseudonym", "SubmittingCentre", "Age", "Sex", "Ethnicity")


@pytest.fixture(scope="module")
def warehouse() -> list[DemoObject]:
    return generate_warehouse()


@pytest.fixture(scope="module")
def images(warehouse: list[DemoObject]) -> list[tuple[re.Match[str], FileDataset, bytes]]:
    """(key match, full dataset, raw bytes) for every .dcm, parsed once for the module."""
    out = []
    for obj in warehouse:
        match = IMAGE_KEY.match(obj.key)
        if match and match["ext"] == "dcm":
            out.append((match, dcmread(BytesIO(obj.body)), obj.body))
    return out


@pytest.fixture(scope="module")
def clinical(warehouse: list[DemoObject]) -> dict[str, dict[str, dict[str, Any]]]:
    """Patient -> file name -> parsed clinical record."""
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for obj in warehouse:
        match = CLINICAL_KEY.match(obj.key)
        if match:
            out[match["pid"]][match["name"]] = json.loads(obj.body)
    return dict(out)


def _series(
    images: list[tuple[re.Match[str], FileDataset, bytes]], folder: str
) -> dict[str, list[FileDataset]]:
    series: dict[str, list[FileDataset]] = defaultdict(list)
    for match, ds, _ in images:
        if match["folder"] == folder:
            series[match["series"]].append(ds)
    return {uid: sorted(slices, key=lambda ds: int(ds.InstanceNumber)) for uid, slices in series.items()}


def _warehouse_loader_fixup(raw: bytes, *, inline_binary: bool = True, top_level: bool = True) -> Any:
    """What consumers do before Dataset.from_json: InlineBinary null -> "", top-level null -> empty SQ."""
    data = json.loads(
        raw,
        object_hook=lambda d: {
            k: "" if inline_binary and k == "InlineBinary" and v is None else v for k, v in d.items()
        },
    )
    if top_level:
        data = {k: {"vr": "SQ"} if v is None else v for k, v in data.items()}
    return data


def _assert_same_elements(original: Dataset, parsed: Dataset) -> None:
    """Every element survives the JSON round trip; binary values and the VOI LUT Sequence come back empty."""
    assert [elem.tag for elem in parsed] == [elem.tag for elem in original]
    for elem in original:
        value = parsed[elem.tag].value
        if elem.tag == VOI_LUT_SEQUENCE:
            assert len(value) == 0
        elif elem.VR in BINARY_VRS:
            assert value == b""
        elif elem.VR == "SQ":
            assert len(value) == len(elem.value)
            for item, parsed_item in zip(elem.value, value, strict=True):
                _assert_same_elements(item, parsed_item)
        else:
            assert value == elem.value, elem


def test_same_seed_gives_byte_identical_objects_sorted_by_key(warehouse: list[DemoObject]) -> None:
    assert generate_warehouse() == warehouse
    keys = [obj.key for obj in warehouse]
    assert keys == sorted(set(keys))


def test_seed_prefix_and_slice_count_are_honoured(warehouse: list[DemoObject]) -> None:
    small = generate_warehouse(seed=8, prefix="", ct_slices=3)
    assert {obj.key.split("/")[0] for obj in small} == {
        "ct", "ct-metadata", "mri", "mri-metadata", "xray", "xray-metadata", "data",
    }  # fmt: skip
    assert not {obj.key for obj in small} & {obj.key.removeprefix(PREFIX) for obj in warehouse}
    per_series: dict[str, int] = defaultdict(int)
    for obj in small:
        parts = obj.key.split("/")
        if parts[0] == "ct":
            per_series[parts[3]] += 1
    assert set(per_series.values()) == {3}


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"ct_slices": 1}, "ct_slices"), ({"prefix": "training"}, "prefix")]
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_warehouse(**kwargs)


def test_every_key_is_in_the_warehouse_layout(warehouse: list[DemoObject]) -> None:
    for obj in warehouse:
        image = IMAGE_KEY.match(obj.key)
        if image:
            assert (image["ext"] == "json") == bool(image["meta"]), obj.key
            assert uuid.UUID(image["stem"]).version == 4
        else:
            match = CLINICAL_KEY.match(obj.key)
            assert match and CLINICAL_NAME.match(match["name"]), obj.key


def test_dicom_identity_and_file_meta_match_the_path(
    images: list[tuple[re.Match[str], FileDataset, bytes]],
) -> None:
    assert images
    for match, ds, body in images:
        assert body[128:132] == b"DICM"
        assert ds.PatientID == match["pid"] == str(ds.PatientName)
        assert ds.StudyInstanceUID == match["study"]
        assert ds.SeriesInstanceUID == match["series"]
        assert ds.SOPInstanceUID != match["stem"]
        assert ds.Modality in MODALITIES[match["folder"]]
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.BodyPartExamined == "CHEST" and re.fullmatch(r"\d{3}Y", ds.PatientAge)
    assert len({ds.SOPInstanceUID for _, ds, _ in images}) == len(images)


def test_every_dicom_has_a_metadata_twin_and_vice_versa(warehouse: list[DemoObject]) -> None:
    twins: dict[str, set[str]] = {"dcm": set(), "json": set()}
    for obj in warehouse:
        match = IMAGE_KEY.match(obj.key)
        if match:
            twins[match["ext"]].add(f"{match['folder']}/{match['pid']}/{match['series']}/{match['stem']}")
    assert twins["dcm"] and twins["dcm"] == twins["json"]


def test_metadata_json_is_the_header_with_the_warehouse_quirks(
    warehouse: list[DemoObject], images: list[tuple[re.Match[str], FileDataset, bytes]]
) -> None:
    bodies = {obj.key: obj.body for obj in warehouse}
    inline_nulls = voi_nulls = 0
    for match, _, body in images:
        key = f"{PREFIX}{match['folder']}-metadata/{match['pid']}/{match['study']}/{match['series']}/"
        raw = bodies[f"{key}{match['stem']}.json"]
        data = json.loads(raw)
        assert not [tag for tag in data if tag.startswith("0002")]
        assert "7FE00010" not in data
        inline_nulls += raw.count(b'"InlineBinary": null')
        voi_nulls += "00283010" in data and data["00283010"] is None
        header = dcmread(BytesIO(body), stop_before_pixels=True)
        _assert_same_elements(header, Dataset.from_json(_warehouse_loader_fixup(raw)))
    assert inline_nulls >= 1
    assert voi_nulls >= 1


def test_plain_from_json_rejects_each_quirk_and_the_fixup_parses(warehouse: list[DemoObject]) -> None:
    raw = next(obj.body for obj in warehouse if obj.key.startswith(f"{PREFIX}xray-metadata/"))
    assert b'"InlineBinary": null' in raw and b'"00283010": null' in raw
    with pytest.raises(TypeError):
        Dataset.from_json(json.loads(raw))
    with pytest.raises(TypeError):  # InlineBinary fixed, the nulled VOI LUT Sequence still breaks it
        Dataset.from_json(_warehouse_loader_fixup(raw, top_level=False))
    with pytest.raises(TypeError):  # and vice versa
        Dataset.from_json(_warehouse_loader_fixup(raw, inline_binary=False))
    parsed = Dataset.from_json(_warehouse_loader_fixup(raw))
    assert parsed.Modality in {"DX", "CR"} and len(parsed.VOILUTSequence) == 0


@pytest.mark.parametrize(("folder", "size", "slices"), [("ct", 512, 24), ("mri", 256, 12)])
def test_volume_geometry_is_consistent(
    images: list[tuple[re.Match[str], FileDataset, bytes]], folder: str, size: int, slices: int
) -> None:
    volumes = _series(images, folder)
    assert volumes
    for stack in volumes.values():
        assert [int(ds.InstanceNumber) for ds in stack] == list(range(1, slices + 1))
        assert {(ds.Rows, ds.Columns) for ds in stack} == {(size, size)}
        assert len({ds.FrameOfReferenceUID for ds in stack}) == 1
        orientation = np.array(stack[0].ImageOrientationPatient, dtype=float)
        assert all(
            np.array_equal(np.array(ds.ImageOrientationPatient, dtype=float), orientation) for ds in stack
        )
        normal = np.cross(orientation[:3], orientation[3:])
        first = np.array(stack[0].ImagePositionPatient, dtype=float)
        thickness = float(stack[0].SliceThickness)
        for n, ds in enumerate(stack):
            offset = np.array(ds.ImagePositionPatient, dtype=float) - first
            assert np.allclose(offset, n * thickness * normal)
        middle = len(stack) // 2
        assert not np.array_equal(stack[0].pixel_array, stack[middle].pixel_array)
    if folder == "ct":
        patients = defaultdict(set)
        for stack in volumes.values():
            patients[stack[0].PatientID].add(stack[0].SeriesInstanceUID)
        assert len(patients) >= 2 and max(len(uids) for uids in patients.values()) == 2


def test_pixel_data_fits_bits_stored(images: list[tuple[re.Match[str], FileDataset, bytes]]) -> None:
    for _, ds, _ in images:
        assert (ds.BitsAllocated, ds.SamplesPerPixel, ds.PixelRepresentation) == (16, 1, 0)
        assert ds.HighBit == ds.BitsStored - 1
        pixels = np.frombuffer(ds.PixelData, dtype="<u2")
        assert pixels.size == ds.Rows * ds.Columns
        assert int(pixels.max()) < 1 << ds.BitsStored
        assert pixels.min() < pixels.max()


def test_xray_patients_have_one_image_per_study(
    images: list[tuple[re.Match[str], FileDataset, bytes]],
) -> None:
    studies: dict[str, int] = defaultdict(int)
    for match, _, _ in images:
        if match["folder"] == "xray":
            studies[match["study"]] += 1
    assert len(studies) >= 3 and set(studies.values()) == {1}


def test_clinical_json_matches_folders_and_cohort_formats(
    clinical: dict[str, dict[str, dict[str, Any]]], images: list[tuple[re.Match[str], FileDataset, bytes]]
) -> None:
    assert {match["pid"] for match, _, _ in images} <= set(clinical)
    data_counts = []
    for pid, files in clinical.items():
        kinds = {name.split("_")[0] for name in files}
        assert len(kinds) == 1, f"{pid} mixes data_ and status_ files"
        for name, record in files.items():
            assert CLINICAL_NAME.match(name)
            assert dt.date(2020, 1, 1) <= dt.date.fromisoformat(name[-15:-5]) <= dt.date(2021, 12, 31)
            assert record["Pseudonym"] == pid
            assert set(COMMON_FIELDS) <= set(record) and record["Sex"] in {"M", "F"}
            if kinds == {"status"}:
                assert record["SwabStatus"] == 0
                dt.datetime.strptime(record["SwabDate"], "%d/%m/%Y")
                for swab in record.get("SwabDates", []):
                    dt.datetime.strptime(swab["SwabDate"], "%d/%m/%Y")
            else:
                assert set(POSITIVE_FIELDS) <= set(record)
                for field in (f for f in POSITIVE_FIELDS if f.startswith("Date") and record[f]):
                    dt.datetime.strptime(record[field], "%m/%d/%Y")
        if kinds == {"data"}:
            data_counts.append(len(files))
    assert max(data_counts) >= 2
    assert len(data_counts) < len(clinical), "no negative patient"
    assert any("SwabDates" in record for files in clinical.values() for record in files.values())


def test_size_and_contents_stay_small(warehouse: list[DemoObject]) -> None:
    assert sum(len(obj.body) for obj in warehouse) < 60 * 2**20
    xray_bytes = [len(obj.body) for obj in warehouse if obj.key.startswith(f"{PREFIX}xray/")]
    assert len(xray_bytes) == 3 and max(xray_bytes) > 4 * 2**20


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk's dcmdump is not installed")
def test_dcmdump_reads_a_ct_slice_and_an_xray(warehouse: list[DemoObject], tmp_path: Path) -> None:
    for folder in ("ct", "xray"):
        obj = next(obj for obj in warehouse if obj.key.startswith(f"{PREFIX}{folder}/"))
        path = tmp_path / f"{folder}.dcm"
        path.write_bytes(obj.body)
        result = subprocess.run(
            ["dcmdump", str(path)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "E:" not in result.stderr and "(7fe0,0010) OW" in result.stdout
