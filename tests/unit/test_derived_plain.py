"""Tests for nccidfs.derived.plain and the agreement check built on it: a plain image's header read by hand
gives exactly what pydicom gives (real scanner files shipped with pydicom and pydicom-data, crafted ones
with sequences of every length), and anything the walk does not read exactly is left to pydicom."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from nccidfs.derived.agreement import CHECKED, Expected, checked_image, checked_plain_pixels, expected
from nccidfs.derived.pixels import read_pixels
from nccidfs.derived.plain import _WANTED, MAX_DEPTH, plain_header
from nccidfs.derived.volume import VolumePlan, encode_checked, encode_slices, plan_volume
from tests import crafted

WANTED = [keyword for keyword, _ in _WANTED.values()]
# Real files the walk must read itself: GE and Toshiba CT and MR, explicit and implicit VR, with trailing
# padding after the pixels, rescaled and not.
PLAIN_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "693_UNCI.dcm", "MR2_UNCI.dcm",
               "MR-SIEMENS-DICOM-WithOverlays.dcm", "mlut_18.dcm"]


def shipped_files() -> list[str]:
    """Every DICOM file pydicom and pydicom-data install (read offline)."""
    return sorted(path for path in get_testdata_files("*") if path.endswith(".dcm"))


def pydicom_numbers(dataset: Dataset, keyword: str) -> tuple[float, ...] | None:
    """The element's numbers as the agreement check reads them from pydicom; None when absent."""
    if keyword not in dataset:
        return None
    raw = dataset.get(keyword)
    items = [] if raw is None or raw == "" else list(raw) if isinstance(raw, MultiValue | list) else [raw]
    return tuple(float(item) for item in items)


def promised_by_image(dataset: Dataset) -> Expected:
    """What a twin made from this very image promises."""
    return Expected(tuple(pydicom_numbers(dataset, keyword) or () for keyword in CHECKED))


def test_every_element_the_agreement_check_reads_is_read_by_the_walk() -> None:
    assert set(CHECKED) <= set(WANTED)


@pytest.mark.parametrize("path", shipped_files(), ids=lambda path: Path(path).name)
def test_a_shipped_file_read_by_hand_gives_what_pydicom_gives(path: str) -> None:
    """Values, pixel bytes and stored values as pydicom's; or None, and pydicom reads the file."""
    data = Path(path).read_bytes()
    header = plain_header(data)
    if header is None:
        return
    dataset = dcmread(BytesIO(data), force=True)
    assert dataset.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    for keyword in WANTED:
        assert header.values.get(keyword) == pydicom_numbers(dataset, keyword), keyword
    assert data[header.pixels_at:header.pixels_at + header.pixels_length] == dataset.PixelData
    pixels = checked_plain_pixels(data, promised_by_image(dataset))
    if pixels is not None:
        reference = read_pixels(data)[1]
        assert pixels.dtype == reference.dtype and np.array_equal(pixels, reference)


@pytest.mark.parametrize("name", PLAIN_FILES)
def test_real_plain_ct_and_mr_slices_are_read_without_pydicom(name: str) -> None:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not installed"
    data = Path(path).read_bytes()
    pixels = checked_plain_pixels(data, promised_by_image(dcmread(path)))
    assert pixels is not None and np.array_equal(pixels, read_pixels(data)[1])


def crafted_ct(syntax: str = ExplicitVRLittleEndian, **changes: Any) -> tuple[bytes, Dataset]:
    ds = crafted.dataset("CT", 8, 8, "1.2.3", 1, transfer_syntax=syntax)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return crafted.encode(ds), ds


def undefined_lengths(dataset: Dataset) -> None:
    """Every sequence and item of the dataset written with undefined length and delimiters, as many
    scanners write them (pydicom writes defined lengths)."""
    for element in dataset:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                undefined_lengths(item)


@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_sequences_nested_and_private_of_either_length_are_walked_over(syntax: str, undefined: bool) -> None:
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4"
    outer = Dataset()
    outer.ReferencedImageSequence = Sequence([inner, inner])
    _, ds = crafted_ct(syntax, SourceImageSequence=Sequence([outer, Dataset()]))
    ds.add_new(0x00091010, "SQ", Sequence([outer]))  # a private sequence: implicit VR says SQ by its length
    if undefined:
        undefined_lengths(ds)
    data = crafted.encode(ds)
    assert (b"\xfe\xff\xdd\xe0" in data) == undefined  # a sequence delimiter
    header = plain_header(data)
    assert header is not None
    assert header.values["RescaleIntercept"] == (-1024.0,) and header.values["PixelSpacing"] == (0.75, 0.75)
    pixels = checked_plain_pixels(data, expected(crafted.twin(ds)))
    assert pixels is not None and np.array_equal(pixels, read_pixels(data)[1])


def test_a_sequence_nested_past_the_depth_is_left_to_pydicom() -> None:
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    for _ in range(MAX_DEPTH + 1):
        parent = Dataset()
        parent.ReferencedImageSequence = Sequence([item])
        item = parent
    _, ds = crafted_ct(SourceImageSequence=Sequence([item]))
    undefined_lengths(ds)
    assert plain_header(crafted.encode(ds)) is None


@pytest.mark.parametrize("text", ["1.5", " 1.5", "1.5 ", "-0", "+2", "1e3", "-1.25E-2", ".5", "5.", "007",
                                  "0.75\\0.7", " 1 \\ 2 "])
def test_decimal_strings_read_as_pydicom_reads_them(text: str) -> None:
    ds = crafted.dataset("CT", 8, 8, "1.2.3", 1)
    ds.add_new(0x00281052, "DS", text)  # RescaleIntercept
    data = crafted.encode(ds)
    header = plain_header(data)
    assert header is not None
    assert header.values["RescaleIntercept"] == pydicom_numbers(dcmread(BytesIO(data)), "RescaleIntercept")


@pytest.mark.parametrize("text", ["1,5", "nan", "inf", "1.5.2", "--1", "0x10", "1\\\\2"])
def test_a_decimal_string_that_is_no_plain_number_is_left_to_pydicom(text: str) -> None:
    written = b"-1024.25"  # RescaleIntercept: pydicom writes no invalid DS, so its bytes are replaced
    data, _ = crafted_ct(RescaleIntercept=written.decode())
    assert data.count(written) == 1
    assert plain_header(data.replace(written, text.encode().ljust(len(written)))) is None


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_transfer_syntaxes_are_left_to_pydicom(syntax: str) -> None:
    data, _ = crafted_ct(syntax)
    assert plain_header(data) is None


def test_compressed_pixels_are_left_to_pydicom() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    dataset = dcmread(path)
    dataset.compress("1.2.840.10008.1.2.5")  # RLE: encapsulated pixel data
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert plain_header(buffer.getvalue()) is None


def test_a_file_without_preamble_cut_short_or_without_pixels_is_left_to_pydicom() -> None:
    data, ds = crafted_ct()
    assert plain_header(data) is not None
    assert plain_header(data[132:]) is None  # no preamble
    assert plain_header(data[:-1]) is None  # the pixels cut short
    at = data.index(struct.pack("<HH", 0x0028, 0x0030))  # PixelSpacing
    assert plain_header(data[:at + 5]) is None  # inside an element's header
    del ds.PixelData
    assert plain_header(crafted.encode(ds)) is None


def test_tags_out_of_order_or_repeated_are_left_to_pydicom() -> None:
    data, _ = crafted_ct()
    columns_at = data.index(struct.pack("<HH2sH", 0x0028, 0x0011, b"US", 2))
    rows_at = data.index(struct.pack("<HH2sH", 0x0028, 0x0010, b"US", 2))
    assert columns_at == rows_at + 10
    repeated = data[:columns_at] + data[rows_at:rows_at + 10] + data[columns_at + 10:]  # Rows twice
    swapped = data[:rows_at] + data[columns_at:columns_at + 10] + data[rows_at:rows_at + 10] + data[columns_at + 10:]
    assert plain_header(repeated) is None and plain_header(swapped) is None


def test_a_wanted_element_of_another_vr_is_left_to_pydicom() -> None:
    ds = crafted.dataset("CT", 8, 8, "1.2.3", 1)
    ds.add_new(0x00281053, "FD", 1.0)  # RescaleSlope as a double, not a decimal string
    assert plain_header(crafted.encode(ds)) is None


def test_an_image_that_differs_from_its_twin_is_left_to_the_full_check_which_says_why() -> None:
    data, ds = crafted_ct()
    twin = crafted.twin(ds)
    twin["00281052"]["Value"] = [0]
    assert checked_plain_pixels(data, expected(twin)) is None
    with pytest.raises(ValueError, match="RescaleIntercept is -1024, its metadata twin says 0"):
        checked_image(data, expected(twin))


@pytest.mark.parametrize("changes", [{"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7, "PixelData": bytes(64)},
                                     {"NumberOfFrames": 2, "PixelData": bytes(256)},
                                     {"PixelRepresentation": 2}])
def test_pixels_pydicom_decodes_are_left_to_it(changes: dict[str, Any]) -> None:
    data, ds = crafted_ct(**changes)
    assert plain_header(data) is not None
    assert checked_plain_pixels(data, promised_by_image(ds)) is None


def test_a_volume_s_slices_read_by_hand_are_the_bytes_pydicom_s_path_makes() -> None:
    images, twins = {}, {}
    for instance in range(1, 5):
        ds = crafted.dataset("CT", 8, 8, "1.2.3", instance)
        images[str(instance)], twins[str(instance)] = crafted.encode(ds), crafted.twin(ds)
    plan = plan_volume(twins)
    assert isinstance(plan, VolumePlan)
    for index, ident in enumerate(plan.slices):
        promised = expected(twins[ident])
        assert checked_plain_pixels(images[ident], promised) is not None
        ours = encode_checked(plan, [index], images[ident], promised)
        theirs = encode_slices(plan, [index], *checked_image(images[ident], promised))
        assert [bytes(view) for view in ours] == [bytes(view) for view in theirs]
