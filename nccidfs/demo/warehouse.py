"""Generate a small, deterministic synthetic NCCID warehouse: DICOM images, their metadata JSON twins
and the clinical JSON files, laid out under one key prefix exactly as the real S3 bucket does.

The objects reproduce the warehouse's quirks on purpose (metadata JSON with ``"InlineBinary": null``
and a nulled VOI LUT Sequence, clinical field names with their typos, US and UK date formats), so code
that copes with the demo copes with the real bucket.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import uuid
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from nccidfs.layout import CLINICAL_FOLDER, IMAGE_SUFFIX, TWIN_SUFFIX, twin_folder

FloatImage = npt.NDArray[np.float64]
PixelImage = npt.NDArray[np.uint16]


@dataclass(frozen=True)
class DemoObject:
    """One object of the demo bucket: its full key and its bytes."""

    key: str
    body: bytes


# The warehouse loader writes every metadata JSON with these keys nulled (see metadata_json).
_INLINE_BINARY = "InlineBinary"
_VOI_LUT_SEQUENCE = "00283010"
# Larger than any element, so to_json_dict inlines every binary value instead of asking for a bulk URI.
_NEVER_BULK = 10**20

_PRIVATE_CREATOR = "NCCIDFS DEMO"
_CENTRES = (
    "Sandwell and West Birmingham Hospitals NHS Trust",
    "Royal United Hospitals Bath NHS Foundation Trust",
    "Cambridge University Hospitals NHS Foundation Trust",
    "Brighton and Sussex University Hospitals NHS Trust",
)
_ETHNICITIES = ("White - British", "A", "Any other Asian background", "Caribbean", "J", "not recorded")

# (imaging, COVID positive, number of dated clinical files); one row per patient.
_PLAN: tuple[tuple[str, bool, int], ...] = (
    ("ct", True, 2),
    ("ct-two-series", True, 1),
    ("dx-large", False, 1),
    ("cr", True, 1),
    ("dx-small", False, 1),
    ("mr", True, 1),
    ("none", False, 1),
)

# Tissue intensities (air, fat, soft tissue, lung, blood, bone): Hounsfield units for CT, arbitrary MR signal.
_EQUIPMENT = {"CT": ("GE MEDICAL SYSTEMS", "Revolution EVO"), "MR": ("Philips Medical Systems", "Ingenia")}
_CT_CONTRAST = (-1000.0, -100.0, 40.0, -850.0, 45.0, 700.0)
_MR_CONTRAST = (0.0, 1700.0, 650.0, 40.0, 1100.0, 350.0)


@dataclass(frozen=True)
class _Patient:
    pid: str
    imaging: str
    positive: bool
    sex: str
    age: int
    centre: str
    ethnicity: str
    build: float
    swab: dt.date
    batches: tuple[dt.date, ...]


@dataclass(frozen=True)
class _Study:
    uid: str
    date: str
    time: str
    description: str
    frame_of_reference: str


def generate_warehouse(seed: int = 7, prefix: str = "training/", ct_slices: int = 24) -> list[DemoObject]:
    """Deterministic: same seed -> byte-identical objects, same order (sorted by key)."""
    if ct_slices < 2:
        raise ValueError("ct_slices must be at least 2, or a CT series is no volume")
    if prefix and not prefix.endswith("/"):
        raise ValueError(f"prefix must be empty or end with '/': {prefix!r}")
    objects: list[DemoObject] = []
    for patient in _plan_patients(seed):
        for name, body in _clinical_files(patient, seed):
            objects.append(DemoObject(f"{prefix}{CLINICAL_FOLDER}/{patient.pid}/{name}", body))
        stems = _rng(seed, patient.pid, "stems")
        for folder, ds in _images(patient, seed, ct_slices):
            stem = uuid.UUID(int=stems.getrandbits(128), version=4)
            path = f"{patient.pid}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{stem}"
            dicom = _encode(ds)
            objects.append(DemoObject(f"{prefix}{folder}/{path}{IMAGE_SUFFIX}", dicom))
            objects.append(DemoObject(f"{prefix}{twin_folder(folder)}/{path}{TWIN_SUFFIX}", metadata_json(dicom)))
    return sorted(objects, key=lambda obj: obj.key)


def _rng(seed: int, *labels: str) -> random.Random:
    """An independent stream per purpose, so changing one part (e.g. ct_slices) leaves the others alone."""
    return random.Random(":".join(["nccidfs-demo", str(seed), *labels]))


def _uid(seed: int, *parts: str) -> str:
    """A UID under pydicom's root derived only from the seed and the parts, so reruns reproduce it."""
    return str(generate_uid(entropy_srcs=["nccidfs-demo", str(seed), *parts]))


def _plan_patients(seed: int) -> list[_Patient]:
    rng = _rng(seed, "patients")
    numbers = rng.sample(range(1, 1000), len(_PLAN))
    patients = []
    for number, (imaging, positive, files) in zip(numbers, _PLAN, strict=True):
        # Swabs from March 2020 to June 2021 keep every submission batch date within 2020-2021.
        swab = dt.date(2020, 3, 1) + dt.timedelta(days=rng.randint(0, 480))
        batches = [swab + dt.timedelta(days=rng.randint(10, 20))]
        while len(batches) < files:
            batches.append(batches[-1] + dt.timedelta(days=rng.randint(35, 70)))
        patients.append(
            _Patient(
                pid=f"Covid{number}",
                imaging=imaging,
                positive=positive,
                sex=rng.choice("MF"),
                age=rng.randint(28, 91),
                centre=rng.choice(_CENTRES),
                ethnicity=rng.choice(_ETHNICITIES),
                build=rng.uniform(0.9, 1.05),
                swab=swab,
                batches=tuple(batches),
            )
        )
    return patients


# --- clinical JSON ---------------------------------------------------------------------------------


def _us(day: dt.date) -> str:
    """Positive-cohort dates are submitted in US order, MM/DD/YYYY."""
    return f"{day.month:02d}/{day.day:02d}/{day.year}"


def _uk(day: dt.date) -> str:
    """Negative-cohort swab dates are submitted in UK order, DD/MM/YYYY."""
    return f"{day.day:02d}/{day.month:02d}/{day.year}"


def _messy(rng: random.Random, value: float | int) -> Any:
    """Sites submit numbers as numbers, as strings, or not at all; mirror that mix."""
    draw = rng.random()
    if draw < 0.1:
        return ""
    if draw < 0.5:
        return str(value)
    return value


def _clinical_files(patient: _Patient, seed: int) -> list[tuple[str, bytes]]:
    rng = _rng(seed, patient.pid, "clinical")
    common: dict[str, Any] = {
        "Pseudonym": patient.pid,
        "SubmittingCentre": patient.centre,
        "Age": patient.age if rng.random() < 0.5 else str(patient.age),
        "Sex": patient.sex,
        "Ethnicity": patient.ethnicity,
    }
    if not patient.positive:
        record = {**common, "SwabStatus": 0, "SwabDate": _uk(patient.swab)}
        if patient.imaging == "dx-large":  # one patient carries the newer list of past swabs too
            earlier = patient.swab - dt.timedelta(days=rng.randint(14, 40))
            record["SwabDates"] = [{"SwabDate": _uk(d), "SwabStatus": 0} for d in (earlier, patient.swab)]
        return [(f"status_{patient.batches[-1].isoformat()}.json", json.dumps(record).encode())]
    course = _positive_course(patient, rng)
    return [
        (
            f"data_{batch.isoformat()}.json",
            json.dumps({**common, **_positive_record(patient, course, batch, rng)}).encode(),
        )
        for batch in patient.batches
    ]


def _positive_course(patient: _Patient, rng: random.Random) -> dict[str, Any]:
    """The fields that stay the same in every file submitted for one positive patient."""
    admission = patient.swab - dt.timedelta(days=rng.randint(0, 2))
    itu = len(patient.batches) > 1 or rng.random() < 0.3
    second_pcr = rng.random() < 0.5
    return {
        "Date of Positive Covid Swab": _us(patient.swab),
        "Date of acquisition of 1st RT-PCR": _us(patient.swab),
        "Date of acquisition of 2nd RT-PCR": _us(patient.swab + dt.timedelta(days=3)) if second_pcr else "",
        "Date of result of 1st RT-PCR": _us(patient.swab + dt.timedelta(days=1)),
        "Date of result of 2nd RT-PCR": _us(patient.swab + dt.timedelta(days=4)) if second_pcr else "",
        "Date of admission": _us(admission),
        "Date of ITU admission": _us(admission + dt.timedelta(days=2)) if itu else "",
        "Date of intubation": _us(admission + dt.timedelta(days=3)) if itu else "",
        "Date of 1st CXR": _us(admission),
        "Date of 2nd CXR": _us(admission + dt.timedelta(days=5)) if itu else "",
        "Duration of symptoms": _messy(rng, rng.randint(2, 14)),
        "Respiratory rate on admission": _messy(rng, rng.randint(16, 34)),
        "Heart rate on admission": _messy(rng, rng.randint(70, 125)),
        "NEWS2 score on arrival": _messy(rng, rng.randint(1, 9)),
        "APACHE score on ITU arrival": rng.randint(8, 25) if itu else "",
        "PaO2": _messy(rng, round(rng.uniform(6.5, 12.5), 1)),
        "Creatinine on admission": _messy(rng, rng.randint(55, 180)),
        "D-dimer on admission": _messy(rng, rng.randint(300, 4000)),
        "Fibrinogen  if d-dimer not performed": "",
        "WCC on admission": _messy(rng, round(rng.uniform(3.5, 14.0), 1)),
        "Lymphocyte count on admission": _messy(rng, round(rng.uniform(0.3, 1.8), 2)),
        "Platelet count on admission": _messy(rng, rng.randint(120, 420)),
        "CRP on admission": f"[{rng.randint(20, 300)}] - {admission.isoformat()}",
        "Urea on admission": _messy(rng, round(rng.uniform(3.0, 15.0), 1)),
        "O2 saturation": _messy(rng, rng.randint(85, 99)),
        "Temperature on admission": str(round(rng.uniform(36.4, 39.4), 1)),
        "Ferritin": _messy(rng, rng.randint(80, 2500)),
        "Troponin I": rng.choice(["", str(rng.randint(3, 60))]),
        "Troponin T": None,
        "Systolic BP": f"[{rng.randint(100, 160)}/{rng.randint(55, 95)}] - {admission.isoformat()}",
        "Diastolic BP": _messy(rng, rng.randint(55, 95)),
        "FiO2": rng.choice(["0.28", "2L", 21, "", "0.6"]),
        "Smoking status": rng.choice(["0", "1", 2, ""]),
        "Pack year history": rng.choice(["", " ", "20", "35"]),
        "PMH hypertension": rng.choice([0, 1, "1"]),
        "PMH CKD": rng.choice([0, "0"]),
        "If CKD, stage": "",
        "PMH CVS disease": rng.choice([0, "1", 2]),
        "PMH Lung disease": rng.choice([0, "1", "5 - Lung Ca"]),
        "PMH diabetes mellitus type II": rng.choice([0, 1, "0"]),
        "Current ACEi use": rng.choice([0, 1]),
        "Current Angiotension receptor blocker use": rng.choice([0, "0"]),
        "Current NSAID used": 0,
        "1st RT-PCR result": rng.choice(["RNA DETECTED (SARS-CoV-2)", 1, "1"]),
        "2nd RT-PCR result": rng.choice(["RNA DETECTED (SARS-CoV-2)", "0"]) if second_pcr else "",
        "CXR severity": rng.choice(["1", "2", 3]),
        "CXR severity 3": rng.choice(["", "2", " "]),
        "COVID CODE": rng.choice([1, "2", "CVCX2"]),
        "COVID CODE 2": "",
        "ITU admission": 1 if itu else 0,
        "Intubation": 1 if itu else 0,
    }


def _positive_record(
    patient: _Patient, course: dict[str, Any], batch: dt.date, rng: random.Random
) -> dict[str, Any]:
    """A ``data_`` file: the course plus outcomes as known at that submission; the patient with several
    files dies between the first and the last, so the later file really updates the earlier one."""
    dies = len(patient.batches) > 1 and batch == patient.batches[-1]
    death = patient.batches[0] + (patient.batches[-1] - patient.batches[0]) / 2
    alive = death if dies else batch - dt.timedelta(days=rng.randint(1, 5))
    record = dict(course)
    record.update(
        {
            "Date last known alive": _us(alive),
            "Date of death": _us(death) if dies else "",
            "Final COVID Status": rng.choice(["Positive", 1]),
            "Death": 1 if dies else 0,
        }
    )
    return record


# --- DICOM images ----------------------------------------------------------------------------------


def _images(patient: _Patient, seed: int, ct_slices: int) -> list[tuple[str, Dataset]]:
    """(top-level folder, dataset) for every image of the patient, in a fixed order."""
    rng = _rng(seed, patient.pid, "images")
    if patient.imaging == "none":
        return []
    study_day = patient.swab + dt.timedelta(days=rng.randint(-2, 2))
    study = _Study(
        uid=_uid(seed, patient.pid, "study"),
        date=study_day.strftime("%Y%m%d"),
        time=f"{rng.randint(7, 19):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
        description={"ct": "CT CHEST", "mr": "MRI CHEST"}.get(patient.imaging[:2], "CHEST X-RAY"),
        frame_of_reference=_uid(seed, patient.pid, "frame"),
    )
    if patient.imaging == "ct":
        return [("ct", ds) for ds in _ct_series(patient, study, seed, 2, "CT THORAX 1.25mm", 1.25, ct_slices)]
    if patient.imaging == "ct-two-series":
        lung = _ct_series(patient, study, seed, 2, "CT THORAX LUNG 1.25mm", 1.25, ct_slices)
        soft = _ct_series(patient, study, seed, 3, "CT THORAX STANDARD 2.5mm", 2.5, ct_slices)
        return [("ct", ds) for ds in lung + soft]
    if patient.imaging == "mr":
        return [("mri", ds) for ds in _mr_series(patient, study, seed, 12)]
    shapes = {"dx-large": (2048, 1536, 12), "cr": (1024, 1024, 10), "dx-small": (768, 640, 12)}
    rows, cols, bits = shapes[patient.imaging]
    return [("xray", _radiograph(patient, study, seed, rows, cols, bits))]


def _header(
    patient: _Patient, study: _Study, sop_class: UID, modality: str, series: tuple[int, str, str]
) -> Dataset:
    """The patient, study, series and equipment tags every image shares; series is (number, uid, label)."""
    number, series_uid, description = series
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "NCCIDFS_DEMO"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study.date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study.time
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName = _EQUIPMENT.get(modality, ("Carestream", "DRX-Revolution"))
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = study.description
    ds.SeriesDescription = description
    ds.PatientName = patient.pid
    ds.PatientID = patient.pid
    ds.PatientBirthDate = ""
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{patient.age:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study.uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    return ds


def _finish(ds: Dataset, seed: int, instance: int, pixels: PixelImage, bits_stored: int) -> Dataset:
    """Give the image its identity and pixel data; the SOP UID hangs off the series and instance."""
    ds.SOPInstanceUID = _uid(seed, ds.SeriesInstanceUID, str(instance))
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.add_new(0x7FE00010, "OW", pixels.astype("<u2").tobytes())
    return ds


def _add_private_blob(ds: Dataset, rng: random.Random, nested: bool) -> None:
    """A vendor's binary private element (and optionally one inside a private sequence): the elements the
    warehouse loader writes as ``"InlineBinary": null``."""
    block = ds.private_block(0x0009, _PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "OB", rng.randbytes(64))
    if nested:
        item = Dataset()
        item.private_block(0x0009, _PRIVATE_CREATOR, create=True).add_new(0x10, "OB", rng.randbytes(32))
        block.add_new(0x11, "SQ", Sequence([item]))


def _voi_lut_sequence(bits_stored: int) -> Sequence:
    """A sigmoid display LUT, as DX/CR modalities ship it; the loader nulls this whole sequence."""
    entries = 1 << bits_stored
    ramp = np.arange(entries, dtype=np.float64)
    lut = 65535.0 / (1.0 + np.exp(-(ramp - 0.45 * entries) / (0.1 * entries)))
    item = Dataset()
    item.add_new(0x00283002, "US", [entries, 0, 16])  # LUTDescriptor: entries, first value, bits
    item.LUTExplanation = "NORMAL"
    item.add_new(0x00283006, "OW", np.round(lut).astype("<u2").tobytes())  # LUTData
    return Sequence([item])


def _ct_series(
    patient: _Patient, study: _Study, seed: int, number: int, description: str, thickness: float, slices: int
) -> list[Dataset]:
    """An axial CT series whose slices step by SliceThickness along the normal of the axial orientation."""
    rng = _rng(seed, patient.pid, "ct", str(number))
    noise = np.random.default_rng(rng.getrandbits(64))
    series_uid = _uid(seed, patient.pid, study.uid, "series", str(number))
    size, spacing = 512, 0.703125
    origin = -(size - 1) / 2 * spacing
    z0 = float(rng.randint(-320, -260))
    datasets = []
    for index in range(slices):
        ds = _header(patient, study, CTImageStorage, "CT", (number, series_uid, description))
        z = z0 + index * thickness
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = 120
        ds.ConvolutionKernel = "LUNG" if thickness < 2.0 else "STANDARD"
        _set_axial_geometry(ds, study, origin, z, spacing, thickness)
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        _add_private_blob(ds, rng, nested=True)
        t = -0.85 + 1.7 * index / (slices - 1)
        hu = _axial_slice(size, spacing, t, patient.build, _CT_CONTRAST, patient.positive)
        hu += noise.normal(0.0, 8.0, hu.shape)
        pixels = np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16)
        datasets.append(_finish(ds, seed, index + 1, pixels, 12))
    return datasets


def _set_axial_geometry(ds: Dataset, study: _Study, origin: float, z: float, spacing: float,
                        thickness: float) -> None:
    """Axial slice geometry that dcm2niix and SimpleITK stack into one volume: positions step along z."""
    ds.SliceThickness = thickness
    ds.SpacingBetweenSlices = thickness
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = study.frame_of_reference
    ds.ImagePositionPatient = [origin, origin, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = z
    ds.PixelSpacing = [spacing, spacing]


def _mr_series(patient: _Patient, study: _Study, seed: int, slices: int) -> list[Dataset]:
    """A short axial MR series with the same geometry rules as CT, at lower resolution."""
    rng = _rng(seed, patient.pid, "mr")
    noise = np.random.default_rng(rng.getrandbits(64))
    series_uid = _uid(seed, patient.pid, study.uid, "series", "401")
    size, spacing, thickness = 256, 1.5, 5.0
    origin = -(size - 1) / 2 * spacing
    z0 = float(rng.randint(-260, -220))
    datasets = []
    for index in range(slices):
        ds = _header(patient, study, MRImageStorage, "MR", (401, series_uid, "T2 TSE AX"))
        z = z0 + index * thickness
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NORM"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 3500
        ds.EchoTime = 90
        ds.EchoTrainLength = 15
        ds.MagneticFieldStrength = 1.5
        _set_axial_geometry(ds, study, origin, z, spacing, thickness)
        ds.WindowCenter = 900
        ds.WindowWidth = 1800
        t = -0.8 + 1.6 * index / (slices - 1)
        signal = _axial_slice(size, spacing, t, patient.build, _MR_CONTRAST, patient.positive)
        signal += np.abs(noise.normal(0.0, 20.0, signal.shape))
        pixels = np.clip(np.round(signal), 0, 4095).astype(np.uint16)
        datasets.append(_finish(ds, seed, index + 1, pixels, 12))
    return datasets


def _radiograph(patient: _Patient, study: _Study, seed: int, rows: int, cols: int, bits: int) -> Dataset:
    """A single frontal chest radiograph (CR for the 10-bit one, DX otherwise) carrying both metadata
    quirks: a binary private element and a VOI LUT Sequence."""
    rng = _rng(seed, patient.pid, "xray")
    noise = np.random.default_rng(rng.getrandbits(64))
    modality = "CR" if bits == 10 else "DX"
    sop_class = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}[
        modality
    ]
    series_uid = _uid(seed, patient.pid, study.uid, "series", "1")
    view = "AP" if modality == "CR" else "PA"
    ds = _header(patient, study, sop_class, modality, (1, series_uid, f"CHEST {view}"))
    spacing = round(430.0 / rows, 4)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.KVP = 110
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.WindowCenter = 1 << (bits - 1)
    ds.WindowWidth = 1 << bits
    ds.VOILUTSequence = _voi_lut_sequence(bits)
    _add_private_blob(ds, rng, nested=False)
    maximum = float((1 << bits) - 1)
    relative = _frontal_projection(rows, cols, patient.build, patient.positive)
    relative += noise.normal(0.0, 0.01, relative.shape)
    pixels = np.clip(np.round(relative * maximum), 0, maximum).astype(np.uint16)
    return _finish(ds, seed, 1, pixels, bits)


# --- phantoms --------------------------------------------------------------------------------------


def _ellipse(
    x: FloatImage, y: FloatImage, centre: tuple[float, float], axes: tuple[float, float]
) -> npt.NDArray[np.bool_]:
    return ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 <= 1.0


def _axial_slice(
    size: int, spacing: float, t: float, build: float, contrast: tuple[float, ...], lesion: bool
) -> FloatImage:
    """A chest cross-section at relative height t in [-1, 1] (mm coordinates, +y posterior): body with a
    fat rim, lungs that taper towards apex and base, heart, aorta, vertebra and, for positive patients, a
    ground-glass opacity in the right lung, so every slice of a volume differs."""
    air, fat, soft, lung, blood, bone = contrast
    axis = (np.arange(size, dtype=np.float64) - (size - 1) / 2) * spacing
    x, y = axis[np.newaxis, :], axis[:, np.newaxis]
    image = np.full((size, size), air)
    image[_ellipse(x, y, (0.0, 10.0), (165.0 * build, 115.0 * build))] = fat
    image[_ellipse(x, y, (0.0, 10.0), (150.0 * build, 100.0 * build))] = soft
    taper = math.sqrt(max(0.05, 1.0 - t * t))
    lungs = _ellipse(x, y, (-62.0 * build, 0.0), (50.0 * build * taper, 75.0 * build * taper))
    lungs |= _ellipse(x, y, (62.0 * build, 0.0), (50.0 * build * taper, 75.0 * build * taper))
    image[lungs] = lung
    heart = max(0.0, 1.0 - ((t - 0.35) / 0.6) ** 2)
    if heart > 0.0:
        image[_ellipse(x, y, (18.0, -8.0), (55.0 * math.sqrt(heart), 45.0 * math.sqrt(heart)))] = blood
    image[_ellipse(x, y, (-22.0, 40.0), (12.0, 12.0))] = blood
    image[_ellipse(x, y, (0.0, 85.0 * build), (16.0, 14.0))] = bone
    if lesion:
        spread = 2.0 * (25.0 * taper) ** 2
        opacity = np.exp(-((x + 65.0 * build) ** 2 + (y + 10.0) ** 2) / spread)
        image += np.where(lungs, 0.45 * (soft - lung) * opacity, 0.0)
    return image


def _frontal_projection(rows: int, cols: int, build: float, haze: bool) -> FloatImage:
    """A frontal chest radiograph as relative brightness in [0, 1]: dark air and lungs, ribs across the
    lungs, bright mediastinum and heart, and bilateral lower-zone haze for positive patients."""
    y = np.linspace(-1.0, 1.0, rows)[:, np.newaxis]
    half_width = cols / rows
    x = np.linspace(-half_width, half_width, cols)[np.newaxis, :]
    image = np.full((rows, cols), 0.05)
    body = _ellipse(x, y, (0.0, 0.2), (0.72 * build, 1.35))
    image[body] = 0.55
    lungs = _ellipse(x, y, (-0.3 * build, -0.05), (0.22 * build, 0.5))
    lungs |= _ellipse(x, y, (0.3 * build, -0.05), (0.22 * build, 0.5))
    ribs = 0.1 * np.cos(np.pi * (8.0 * y + 3.0 * x * x)) ** 8
    image = np.where(lungs, 0.25 + ribs, image)
    mediastinum = (body & (np.abs(x) < 0.08)) | _ellipse(x, y, (0.08, 0.3), (0.24 * build, 0.18))
    image[mediastinum] = 0.72
    if haze:
        for side in (-0.3, 0.3):
            blob = np.exp(-((x - side * build) ** 2 + (y - 0.28) ** 2) / 0.02)
            image += np.where(lungs & ~mediastinum, 0.2 * blob, 0.0)
    return image


# --- encoding --------------------------------------------------------------------------------------


def _encode(ds: Dataset) -> bytes:
    """A Part 10 file: preamble, file meta, Explicit VR Little Endian body."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def metadata_json(dicom: bytes) -> bytes:
    """The metadata twin exactly as the warehouse loader writes it: the header without file meta or
    pixel data as DICOM JSON, every InlineBinary value and the VOI LUT Sequence replaced by null."""
    header = dcmread(BytesIO(dicom), stop_before_pixels=True)
    out = header.to_json_dict(bulk_data_threshold=_NEVER_BULK)
    _nullify(out, _INLINE_BINARY)
    _nullify(out, _VOI_LUT_SEQUENCE)
    return json.dumps(out).encode()


def _nullify(node: Any, key: str) -> None:
    """Set every value stored under key to None, at any depth (sequence items are nested dicts)."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                node[name] = None
            else:
                _nullify(value, key)
    elif isinstance(node, list):
        for item in node:
            _nullify(item, key)
