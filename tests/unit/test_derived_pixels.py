"""Tests for nccidfs.derived.pixels: the base install decodes every transfer syntax hospitals send, to the
values of the uncompressed original (lossless) or of dcmtk's own decoder (lossy), for real files shipped
with pydicom and pydicom-data and for a demo CT slice compressed here by dcmtk and pydicom's encoders;
and a twin that names a transfer syntax no decoder reads is known undecodable before any image is read."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from nccidfs.demo.warehouse import DemoObject
from nccidfs.derived.pixels import native_pixels, read_pixels, undecodable_reason
from nccidfs.derived.volume import Rejection, plan_volume

needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="needs dcmtk")


def shipped(name: str) -> bytes:
    """A file of pydicom's test data or pydicom-data's (both installed, read offline)."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not installed"
    return Path(path).read_bytes()


def pixels(dicom: bytes) -> np.ndarray:
    return read_pixels(dicom)[1]


# (compressed file, uncompressed file with the same stored values): real scanner files in every
# lossless syntax, and the lossy ones whose decoded original the data set ships (the _UNCI files).
SAME_VALUES = [
    ("MR_small_implicit.dcm", "MR_small.dcm"),  # Toshiba MR, implicit VR little endian
    ("MR_small_bigendian.dcm", "MR_small.dcm"),  # explicit VR big endian
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm"),  # enhanced MR, 10 frames
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),  # Philips MR, 1024x1024
    ("MR2_J2KI.dcm", "MR2_UNCI.dcm"),  # the same, JPEG 2000 lossy
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),  # Philips CR, MONOCHROME1, 15 bits
    ("RG1_J2KI.dcm", "RG1_UNCI.dcm"),
    ("693_J2KR.dcm", "693_UNCR.dcm"),  # CT, JPEG 2000 lossless
]


@pytest.mark.parametrize(("compressed", "reference"), SAME_VALUES)
def test_real_compressed_files_decode_to_their_uncompressed_values(compressed: str, reference: str) -> None:
    ours, expected = pixels(shipped(compressed)), pixels(shipped(reference))
    assert ours.shape == expected.shape
    assert np.array_equal(ours.astype(np.int64), expected.astype(np.int64))


def dcmtk_decoded(dicom: bytes, tool: str, tmp_path: Path) -> np.ndarray:
    """The stored values dcmtk's decoder (dcmdjpeg, dcmdjpls) gives for a compressed file."""
    source, out = tmp_path / "in.dcm", tmp_path / "out.dcm"
    source.write_bytes(dicom)
    subprocess.run([tool, str(source), str(out)], check=True, capture_output=True, timeout=60)
    return dcmread(out).pixel_array


def assert_like_dcmtk_idct(ours: np.ndarray, reference: np.ndarray) -> None:
    """Lossy DCT JPEG: two decoders' inverse transforms may round a few values one level apart."""
    difference = np.abs(ours.astype(np.int64) - reference.astype(np.int64))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.1


@needs_dcmtk
@pytest.mark.parametrize(("name", "tool"), [
    ("JPEG-LL.dcm", "dcmdjpeg"),  # GE NM, JPEG lossless process 14
    ("JPGLosslessP14SV1_1s_1f_8b.dcm", "dcmdjpeg"),  # Philips US, JPEG lossless SV1
    ("JPEGLSNearLossless_16.dcm", "dcmdjpls"),
    ("JPEGLSNearLossless_08.dcm", "dcmdjpls"),
])  # fmt: skip
def test_real_jpeg_and_jpeg_ls_files_decode_as_dcmtk_decodes_them(name: str, tool: str, tmp_path: Path) -> None:
    dicom = shipped(name)
    assert np.array_equal(pixels(dicom).astype(np.int64), dcmtk_decoded(dicom, tool, tmp_path).astype(np.int64))


@needs_dcmtk
def test_a_real_jpeg_extended_file_decodes_as_dcmtk_decodes_it(tmp_path: Path) -> None:
    dicom = shipped("JPGExtended.dcm")  # GE NM, JPEG extended 12-bit
    assert_like_dcmtk_idct(pixels(dicom), dcmtk_decoded(dicom, "dcmdjpeg", tmp_path))


def test_a_deflated_file_decodes() -> None:
    dataset, values = read_pixels(shipped("image_dfl.dcm"))
    assert dataset.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert values.shape == (512, 512) and values.std() > 0


# --- the demo CT slice, compressed here in each syntax -------------------------------------------------


@pytest.fixture(scope="module")
def ct_slice(warehouse: list[DemoObject]) -> bytes:
    """A 512x512, 12-bit CT image of the demo warehouse, explicit VR little endian."""
    return next(o.body for o in warehouse if o.key.startswith("training/ct/") and o.key.endswith(".dcm"))


def encoded(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def eight_bit(dicom: bytes) -> bytes:
    """The image scaled to 8 bits (baseline JPEG holds nothing deeper)."""
    dataset = dcmread(BytesIO(dicom))
    dataset.PixelData = (dataset.pixel_array >> 4).astype(np.uint8).tobytes()
    dataset.BitsAllocated = dataset.BitsStored = 8
    dataset.HighBit = 7
    return encoded(dataset)


def dcmtk(tool: str, *options: str) -> Callable[[bytes, Path], bytes]:
    def convert(dicom: bytes, tmp_path: Path) -> bytes:
        source, out = tmp_path / "plain.dcm", tmp_path / "converted.dcm"
        source.write_bytes(dicom)
        subprocess.run([tool, *options, str(source), str(out)], check=True, capture_output=True, timeout=60)
        return out.read_bytes()

    return convert


# transfer syntax, how to make it, the decoder that gives the reference for a lossy one
CRAFTED = [
    (ImplicitVRLittleEndian, dcmtk("dcmconv", "+ti"), None),
    (ExplicitVRBigEndian, dcmtk("dcmconv", "+tb"), None),
    (DeflatedExplicitVRLittleEndian, dcmtk("dcmconv", "+td"), None),
    (RLELossless, dcmtk("dcmcrle"), None),
    (JPEGLossless, dcmtk("dcmcjpeg", "+el"), None),
    (JPEGLosslessSV1, dcmtk("dcmcjpeg", "+e1"), None),
    (JPEGLSLossless, dcmtk("dcmcjpls", "+el"), None),
    (JPEGLSNearLossless, dcmtk("dcmcjpls", "+en", "+md", "3"), "dcmdjpls"),
]


@needs_dcmtk
@pytest.mark.parametrize(("syntax", "convert", "decoder"), CRAFTED, ids=[c[0].name for c in CRAFTED])
def test_each_transfer_syntax_made_by_dcmtk_decodes(ct_slice: bytes, syntax: str,
                                                   convert: Callable[[bytes, Path], bytes], decoder: str | None,
                                                   tmp_path: Path) -> None:
    dicom = convert(ct_slice, tmp_path)
    dataset, ours = read_pixels(dicom)
    assert dataset.file_meta.TransferSyntaxUID == syntax
    expected = pixels(ct_slice) if decoder is None else dcmtk_decoded(dicom, decoder, tmp_path)
    assert np.array_equal(ours.astype(np.int64), expected.astype(np.int64))
    if decoder is not None:  # lossy: the check above must not be one of the original's values
        assert not np.array_equal(ours, pixels(ct_slice))


@needs_dcmtk
@pytest.mark.parametrize(("syntax", "option", "depth"), [(JPEGBaseline8Bit, "+eb", eight_bit),
                                                         (JPEGExtended12Bit, "+ee", lambda dicom: dicom)])
def test_lossy_jpeg_made_by_dcmtk_decodes_as_dcmtk_decodes_it(ct_slice: bytes, syntax: str, option: str,
                                                             depth: Callable[[bytes], bytes], tmp_path: Path) -> None:
    original = depth(ct_slice)
    dicom = dcmtk("dcmcjpeg", option)(original, tmp_path)
    dataset, ours = read_pixels(dicom)
    assert dataset.file_meta.TransferSyntaxUID == syntax
    assert_like_dcmtk_idct(ours, dcmtk_decoded(dicom, "dcmdjpeg", tmp_path))
    # dcmtk may shift stored values into the codec's range and the rescale with them: compare modality values
    ours_values, original_values = (apply_modality_lut(*reversed(read_pixels(d))) for d in (dicom, original))
    assert not np.array_equal(ours_values, original_values)
    assert np.abs(ours_values - original_values).mean() < 0.01 * float(np.ptp(original_values))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEG2000])
def test_jpeg_2000_made_by_pydicom_decodes(ct_slice: bytes, syntax: str) -> None:
    dataset = dcmread(BytesIO(ct_slice))
    original = dataset.pixel_array.copy()
    options = {"j2k_cr": [20]} if syntax == JPEG2000 else {}
    dataset.compress(syntax, **options)
    decoded_dataset, ours = read_pixels(encoded(dataset))
    assert decoded_dataset.file_meta.TransferSyntaxUID == syntax
    error = np.abs(ours.astype(np.int64) - original.astype(np.int64))
    if syntax == JPEG2000Lossless:
        assert error.max() == 0
    else:  # lossy at 20:1: close to the original, and not equal to it
        assert 0 < error.mean() < 0.02 * float(original.max())


# --- deciding from the twin ---------------------------------------------------------------------------


def twin_naming(uid: str) -> dict[str, object]:
    return {"00020010": {"vr": "UI", "Value": [uid]}}


def test_a_twin_naming_a_syntax_without_a_decoder_gives_the_reason() -> None:
    reason = undecodable_reason(twin_naming("1.2.840.10008.1.2.4.100"))  # MPEG2 video
    assert reason is not None and "MPEG2" in reason and "1.2.840.10008.1.2.4.100" in reason
    assert "unknown" in (undecodable_reason(twin_naming("1.2.3.4.5")) or "")


@pytest.mark.parametrize("uid", [ExplicitVRBigEndian, RLELossless, JPEGLosslessSV1, JPEGLSNearLossless, JPEG2000])
def test_a_twin_naming_a_syntax_with_a_decoder_is_decodable(uid: str) -> None:
    assert undecodable_reason(twin_naming(uid)) is None


def test_a_twin_without_file_meta_is_taken_as_decodable() -> None:
    assert undecodable_reason({}) is None
    assert undecodable_reason({"00020010": {"vr": "UI"}}) is None


def test_a_series_whose_twins_name_an_undecodable_syntax_is_no_volume(warehouse: list[DemoObject]) -> None:
    twins = {o.key.rsplit("/", 1)[1]: json.loads(o.body) for o in warehouse
             if o.key.startswith("training/mri-metadata/")}
    first = sorted(twins)[0]
    twins[first] = {**twins[first], **twin_naming("1.2.840.10008.1.2.4.100")}
    outcome = plan_volume(twins)
    assert isinstance(outcome, Rejection)
    assert "MPEG2" in outcome.reason and "no installed decoder" in outcome.reason


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("signed", [0, 1])
@pytest.mark.parametrize("stored", [8, 10, 12, 15, 16])
def test_uncompressed_16_bit_pixels_read_directly_are_what_pydicom_decodes(syntax: str, signed: int,
                                                                           stored: int) -> None:
    """The direct read of native 16-bit pixels clears or sign-extends the bits above BitsStored exactly as
    pydicom's decoder does, whatever those bits hold."""
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = stored, stored - 1, signed
    rng = np.random.default_rng(stored * 2 + signed)
    dataset.PixelData = rng.integers(0, 1 << 16, dataset.Rows * dataset.Columns, dtype="<u2").tobytes()
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    read, ours = read_pixels(buffer.getvalue())
    direct = native_pixels(read)
    reference = dcmread(BytesIO(buffer.getvalue())).pixel_array
    assert direct is not None and np.array_equal(direct, ours)  # the direct read is the one used
    assert ours.dtype == reference.dtype
    assert np.array_equal(ours, reference)
    assert len(np.unique(ours)) >= 200
