"""Tests for nccidfs.dicom: the tags from a metadata JSON twin and from the head of the DICOM agree, carry
the image's real values, never come from truncated bytes, and garbage gives an empty answer, not an error."""

from __future__ import annotations

import json
import logging
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom import dcmread, dcmwrite
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from nccidfs.cache import DiskCache
from nccidfs.config import ReadConfig
from nccidfs.demo.warehouse import generate_warehouse
from nccidfs.dicom import (
    MAX_VALUE_BYTES,
    json_document,
    tags_from_dicom_header,
    tags_from_metadata_json,
    undeflate,
    xattr_name,
)
from nccidfs.fetch import Fetcher
from nccidfs.xattrs import MAX_HEADER_BYTES, TagReader
from tests import crafted
from tests.fakes import MemoryStore

IMAGE_KEY = re.compile(
    r"^training/(?P<folder>ct|mri|xray)/(?P<pid>[^/]+)/(?P<study>[^/]+)/(?P<series>[^/]+)/(?P<stem>[^/]+)\.dcm$"
)
MODALITIES = {"ct": {"CT"}, "mri": {"MR"}, "xray": {"DX", "CR"}}
REQUIRED = (
    "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "StudyDate", "SeriesDescription",
    "BodyPartExamined", "Rows", "Columns", "InstanceNumber",
)  # fmt: skip
HIDDEN_VRS = {"SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN"}
# Pixel Data's element header in Explicit VR Little Endian, as the demo writes it: tag, "OW", 2 reserved bytes.
PIXEL_HEADER = b"\xe0\x7f\x10\x00OW\x00\x00"
PIXEL_HEADER_LENGTH = 12  # the 8 bytes above plus a 4-byte length


@dataclass(frozen=True)
class Image:
    key: re.Match[str]
    dicom: bytes
    metadata: bytes

    @property
    def header_end(self) -> int:
        """Offset of the Pixel Data element: every byte before it is header."""
        return self.dicom.index(PIXEL_HEADER)

    def dataset(self) -> FileDataset:
        return dcmread(BytesIO(self.dicom))


@pytest.fixture(scope="module")
def images() -> list[Image]:
    """Every image of a small demo warehouse with its metadata twin (all modalities, both JSON quirks)."""
    bodies = {obj.key: obj.body for obj in generate_warehouse(ct_slices=2)}
    found = []
    for key, body in bodies.items():
        if match := IMAGE_KEY.match(key):
            twin = f"training/{match['folder']}-metadata/{match['pid']}/{match['study']}/{match['series']}"
            found.append(Image(match, body, bodies[f"{twin}/{match['stem']}.json"]))
    assert {image.key["folder"] for image in found} == set(MODALITIES)
    return found


def first(images: list[Image], folder: str) -> Image:
    return next(image for image in images if image.key["folder"] == folder)


def write(ds: Dataset, **encoding: bool) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, **encoding)
    return buffer.getvalue()


def warehouse_json(ds: Dataset) -> bytes:
    """A dataset's metadata twin as the warehouse loader writes it (the demo's quirks, on any dataset)."""

    def nullify(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: None if key == "InlineBinary" else nullify(value) for key, value in node.items()}
        if isinstance(node, list):
            return [nullify(item) for item in node]
        return node

    document = nullify(ds.to_json_dict(bulk_data_threshold=10**20))
    if "00283010" in document:
        document["00283010"] = None
    return json.dumps(document).encode()


def test_xattr_name() -> None:
    assert xattr_name("PatientID") == "user.dicom.PatientID"


def test_metadata_tags_carry_the_image_values(images: list[Image]) -> None:
    for image in images:
        tags, ds = tags_from_metadata_json(image.metadata), image.dataset()
        assert set(REQUIRED) <= tags.keys(), image.key[0]
        assert tags["PatientID"] == tags["PatientName"] == image.key["pid"]
        assert tags["StudyInstanceUID"] == image.key["study"]
        assert tags["SeriesInstanceUID"] == image.key["series"]
        assert tags["Modality"] in MODALITIES[image.key["folder"]]
        assert tags["Rows"] == str(ds.Rows) and tags["Columns"] == str(ds.Columns)
        assert tags["InstanceNumber"] == str(ds.InstanceNumber)
        assert tags["StudyDate"] == ds.StudyDate and re.fullmatch(r"\d{8}", tags["StudyDate"])
        assert tags["SeriesDescription"] == ds.SeriesDescription
        assert tags["BodyPartExamined"] == "CHEST"
        assert tags["PixelSpacing"].count("\\") == 1
        if image.key["folder"] == "ct":
            assert tags["SliceThickness"] in {"1.25", "2.5"}
            assert tags["ImageType"] == "ORIGINAL\\PRIMARY\\AXIAL"
            assert tags["RescaleIntercept"] == "-1024"
        # Empty in the image (AccessionNumber, PatientBirthDate), so absent here.
        assert "AccessionNumber" not in tags and "PatientBirthDate" not in tags


def test_only_standard_text_like_elements_appear(images: list[Image]) -> None:
    for image in images:
        tags = tags_from_metadata_json(image.metadata)
        for keyword, value in tags.items():
            tag = tag_for_keyword(keyword)
            assert tag is not None and not (tag >> 16) % 2, keyword  # standard and not private
            assert dictionary_VR(tag) not in HIDDEN_VRS, keyword
            assert value and isinstance(value, str)
        assert "VOILUTSequence" not in tags and "PixelData" not in tags
        assert "TransferSyntaxUID" not in tags  # the file meta group is not in the twin


def test_warehouse_json_quirks_are_real_and_handled(images: list[Image]) -> None:
    xray = first(images, "xray")
    document = json.loads(xray.metadata)
    assert document["00283010"] is None
    assert document["00091010"] == {"vr": "OB", "InlineBinary": None}
    with pytest.raises(TypeError):  # pydicom's own reader cannot take the warehouse JSON as it is
        Dataset.from_json(xray.metadata.decode())
    without_nulled_binaries = {key: value for key, value in document.items() if key != "00091010"}
    with pytest.raises(TypeError):  # and the nulled VOI LUT Sequence alone is enough to break it
        Dataset.from_json(without_nulled_binaries)
    tags = tags_from_metadata_json(xray.metadata)
    assert tags["WindowWidth"] == str(int(xray.dataset().WindowWidth))  # integral DS values lose any ".0"
    assert tags["PatientID"] == xray.key["pid"]


def test_header_agrees_with_metadata_json(images: list[Image], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    for image in images:
        expected = tags_from_metadata_json(image.metadata)
        exact = image.header_end + PIXEL_HEADER_LENGTH
        for size in (exact, exact + 1, 2 * exact, len(image.dicom)):
            assert tags_from_dicom_header(image.dicom[:size]) == expected, (image.key[0], size)
        assert tags_from_dicom_header(image.dicom, complete=True) == expected
    assert not caplog.records, "a well-formed header logs nothing"


@pytest.mark.parametrize(
    "encoding",
    [{"implicit_vr": True, "little_endian": True}, {"implicit_vr": False, "little_endian": False}],
    ids=["implicit-little", "explicit-big"],
)
def test_raw_dataset_without_file_meta(images: list[Image], encoding: dict[str, bool]) -> None:
    """A bare dataset (no preamble, no file meta) in another transfer syntax reads the same."""
    image = first(images, "ct")
    ds = image.dataset()
    del ds.file_meta
    ds.preamble = None
    raw = write(ds, **encoding)
    pixel_tag = b"\xe0\x7f\x10\x00" if encoding["little_endian"] else b"\x7f\xe0\x00\x10"
    assert tags_from_dicom_header(raw) == tags_from_metadata_json(image.metadata)
    assert tags_from_dicom_header(raw[: raw.index(pixel_tag)]) is None


@pytest.mark.parametrize("folder", ["ct", "xray"])
def test_truncated_heads_give_none(images: list[Image], folder: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    """Every cut short of the Pixel Data element header, from the empty head through 128 bytes, 1 KiB, a cut
    inside the transfer syntax UID or character set, to the whole header without the Pixel Data tag."""
    image = first(images, folder)
    end = image.header_end + PIXEL_HEADER_LENGTH
    for size in range(end):
        assert tags_from_dicom_header(image.dicom[:size]) is None, size
    assert tags_from_dicom_header(image.dicom[:end]) is not None
    assert not caplog.records, "an expected short read logs nothing"


@pytest.mark.parametrize("folder", ["ct", "xray"])
def test_every_cut_after_a_decoy_pixel_tag_gives_none(images: list[Image], folder: str) -> None:
    """A Pixel Data tag inside an earlier value lets every cut reach pydicom; none of its partial datasets
    (cut inside a value, a nested sequence or at an element boundary) may pass for the whole header."""
    image = first(images, folder)
    ds = image.dataset()
    ds[0x00091010].value = PIXEL_HEADER * 8  # the demo's private OB blob, early in the header
    dicom = write(ds)
    decoy = dicom.index(PIXEL_HEADER)
    end = dicom.index(PIXEL_HEADER, decoy + len(PIXEL_HEADER) * 8)
    for size in range(decoy, end + PIXEL_HEADER_LENGTH):
        assert tags_from_dicom_header(dicom[:size]) is None, size
    full = tags_from_dicom_header(dicom[: end + PIXEL_HEADER_LENGTH])
    assert full == tags_from_metadata_json(image.metadata)


def test_complete_object(images: list[Image]) -> None:
    """complete=True: a dataset without Pixel Data is read to its end; a file cut inside a value is not."""
    image = first(images, "mri")
    ds = image.dataset()
    del ds.PixelData
    no_pixels = write(ds)
    assert tags_from_dicom_header(no_pixels) is None
    assert tags_from_dicom_header(no_pixels, complete=True) == tags_from_metadata_json(image.metadata)
    cut_in_uid = image.dicom.index(image.key["series"].encode()) + 5
    assert tags_from_dicom_header(image.dicom[:cut_in_uid], complete=True) == {}


def test_values_are_formatted_the_same_from_both_sources() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = PersonName("Müller^Hans=ミュラー^ハンス")
    ds.PatientID = "  P1  "
    ds.ImageType = ["DERIVED", "", "AXIAL"]
    ds.KVP = "120"
    ds.SliceThickness = "1.0E-3"
    ds.PixelSpacing = ["0.70", "0.5"]
    ds.InstanceNumber = "007"
    ds.add_new(0x00189074, "DT", "")  # empty: left out
    ds.ExaminedBodyThickness = 0.1  # FL: no float32 noise
    ds.FrameIncrementPointer = [0x00200032, 0x00280010]  # AT
    ds.ImageComments = " notes\n" + "é" * MAX_VALUE_BYTES  # LT keeps its leading space, is cut at a char
    ds.add_new(0x00290010, "LO", "VENDOR")  # private creator: left out
    ds.add_new(0x00280000, "UL", 0)  # group length: left out
    ds.add_new(0x00282000, "OB", b"\x00\x01")  # ICCProfile, binary: left out
    ds.ReferencedImageSequence = [Dataset()]  # sequence: left out

    from_header = tags_from_dicom_header(write(ds, implicit_vr=False, little_endian=True), complete=True)
    from_json = tags_from_metadata_json(warehouse_json(ds))
    assert from_header == from_json
    comments = from_json.pop("ImageComments")
    assert from_json == {
        "SpecificCharacterSet": "ISO_IR 192",
        "PatientName": "Müller^Hans",
        "PatientID": "P1",
        "ImageType": "DERIVED\\\\AXIAL",
        "KVP": "120",
        "SliceThickness": "0.001",
        "PixelSpacing": "0.7\\0.5",
        "InstanceNumber": "7",
        "ExaminedBodyThickness": "0.1",
        "FrameIncrementPointer": "(0020,0032)\\(0028,0010)",
    }
    assert comments.startswith(" notes\né") and comments.endswith("é")
    assert len(comments.encode()) == MAX_VALUE_BYTES - 1  # 7 + 2 * 2044 bytes: the next "é" did not fit


@pytest.mark.parametrize(
    "raw",
    [b"", b"null", b"[]", b'"text"', b"{", b"\xff\xfe\x00", b"[" * 100_000, b'{"x": 1, "0010": {}}'],
    ids=["empty", "null", "list", "string", "broken", "not-utf8", "deep", "no-tags"],
)
def test_json_garbage_gives_empty(raw: bytes) -> None:
    assert tags_from_metadata_json(raw) == {}


def test_json_malformed_elements_cost_only_themselves() -> None:
    document = {
        "00100020": {"vr": "LO", "Value": ["P1"]},
        "00100010": {"vr": "PN", "Value": ["not an object"]},
        "00080060": {"vr": "CS", "Value": [{"nested": 1}]},
        "00280010": {"vr": "US", "Value": ["abc"]},
        "00080020": {"vr": "DA"},
        "00180050": None,
        "00091010": {"vr": "OB", "InlineBinary": None},
    }
    assert tags_from_metadata_json(json.dumps(document).encode()) == {"PatientID": "P1"}


@pytest.mark.parametrize(
    "head",
    [b"", b"\x00" * 4096, bytes(range(256)) * 64, b"not a dicom file " * 500, b"\xe0\x7f\x10\x00OW" * 100],
    ids=["empty", "zeros", "bytes", "text", "pixel-tags"],
)
def test_dicom_garbage_gives_none_or_empty(head: bytes) -> None:
    assert tags_from_dicom_header(head) is None
    assert tags_from_dicom_header(head, complete=True) == {}


class Twins:
    """The one namespace call TagReader makes: look a metadata twin up in the store."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def lookup(self, path: str) -> SimpleNamespace:
        return SimpleNamespace(obj=self._store.info("training" + path))


def test_tags_read_at_most_a_mebibyte_of_a_huge_twin_or_a_huge_non_dicom(
        tmp_path: Path, images: list[Image], caplog: pytest.LogCaptureFixture) -> None:
    image = first(images, "ct")
    huge = b"\0" * (MAX_HEADER_BYTES * 3)
    store = MemoryStore({"training/ct/P/S/E/a.dcm": image.dicom, "training/ct-metadata/P/S/E/a.json": huge,
                         "training/ct/P/S/E/b.dcm": huge, "training/ct-metadata/P/S/E/b.json": huge})
    cache = DiskCache(tmp_path, 1 << 26, "b", 32 * 1024)
    reader = TagReader(Twins(store), Fetcher(store, cache, ReadConfig(), 5.0))  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="nccidfs.xattrs"):
        for _ in range(2):
            # A twin over the bound is not read at all; the header still gives the image's tags.
            assert reader.tags("/ct/P/S/E/a.dcm", store.info("training/ct/P/S/E/a.dcm"))["PatientID"]
            assert reader.tags("/ct/P/S/E/b.dcm", store.info("training/ct/P/S/E/b.dcm")) == {}
    assert all(not key.endswith(".json") and end <= MAX_HEADER_BYTES for key, _, end in store.ranges)
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 3, warnings  # the two twins and the header of b.dcm, once each
    assert sum("no DICOM header within its first 1048576 bytes" in line for line in warnings) == 1



def test_a_lone_surrogate_costs_only_its_own_element() -> None:
    raw = b'{"0008103E": {"vr": "LO", "Value": ["a\\ud800b"]}, "00100010": {"vr": "PN", "Value": ' \
          b'[{"Alphabetic": "\\udfff"}]}, "00100020": {"vr": "LO", "Value": ["P1"]}}'
    tags = tags_from_metadata_json(raw)
    assert tags == {"PatientID": "P1"}
    assert all(value.encode("utf-8") for value in tags.values())


def test_a_deflated_header_gives_the_tags_of_the_same_image_uncompressed() -> None:
    plain = crafted.dataset("DX", 64, 64, "1.2.3", 1)
    deflated = crafted.dataset("DX", 64, 64, "1.2.3", 1, DeflatedExplicitVRLittleEndian)
    expected = tags_from_dicom_header(crafted.encode(plain), complete=True)
    assert expected and expected["PatientID"] == "Hostile1"
    assert tags_from_dicom_header(crafted.encode(deflated), complete=True) == expected


def test_a_deflate_bomb_is_inflated_only_as_far_as_asked() -> None:
    bomb = crafted.encode(crafted.deflate_bomb(64 * 1024 * 1024, "1.2.3"))
    assert len(bomb) < 128 * 1024
    out, whole = undeflate(bomb, 100_000)
    assert not whole and len(out) < 100_000 + 1024  # the limit plus preamble and file meta
    assert dcmread(BytesIO(out), stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    tags = tags_from_dicom_header(bomb, complete=True)
    assert tags is not None and tags["Rows"] == "5792"
    _, whole = undeflate(bomb, 64 * 1024 * 1024 + 4096)
    assert whole
    plain = crafted.encode(crafted.dataset("DX", 8, 8, "1.2.3", 1))
    assert undeflate(plain, 10) == (plain, True)


def test_a_deflated_stream_that_is_not_deflate_gives_no_tags() -> None:
    deflated = crafted.encode(crafted.dataset("DX", 8, 8, "1.2.3", 1, DeflatedExplicitVRLittleEndian))
    meta_end = len(deflated) - len(zlib.compress(b"x")) - 200  # well inside the deflated part
    broken = deflated[:meta_end] + b"\xff" * 400
    with pytest.raises(ValueError):
        undeflate(broken, 1 << 20)
    assert tags_from_dicom_header(broken, complete=True) == {}


def _decoded(decode: Callable[[bytes], Any], raw: bytes) -> str:
    """What ``decode`` makes of ``raw``, or the kind of error it raises (repr: NaN is not equal to itself)."""
    try:
        return repr(decode(raw))
    except (ValueError, RecursionError) as error:
        return type(error).__name__


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@given(value=_JSON_VALUES, ensure_ascii=st.booleans())
def test_a_json_document_is_decoded_as_json_loads_decodes_it(value: Any, ensure_ascii: bool) -> None:
    """Lone surrogates, NaN, huge integers: what msgspec refuses goes the json.loads way, so the answer is
    the same."""
    raw = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    assert _decoded(json_document, raw) == _decoded(json.loads, raw)


@pytest.mark.parametrize("raw", [
    b'{"a": 1, "a": 2}', b'{"a": "\\ud800"}', b'{"a": NaN}', b'{"a": -Infinity}', b'{"a": 1e400}',
    b"\xef\xbb\xbf{}", b'{"a": "\xff"}', b'{"a": 1} x', b"[" * 100_000 + b"]" * 100_000, b"", b"null",
    b"1" * 5000])
def test_json_that_msgspec_refuses_is_decoded_or_refused_as_json_loads_does(raw: bytes) -> None:
    assert _decoded(json_document, raw) == _decoded(json.loads, raw)
