"""Test support: a corpus of real scanner files in the NCCID layout, for the derived views to be compared
with dcm2niix and dcmtk.

The files are those that installed packages ship: pydicom's test files and pydicom-data's (read offline
through ``pydicom.data``), and nibabel's DICOM test data (Siemens mosaics, an enhanced Philips MR). Beside
them, the demo MR series compressed here in each transfer syntax by dcmtk's tools and pydicom's encoders,
so that every syntax is seen as a whole series. Each series gets its own patient folder; its images and
their metadata twins (made as the warehouse loader makes them) are keyed as in the warehouse.
"""

from __future__ import annotations

import gzip
import hashlib
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import nibabel
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, JPEG2000Lossless

from nccidfs.demo.warehouse import DemoObject, metadata_json

NIBABEL_DATA = Path(nibabel.__file__).parent / "nicom" / "tests" / "data"
# A volume that dcm2niix makes and nccidfs serves (equal voxels expected unless lossy is noted).
VOLUME = "volume"


@dataclass(frozen=True)
class CorpusSeries:
    """One series of the corpus: what it is, its images, and what the volume view should give: VOLUME,
    or a fragment of the reason it gives instead."""

    label: str
    folder: str  # ct, mri or xray
    images: tuple[bytes, ...]
    expect: str = VOLUME

    @property
    def series_uid(self) -> str:
        """A series folder name of its own: corpus files of one source share their original UIDs."""
        return "1.2.826.0.1.3680043.10.9." + str(int(hashlib.sha256(self.label.encode()).hexdigest()[:12], 16))

    def relative(self) -> str:
        """The series folder under the modality folder: <Patient_ID>/<STUDY_UID>/<SERIES_UID>."""
        return f"Corpus-{self.label}/1.2.826.0.1.3680043.10.8.1/{self.series_uid}"

    def objects(self, prefix: str) -> list[DemoObject]:
        objects = []
        for index, dicom in enumerate(self.images):
            path = f"{self.relative()}/image{index:03d}"
            objects.append(DemoObject(f"{prefix}{self.folder}/{path}.dcm", dicom))
            objects.append(DemoObject(f"{prefix}{self.folder}-metadata/{path}.json", metadata_json(dicom)))
        return objects


def shipped(name: str) -> bytes:
    """A file of pydicom's test data or pydicom-data's (both installed, read offline)."""
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not installed"
    return Path(path).read_bytes()


def nibabel_file(name: str) -> bytes:
    data = (NIBABEL_DATA / name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def real_series() -> list[CorpusSeries]:
    """Real scanner series from several vendors, one per transfer syntax they come in."""
    single = [
        ("ge-ct-explicit-le", "ct", "CT_small.dcm"),
        ("toshiba-mr-explicit-le", "mri", "MR_small.dcm"),
        ("toshiba-mr-implicit-le", "mri", "MR_small_implicit.dcm"),
        ("toshiba-mr-explicit-be", "mri", "MR_small_bigendian.dcm"),
        ("toshiba-mr-rle", "mri", "MR_small_RLE.dcm"),
        ("toshiba-mr-jpeg-ls-lossless", "mri", "MR_small_jpeg_ls_lossless.dcm"),
        ("toshiba-mr-j2k-lossless", "mri", "MR_small_jp2klossless.dcm"),
        ("philips-mr-explicit-le", "mri", "MR2_UNCR.dcm"),
        ("philips-mr-j2k-lossless", "mri", "MR2_J2KR.dcm"),
        ("philips-mr-j2k-lossy", "mri", "MR2_J2KI.dcm"),
        ("ct-explicit-le", "ct", "693_UNCR.dcm"),
        ("ct-j2k-lossless", "ct", "693_J2KR.dcm"),
        ("ct-j2k-lossy", "ct", "693_J2KI.dcm"),
        ("siemens-mr-explicit-le", "mri", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
    ]
    series = [CorpusSeries(label, folder, (shipped(name),)) for label, folder, name in single]
    series.append(CorpusSeries("siemens-mr-decimal-rescale", "mri", (nibabel_file("decimal_rescale.dcm"),)))
    return series


def refused_series() -> list[CorpusSeries]:
    """Real series that are not one stack of single-frame slices."""
    return [
        CorpusSeries("siemens-dwi-mosaic", "mri", (nibabel_file("0.dcm"), nibabel_file("1.dcm")), "Siemens mosaic"),
        CorpusSeries("siemens-dwi-mosaic-large", "mri",
                     (nibabel_file("siemens_dwi_0.dcm.gz"), nibabel_file("siemens_dwi_1000.dcm.gz")),
                     "Siemens mosaic"),
        CorpusSeries("enhanced-mr", "mri", (shipped("emri_small.dcm"),), "frames"),
        CorpusSeries("enhanced-ct", "ct", (shipped("eCT_Supplemental.dcm"),), "frames"),
    ]


def xray_images() -> list[CorpusSeries]:
    """Real CR X-rays (Philips and Fuji, MONOCHROME1), each with its uncompressed original as the file
    dcmtk renders (dcmtk reads no JPEG 2000)."""
    return [
        CorpusSeries("philips-cr-explicit-le", "xray", (shipped("RG1_UNCR.dcm"),)),
        CorpusSeries("philips-cr-j2k-lossless", "xray", (shipped("RG1_J2KR.dcm"),), "RG1_UNCR.dcm"),
        CorpusSeries("fuji-cr-explicit-le", "xray", (shipped("RG3_UNCR.dcm"),)),
        CorpusSeries("fuji-cr-j2k-lossless", "xray", (shipped("RG3_J2KR.dcm"),), "RG3_UNCR.dcm"),
    ]


# --- the demo MR series in every transfer syntax ------------------------------------------------------


def _dcmtk(tool: str, *options: str) -> Callable[[bytes], bytes]:
    def convert(dicom: bytes) -> bytes:
        with tempfile.TemporaryDirectory() as folder:
            source, out = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
            source.write_bytes(dicom)
            subprocess.run([tool, *options, str(source), str(out)], check=True, capture_output=True, timeout=60)
            return out.read_bytes()

    return convert


def _pydicom(syntax: str, **options: object) -> Callable[[bytes], bytes]:
    def convert(dicom: bytes) -> bytes:
        dataset = dcmread(BytesIO(dicom))
        dataset.compress(syntax, **options)
        buffer = BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()

    return convert


# label, converter, whether the syntax is lossy
SYNTAXES: list[tuple[str, Callable[[bytes], bytes], bool]] = [
    ("implicit-le", _dcmtk("dcmconv", "+ti"), False),
    ("explicit-be", _dcmtk("dcmconv", "+tb"), False),
    ("deflate", _dcmtk("dcmconv", "+td"), False),
    ("rle", _dcmtk("dcmcrle"), False),
    ("jpeg-extended", _dcmtk("dcmcjpeg", "+ee"), True),
    ("jpeg-lossless-p14", _dcmtk("dcmcjpeg", "+el"), False),
    ("jpeg-lossless-sv1", _dcmtk("dcmcjpeg", "+e1"), False),
    ("jpeg-ls-lossless", _dcmtk("dcmcjpls", "+el"), False),
    ("jpeg-ls-near-lossless", _dcmtk("dcmcjpls", "+en", "+md", "3"), True),
    ("j2k-lossless", _pydicom(JPEG2000Lossless), False),
    ("j2k-lossy", _pydicom(JPEG2000, j2k_cr=[20]), True),
]


def crafted_series(warehouse: list[DemoObject]) -> list[CorpusSeries]:
    """The demo MR series (12 slices of 256x256, 12 bits) in each transfer syntax of SYNTAXES."""
    images = tuple(o.body for o in warehouse if o.key.startswith("training/mri/") and o.key.endswith(".dcm"))
    assert len(images) == 12
    return [CorpusSeries(f"demo-mr-{label}", "mri", tuple(convert(dicom) for dicom in images))
            for label, convert, _ in SYNTAXES]
