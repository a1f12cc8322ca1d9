"""Tests for nccidfs.derived.image: every X-ray's PNG has the size its metadata twin predicts, is a valid
PNG, and shows the grey levels dcmtk's dcmj2pnm renders from the same file with the same VOI choice."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset

from nccidfs.demo.warehouse import DemoObject
from nccidfs.derived.image import build_png, encode_png, png_size

XRAY_KEY = re.compile(r"^training/xray(?P<meta>-metadata)?/(?P<image>.+)\.(dcm|json)$")
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmj2pnm") is None, reason="needs dcmtk's dcmj2pnm")
Grey = npt.NDArray[np.uint8]


@pytest.fixture(scope="module")
def xrays(warehouse: list[DemoObject]) -> dict[str, tuple[bytes, dict[str, object]]]:
    """Image path -> (DICOM bytes, parsed metadata twin) for every demo X-ray."""
    dicoms, twins = {}, {}
    for obj in warehouse:
        match = XRAY_KEY.match(obj.key)
        if match and match["meta"]:
            twins[match["image"]] = json.loads(obj.body)
        elif match:
            dicoms[match["image"]] = obj.body
    assert len(dicoms) == 3 and dicoms.keys() == twins.keys()  # DX large, DX small, CR
    return {image: (dicoms[image], twins[image]) for image in sorted(dicoms)}


def decode_png(data: bytes) -> Grey:
    """An independent reading of an 8-bit greyscale PNG: chunk CRCs checked, IDAT inflated by zlib."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks.append((kind, body))
        position += 12 + length
    assert [kind for kind, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    columns, rows, depth, colour, *_ = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, colour) == (8, 0)
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), dtype=np.uint8).reshape(rows, columns + 1)
    assert not raw[:, 0].any()  # every row unfiltered
    return raw[:, 1:]


def read_pgm(path: Path) -> Grey:
    """dcmj2pnm's default output: binary PGM, 8 bits."""
    magic, columns, rows, _, pixels = path.read_bytes().split(maxsplit=4)
    assert magic == b"P5"
    return np.frombuffer(pixels[: int(columns) * int(rows)], dtype=np.uint8).reshape(int(rows), int(columns))


def dcmj2pnm(dicom: bytes, options: list[str], tmp_path: Path) -> Grey:
    source, out = tmp_path / "image.dcm", tmp_path / "dcmtk.pgm"
    source.write_bytes(dicom)
    subprocess.run(["dcmj2pnm", *options, str(source), str(out)], check=True, capture_output=True, timeout=60)
    return read_pgm(out)


def edited(dicom: bytes, edit: Callable[[Dataset], None]) -> bytes:
    dataset = dcmread(BytesIO(dicom))
    edit(dataset)
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def window_only(dataset: Dataset) -> None:
    del dataset.VOILUTSequence


def monochrome1(dataset: Dataset) -> None:
    dataset.PhotometricInterpretation = "MONOCHROME1"


def no_voi(dataset: Dataset) -> None:
    del dataset.VOILUTSequence, dataset.WindowCenter, dataset.WindowWidth


def rescaled_window(dataset: Dataset) -> None:
    """A window in rescaled units: the modality LUT must run first."""
    del dataset.VOILUTSequence
    dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = 2, -300, "US"
    dataset.WindowCenter, dataset.WindowWidth = 2 * float(dataset.WindowCenter) - 400, 1500


def sigmoid(dataset: Dataset) -> None:
    del dataset.VOILUTSequence
    dataset.VOILUTFunction = "SIGMOID"


def monochrome1_window(dataset: Dataset) -> None:
    window_only(dataset)
    monochrome1(dataset)


def monochrome1_sigmoid(dataset: Dataset) -> None:
    sigmoid(dataset)
    monochrome1(dataset)


def monochrome1_no_voi(dataset: Dataset) -> None:
    no_voi(dataset)
    monochrome1(dataset)


# (edit of the demo image, dcmj2pnm options choosing the same VOI, largest allowed difference in levels)
CASES = {
    "voi-lut": (None, ["+Wl", "1"], 0),
    "window": (window_only, ["+Wi", "1"], 0),
    "rescaled-window": (rescaled_window, ["+Wi", "1"], 0),
    "sigmoid-window": (sigmoid, ["+Wi", "1"], 0),
    "monochrome1-voi-lut": (monochrome1, ["+Wl", "1"], 0),
    "monochrome1-window": (monochrome1_window, ["+Wi", "1"], 0),
    "monochrome1-sigmoid-window": (monochrome1_sigmoid, ["+Wi", "1"], 0),
    "no-voi-min-max": (no_voi, ["+Wm"], 0),
    "monochrome1-no-voi-min-max": (monochrome1_no_voi, ["+Wm"], 0),
}


@needs_dcmtk
@pytest.mark.parametrize("case", CASES)
def test_grey_levels_are_those_dcmj2pnm_renders(
    xrays: dict[str, tuple[bytes, dict[str, object]]], case: str, tmp_path: Path
) -> None:
    edit, options, tolerance = CASES[case]
    for dicom, _ in xrays.values():  # a 10-bit CR and two 12-bit DX
        if edit is not None:
            dicom = edited(dicom, edit)
        ours = decode_png(build_png(dicom)).astype(int)
        reference = dcmj2pnm(dicom, options, tmp_path).astype(int)
        assert ours.shape == reference.shape
        assert np.abs(ours - reference).max() <= tolerance
        assert ours.std() > 20  # a real picture, not a flat field that would match anything


def test_monochrome1_inverts_the_levels(xrays: dict[str, tuple[bytes, dict[str, object]]]) -> None:
    """Inverted, not mirrored level for level: dcmtk scales a MONOCHROME1 VOI LUT's output by 254/2**n
    from white, so a mirror of the MONOCHROME2 levels was one level brighter on most pixels."""
    for dicom, _ in xrays.values():
        normal = decode_png(build_png(dicom)).astype(int)
        inverted = decode_png(build_png(edited(dicom, monochrome1))).astype(int)
        assert np.abs(inverted - (255 - normal)).max() <= 1
        assert np.corrcoef(normal.ravel(), inverted.ravel())[0, 1] < -0.999


def test_the_size_follows_from_the_metadata_twin_alone(xrays: dict[str, tuple[bytes, dict[str, object]]]) -> None:
    for dicom, twin in xrays.values():
        rows, columns = (twin[tag]["Value"][0] for tag in ("00280010", "00280011"))  # type: ignore[index]
        assert len(build_png(dicom)) == png_size(rows, columns)


# Shapes around deflate's 65535-byte stored block: one row of 65534 pixels fills a block exactly.
@pytest.mark.parametrize("shape", [(1, 1), (1, 65534), (1, 65535), (2, 65534), (3, 7), (257, 255), (300, 1000)])
def test_any_shape_round_trips_at_the_predicted_size(shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    data = encode_png(grey)
    assert len(data) == png_size(*shape)
    assert np.array_equal(decode_png(data), grey)


def test_a_colour_image_is_refused(xrays: dict[str, tuple[bytes, dict[str, object]]]) -> None:
    def colour(dataset: Dataset) -> None:
        dataset.SamplesPerPixel, dataset.PhotometricInterpretation, dataset.PlanarConfiguration = 3, "RGB", 0
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
        dataset.PixelData = bytes(dataset.Rows * dataset.Columns * 3)

    with pytest.raises(ValueError, match="only greyscale"):
        build_png(edited(next(iter(xrays.values()))[0], colour))


def test_an_image_without_pixels_is_refused(xrays: dict[str, tuple[bytes, dict[str, object]]]) -> None:
    def strip(dataset: Dataset) -> None:
        del dataset.PixelData

    with pytest.raises(ValueError, match="not decodable"):
        build_png(edited(next(iter(xrays.values()))[0], strip))
