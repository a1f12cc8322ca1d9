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
import numpy as np
import numpy.typing as npt
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
    # The same images in a syntax dcm2niix and dcmtk read, where they cannot read these (dcm2niix as
    # packaged reads no JPEG-LS, deflate or 12-bit lossy JPEG; dcmtk no JPEG 2000): decoded by dcmtk's
    # own decoders, or the uncompressed original the data set ships.
    reference: tuple[bytes, ...] = ()
    tolerance: float = 0.0  # largest voxel difference allowed: two lossy JPEG decoders' IDCTs round apart

    @property
    def reference_images(self) -> tuple[bytes, ...]:
        return self.reference or self.images

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


MOSAIC_TILE, MOSAIC_SIDE = 128, 7  # siemens_dwi_*: 48 slices of 128x128 in a 7x7 grid of 896x896


def patterned_mosaic(name: str) -> bytes:
    """One of nibabel's Siemens mosaics (header real, pixels blanked by nibabel) with a pixel pattern
    that differs in every tile, so that tile order and placement show in the voxels: tile t holds
    80 t plus a ramp, within the 12 stored bits."""
    dataset = dcmread(BytesIO(nibabel_file(name)))
    rows, columns = np.indices((dataset.Rows, dataset.Columns))
    tile = rows // MOSAIC_TILE * MOSAIC_SIDE + columns // MOSAIC_TILE
    dataset.PixelData = (tile * 80 + rows % MOSAIC_TILE // 4 + columns % MOSAIC_TILE // 4).astype("<i2").tobytes()
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def real_series() -> list[CorpusSeries]:
    """Real scanner series from several vendors, one per transfer syntax they come in."""
    single = [
        ("ge-ct-explicit-le", "ct", "CT_small.dcm"),
        ("toshiba-mr-explicit-le", "mri", "MR_small.dcm"),
        ("toshiba-mr-implicit-le", "mri", "MR_small_implicit.dcm"),
        ("toshiba-mr-explicit-be", "mri", "MR_small_bigendian.dcm"),
        ("toshiba-mr-rle", "mri", "MR_small_RLE.dcm"),
        ("toshiba-mr-j2k-lossless", "mri", "MR_small_jp2klossless.dcm"),
        ("philips-mr-explicit-le", "mri", "MR2_UNCR.dcm"),
        ("ct-explicit-le", "ct", "693_UNCR.dcm"),
        ("ct-j2k-lossless", "ct", "693_J2KR.dcm"),
        ("ct-j2k-lossy", "ct", "693_J2KI.dcm"),
        ("siemens-mr-explicit-le", "mri", "MR-SIEMENS-DICOM-WithOverlays.dcm"),
    ]
    series = [CorpusSeries(label, folder, (shipped(name),)) for label, folder, name in single]
    series += [CorpusSeries("toshiba-mr-jpeg-ls-lossless", "mri", (shipped("MR_small_jpeg_ls_lossless.dcm"),),
                            reference=(shipped("MR_small.dcm"),)),
               CorpusSeries("philips-mr-j2k-lossless", "mri", (shipped("MR2_J2KR.dcm"),),
                            reference=(shipped("MR2_UNCR.dcm"),)),
               CorpusSeries("philips-mr-j2k-lossy", "mri", (shipped("MR2_J2KI.dcm"),),
                            reference=(shipped("MR2_UNCI.dcm"),))]
    series.append(CorpusSeries("siemens-mr-decimal-rescale", "mri", (nibabel_file("decimal_rescale.dcm"),)))
    series.append(CorpusSeries("enhanced-ct", "ct", (shipped("eCT_Supplemental.dcm"),)))  # 2 frames
    series.append(CorpusSeries("philips-enhanced-mr", "mri", (nibabel_file("philips_mprage.dcm.gz"),)))  # 176
    # Siemens DWI mosaics, 48 slices of 128x128 in 7x7 tiles: b=0 then b=1000, a 4D volume; as shipped
    # (blank pixels), and with a pattern in the pixels
    mosaics = ("siemens_dwi_0.dcm.gz", "siemens_dwi_1000.dcm.gz")
    series.append(CorpusSeries("siemens-dwi-mosaic", "mri", tuple(nibabel_file(name) for name in mosaics)))
    series.append(CorpusSeries("siemens-dwi-mosaic-patterned", "mri", tuple(patterned_mosaic(n) for n in mosaics)))
    return series


def refused_series() -> list[CorpusSeries]:
    """Real series that are not one stack of single-frame slices."""
    return [
        # nibabel's cut-down copies: 48 slices in 256x256 pixels, not 7 whole tiles a side
        CorpusSeries("siemens-dwi-mosaic-cut", "mri", (nibabel_file("0.dcm"), nibabel_file("1.dcm")),
                     "not 7 whole tiles a side"),
        # ten frames with no functional groups at all: nothing says where each frame is
        CorpusSeries("enhanced-mr-without-groups", "mri", (shipped("emri_small.dcm"),), "per-frame functional groups"),
    ]


def xray_images() -> list[CorpusSeries]:
    """Real CR X-rays (Philips and Fuji, MONOCHROME1), each with its uncompressed original as the file
    dcmtk renders (dcmtk reads no JPEG 2000)."""
    images = []
    for vendor, name in (("philips", "RG1"), ("fuji", "RG3")):
        images += [
            CorpusSeries(f"{vendor}-cr-explicit-le", "xray", (shipped(f"{name}_UNCR.dcm"),)),
            CorpusSeries(f"{vendor}-cr-j2k-lossless", "xray", (shipped(f"{name}_J2KR.dcm"),),
                         reference=(shipped(f"{name}_UNCR.dcm"),)),
            CorpusSeries(f"{vendor}-cr-j2k-lossy", "xray", (shipped(f"{name}_J2KI.dcm"),),
                         reference=(shipped(f"{name}_UNCI.dcm"),)),
        ]
    return images


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


# label, encoder, dcmtk's decoder where dcm2niix cannot read the result, voxel tolerance
SYNTAXES: list[tuple[str, Callable[[bytes], bytes], Callable[[bytes], bytes] | None, float]] = [
    ("implicit-le", _dcmtk("dcmconv", "+ti"), None, 0.0),
    ("explicit-be", _dcmtk("dcmconv", "+tb"), None, 0.0),
    ("deflate", _dcmtk("dcmconv", "+td"), _dcmtk("dcmconv", "+te"), 0.0),
    ("rle", _dcmtk("dcmcrle"), None, 0.0),
    ("jpeg-extended", _dcmtk("dcmcjpeg", "+ee"), _dcmtk("dcmdjpeg"), 2.0),  # 12-bit IDCTs: up to 2 apart
    ("jpeg-lossless-p14", _dcmtk("dcmcjpeg", "+el"), None, 0.0),
    ("jpeg-lossless-sv1", _dcmtk("dcmcjpeg", "+e1"), None, 0.0),
    ("jpeg-ls-lossless", _dcmtk("dcmcjpls", "+el"), _dcmtk("dcmdjpls"), 0.0),
    ("jpeg-ls-near-lossless", _dcmtk("dcmcjpls", "+en", "+md", "3"), _dcmtk("dcmdjpls"), 0.0),
    ("j2k-lossless", _pydicom(JPEG2000Lossless), None, 0.0),
    ("j2k-lossy", _pydicom(JPEG2000, j2k_cr=[20]), None, 0.0),
]


def crafted_series(warehouse: list[DemoObject]) -> list[CorpusSeries]:
    """The demo MR series (12 slices of 256x256, 12 bits) in each transfer syntax of SYNTAXES."""
    images = [o.body for o in warehouse if o.key.startswith("training/mri/") and o.key.endswith(".dcm")]
    assert len(images) == 12
    series = []
    for label, encode, decode, tolerance in SYNTAXES:
        encoded = tuple(encode(dicom) for dicom in images)
        reference = tuple(decode(dicom) for dicom in encoded) if decode is not None else ()
        series.append(CorpusSeries(f"demo-mr-{label}", "mri", encoded, reference=reference, tolerance=tolerance))
    return series


# --- the references: dcm2niix and dcmtk -----------------------------------------------------------------


def dcm2niix(images: tuple[bytes, ...], workdir: Path) -> list[nibabel.Nifti1Image]:
    """Every volume dcm2niix makes of these images (uncompressed, in name order; [] when it makes none),
    with its BIDS sidecars beside them in ``workdir / "dcm2niix-out"``."""
    source, out = workdir / "dcm2niix-in", workdir / "dcm2niix-out"
    source.mkdir()
    out.mkdir()
    for index, dicom in enumerate(images):
        (source / f"image{index:03d}.dcm").write_bytes(dicom)
    subprocess.run(["dcm2niix", "-z", "n", "-f", "reference", "-o", str(out), str(source)], capture_output=True,
                   timeout=300, check=False)  # fmt: skip
    return [nibabel.load(path) for path in sorted(out.glob("*.nii"))]


def differences(ours: nibabel.Nifti1Image, reference: nibabel.Nifti1Image) -> tuple[float, float]:
    """(largest voxel difference, largest affine difference in mm) once both are in closest canonical order."""
    ours, reference = nibabel.as_closest_canonical(ours), nibabel.as_closest_canonical(reference)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    voxels = float(np.abs(np.asarray(ours.dataobj, np.float64) - np.asarray(reference.dataobj, np.float64)).max())
    return voxels, float(np.abs(ours.affine - reference.affine).max())


def dcmj2pnm_options(dicom: bytes) -> list[str]:
    """The dcmj2pnm options that choose the VOI nccidfs applies: the first VOI LUT, else the first
    window, else the window over the image's own range."""
    dataset = dcmread(BytesIO(dicom), stop_before_pixels=True)
    if dataset.get("VOILUTSequence"):
        return ["+Wl", "1"]
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        return ["+Wi", "1"]
    return ["+Wm"]


def dcmj2pnm(dicom: bytes, workdir: Path) -> npt.NDArray[np.uint8]:
    """dcmtk's 8-bit rendering of an image, with the options of ``dcmj2pnm_options``."""
    source, out = workdir / "dcmj2pnm-in.dcm", workdir / "dcmj2pnm-out.pgm"
    source.write_bytes(dicom)
    subprocess.run(["dcmj2pnm", *dcmj2pnm_options(dicom), str(source), str(out)], check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    magic, columns, rows, _, pixels = out.read_bytes().split(maxsplit=4)
    assert magic == b"P5"
    return np.frombuffer(pixels[: int(columns) * int(rows)], dtype=np.uint8).reshape(int(rows), int(columns))
