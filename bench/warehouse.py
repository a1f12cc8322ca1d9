"""The benchmark's two warehouses, laid out like the NCCID bucket, generated once and reused.

- The *reading* warehouse: one CT series of real DICOM slices (512x512 uint16, readable by pydicom and
  dcm2niix), their metadata JSON twins, clinical status JSON files, and one large X-ray object. It is
  uploaded with PutObject, so the S3 server computes every ETag as it would for a client's upload.
- The *wide* warehouse: thousands of patients with a clinical file each, some with one CT series, tiny
  bodies, for listing at scale. It is written straight into the server's root before the server starts (100,000
  PutObject calls would take longer than the benchmark).

Keys follow ``training/{ct,xray}/<Patient>/<StudyUID>/<SeriesUID>/<uuid>.dcm``,
``training/ct-metadata/.../<uuid>.json`` and ``training/data/<Patient>/status_<date>.json``. Everything is
a function of the spec, so a finished warehouse is recognised by the marker file that records its spec.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

PREFIX = "training/"
UID_ROOT = "1.2.826.0.1.3680043.8.498."
CT_SIDE = 512
UPLOAD_THREADS = 8


@dataclass(frozen=True)
class ReadingSpec:
    """The main CT series, the large object and clinical files; then the data loader's series: more CT
    series and single-image X-ray series, drawn from at random by the data-loader workload."""

    bucket: str
    slices: int
    big_mib: int
    clinical_files: int
    loader_ct_series: int = 0
    loader_slices: int = 0
    loader_xrays: int = 0
    xray_mib: int = 6
    seed: int = 1


@dataclass(frozen=True)
class WideSpec:
    """Every patient has a clinical file under ``data/``; some also have one CT study of one series."""

    bucket: str
    patients: int
    ct_patients: int
    slices_per_series: int
    seed: int = 2

    @property
    def objects(self) -> int:
        return self.patients + self.ct_patients * self.slices_per_series


@dataclass(frozen=True)
class Slice:
    key: str
    number: int
    z: float


@dataclass(frozen=True)
class ReadingLayout:
    """Where things are, as keys and as paths relative to a mount of ``training/``."""

    patient: str
    study_uid: str
    series_uid: str
    slices: tuple[Slice, ...]
    big_key: str
    clinical_keys: tuple[str, ...]
    # The data loader's other series: CT series with slices, X-ray series with their one image as big_key.
    loader_series: tuple[ReadingLayout, ...] = ()

    @property
    def image_keys(self) -> tuple[str, ...]:
        """Every image a data loader draws from: the slices of all CT series and the X-rays, not the large object."""
        keys = [item.key for series in (self, *self.loader_series) for item in series.slices]
        return tuple(keys + [series.big_key for series in self.loader_series if not series.slices])

    @property
    def series_prefix(self) -> str:
        return f"{PREFIX}ct/{self.patient}/{self.study_uid}/{self.series_uid}/"

    @property
    def series_dir(self) -> str:
        return self.series_prefix[len(PREFIX):].rstrip("/")

    @property
    def big_path(self) -> str:
        return self.big_key[len(PREFIX):]

    def metadata_key(self, item: Slice) -> str:
        return item.key.replace(f"{PREFIX}ct/", f"{PREFIX}ct-metadata/", 1)[:-len(".dcm")] + ".json"


def _uid(rng: random.Random) -> str:
    """A 64-character UID under pydicom's root, like the warehouse's."""
    digits = 64 - len(UID_ROOT)
    return UID_ROOT + str(rng.randrange(10 ** (digits - 1), 10**digits))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _ct_series(rng: random.Random, patient: str, count: int) -> tuple[str, str, tuple[Slice, ...]]:
    """A CT series' UIDs and slices; files sort by UUID while InstanceNumber is acquisition order."""
    study, series = _uid(rng), _uid(rng)
    prefix = f"{PREFIX}ct/{patient}/{study}/{series}/"
    slices = tuple(sorted((Slice(f"{prefix}{_uuid(rng)}.dcm", n + 1, -n * 1.25) for n in range(count)),
                          key=lambda s: s.key))
    return study, series, slices


def _xray_key(rng: random.Random, patient: str) -> str:
    return f"{PREFIX}xray/{patient}/{_uid(rng)}/{_uid(rng)}/{_uuid(rng)}.dcm"


def plan_reading(spec: ReadingSpec) -> ReadingLayout:
    """The keys of the reading warehouse."""
    rng = random.Random(spec.seed)
    patient = "Covid1001"
    study, series, slices = _ct_series(rng, patient, spec.slices)
    big_key = _xray_key(rng, patient)
    start = dt.date(2020, 3, 1)
    clinical = tuple(f"{PREFIX}data/Covid{1001 + n}/status_{start + dt.timedelta(days=n % 700)}.json"
                     for n in range(spec.clinical_files))
    loader = []
    for n in range(spec.loader_ct_series):
        other = f"Covid{2001 + n}"
        loader.append(ReadingLayout(other, *_ct_series(rng, other, spec.loader_slices), "", ()))
    for n in range(spec.loader_xrays):
        other = f"Covid{3001 + n}"
        key = _xray_key(rng, other)
        loader.append(ReadingLayout(other, key.split("/")[-3], key.split("/")[-2], (), key, ()))
    return ReadingLayout(patient, study, series, slices, big_key, clinical, tuple(loader))


def _header(layout: ReadingLayout, modality: str, sop_class: str, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), UID(sop_uid)
    ds.PatientID = ds.PatientName = layout.patient
    ds.StudyInstanceUID = layout.study_uid
    ds.StudyDate, ds.StudyTime, ds.Modality = "20200415", "101500", modality
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def _encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def ct_slice(layout: ReadingLayout, item: Slice, pixels: np.ndarray) -> tuple[bytes, str]:
    """One CT slice as DICOM bytes, and its header as metadata JSON (the warehouse's ``-metadata`` twin)."""
    sop_uid = f"{layout.series_uid[:52]}.{item.number}"
    ds = _header(layout, "CT", CTImageStorage, sop_uid)
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = layout.series_uid, 2, item.number
    ds.FrameOfReferenceUID = f"{layout.study_uid[:60]}.1"
    ds.ImagePositionPatient = [-250.0, -250.0, item.z]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.SliceLocation, ds.SliceThickness = item.z, 1.25
    ds.PixelSpacing = [0.9765625, 0.9765625]
    ds.Rows = ds.Columns = CT_SIDE
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 400
    metadata = ds.to_json()
    ds.PixelData = pixels.tobytes()
    return _encode(ds), metadata


def big_xray(layout: ReadingLayout, size_mib: int, rng: np.random.Generator) -> bytes:
    """A DX image of about ``size_mib`` MiB of 16-bit noise: the large-object throughput test."""
    side = math.isqrt(size_mib * 1024 * 1024 // 2)
    ds = _header(layout, "DX", DigitalXRayImageStorageForPresentation, _uid(random.Random(side)))
    series = layout.big_key.split("/")[-2]
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 1, 1
    ds.Rows = ds.Columns = side
    ds.PixelData = rng.integers(0, 4096, size=side * side, dtype=np.uint16).tobytes()
    return _encode(ds)


def _phantom() -> np.ndarray:
    """A water cylinder in air (HU + 1024), so slices look like CT and compress like it."""
    y, x = np.mgrid[:CT_SIDE, :CT_SIDE]
    inside = (x - CT_SIDE / 2) ** 2 + (y - CT_SIDE / 2) ** 2 < (0.4 * CT_SIDE) ** 2
    return np.where(inside, 1024, 24).astype(np.int32)


def reading_uploads(spec: ReadingSpec, layout: ReadingLayout) -> Iterator[Callable[[], list[tuple[str, bytes]]]]:
    """Tasks that each make a few (key, body) pairs on demand, so memory stays small while uploading."""
    base = _phantom()

    def slice_pair(item: Slice, series: ReadingLayout = layout) -> list[tuple[str, bytes]]:
        noise = np.random.default_rng([spec.seed, item.number]).integers(-20, 21, size=base.shape)
        body, metadata = ct_slice(series, item, np.clip(base + noise, 0, 4095).astype(np.uint16))
        return [(item.key, body), (series.metadata_key(item), metadata.encode())]

    def xray(series: ReadingLayout, n: int) -> list[tuple[str, bytes]]:
        return [(series.big_key, big_xray(series, spec.xray_mib, np.random.default_rng([spec.seed, n])))]

    def clinical(n: int, key: str) -> list[tuple[str, bytes]]:
        record = {"Pseudonym": key.split("/")[2], "SubmittingCentre": "Centre A", "Covid_code": "No",
                  "date_of_positive_covid_swab": None, "Sex": "MF"[n % 2], "Age": 30 + n % 60}
        return [(key, json.dumps(record).encode())]

    for item in layout.slices:
        yield partial(slice_pair, item)
    for n, key in enumerate(layout.clinical_keys):
        yield partial(clinical, n, key)
    yield lambda: [(layout.big_key, big_xray(layout, spec.big_mib, np.random.default_rng(spec.seed)))]
    for n, series in enumerate(layout.loader_series):
        if series.slices:
            yield from (partial(slice_pair, item, series) for item in series.slices)
        else:
            yield partial(xray, series, n)


def _marker(root: Path, bucket: str) -> Path:
    return root / f".seeded-{bucket}.json"


def is_seeded(root: Path, spec: ReadingSpec | WideSpec) -> bool:
    try:
        return bool(json.loads(_marker(root, spec.bucket).read_text()) == asdict(spec))
    except (OSError, ValueError):
        return False


def discard_unfinished(root: Path, spec: ReadingSpec | WideSpec) -> None:
    """Remove a bucket whose seeding never finished or followed another spec (before the server starts)."""
    if not is_seeded(root, spec):
        shutil.rmtree(root / spec.bucket, ignore_errors=True)
        _marker(root, spec.bucket).unlink(missing_ok=True)


def seed_reading(client: Any, root: Path, spec: ReadingSpec, layout: ReadingLayout) -> int:
    """Upload the reading warehouse through the running server; returns how many objects."""
    client.create_bucket(Bucket=spec.bucket)

    def upload(task: Callable[[], list[tuple[str, bytes]]]) -> int:
        pairs = task()
        for key, body in pairs:
            client.put_object(Bucket=spec.bucket, Key=key, Body=body)
        return len(pairs)

    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        count = sum(pool.map(upload, reading_uploads(spec, layout)))
    _marker(root, spec.bucket).write_text(json.dumps(asdict(spec)))
    return count


def wide_directories(spec: WideSpec) -> Iterator[tuple[str, list[str]]]:
    """(prefix, file names) for every directory of the wide warehouse that holds files."""
    rng = random.Random(spec.seed)
    start = dt.date(2020, 3, 1)
    for n in range(spec.patients):
        yield f"{PREFIX}data/Covid{10001 + n}/", [f"status_{start + dt.timedelta(days=n % 700)}.json"]
    for n in range(spec.ct_patients):
        prefix = f"{PREFIX}ct/Covid{10001 + n * (spec.patients // spec.ct_patients)}/{_uid(rng)}/{_uid(rng)}/"
        yield prefix, [f"{_uuid(rng)}.dcm" for _ in range(spec.slices_per_series)]


def write_wide(root: Path, spec: WideSpec) -> int:
    """Write the wide warehouse's files into ``root/<bucket>`` (the server is not running)."""
    count = 0
    for prefix, names in wide_directories(spec):
        directory = root / spec.bucket / prefix
        directory.mkdir(parents=True, exist_ok=True)
        for name in names:
            (directory / name).write_bytes(f"{prefix}{name}\n".encode())
            count += 1
    _marker(root, spec.bucket).write_text(json.dumps(asdict(spec)))
    return count
