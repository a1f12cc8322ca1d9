"""Crafted DICOM images and metadata twins for the hostile tests of the derived views: series of any size,
deflated images, twins that disagree with their images, as the warehouse lays them out."""

from __future__ import annotations

import copy
import json
from io import BytesIO
from typing import Any

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from tests.mounting import PREFIX

STUDY = "1.2.826.0.1.3680043.8.498.1"
# Real CT twins carry tens of references to other images; so do these, to weigh what a real one weighs.
REFERENCES = 40
PIXEL_DATA = 0x7FE00010


def dataset(modality: str, rows: int, columns: int, series: str, instance: int,
            transfer_syntax: UID = ExplicitVRLittleEndian, pixels: bytes | None = None) -> Dataset:
    """A single-frame 16-bit greyscale image; pixels default to a ramp of the right length."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = CTImageStorage if modality == "CT" else DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = f"{series}.{instance}"
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "Hostile1"
    ds.Modality = modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = STUDY, series, instance
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if modality == "CT":
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-100.0, -100.0, 2.5 * instance]
        ds.PixelSpacing = [0.75, 0.75]
        ds.SliceThickness = 2.5
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.ReferencedImageSequence = Sequence([_reference(series, i) for i in range(REFERENCES)])
    ds.PixelData = pixels if pixels is not None else (np.arange(rows * columns) % 4000).astype("<u2").tobytes()
    return ds


def _reference(series: str, index: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = f"{series}.{index}.99"
    return item


def encode(ds: Dataset) -> bytes:
    """A Part 10 file in the dataset's transfer syntax (pydicom deflates a deflated one)."""
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def twin(ds: Dataset) -> dict[str, Any]:
    """The metadata twin as the warehouse makes it: the header as DICOM JSON, without pixel data."""
    header = Dataset()
    for element in ds:
        if element.tag != PIXEL_DATA:
            header.add(copy.deepcopy(element))
    document: dict[str, Any] = json.loads(json.dumps(header.to_json_dict(bulk_data_threshold=10**20)))
    return document


def keys(folder: str, series: str, ident: str, patient: str = "Hostile1") -> tuple[str, str]:
    """The image's key and its twin's key."""
    where = f"{patient}/{STUDY}/{series}/{ident}"
    return f"{PREFIX}{folder}/{where}.dcm", f"{PREFIX}{folder}-metadata/{where}.json"


def series_objects(folder: str, series: str, slices: int, rows: int = 8, columns: int = 8,
                   patient: str = "Hostile1") -> dict[str, bytes]:
    """A CT (or X-ray) series: each image and its twin, under the warehouse's keys."""
    modality = "CT" if folder in ("ct", "mri") else "DX"
    objects = {}
    for instance in range(1, slices + 1):
        ds = dataset(modality, rows, columns, series, instance)
        image_key, twin_key = keys(folder, series, f"img{instance:04d}", patient)
        objects[image_key] = encode(ds)
        objects[twin_key] = json.dumps(twin(ds)).encode()
    return objects


def deflate_bomb(inflated_bytes: int, series: str) -> Dataset:
    """An X-ray in the deflated transfer syntax whose zero pixels inflate to about ``inflated_bytes``."""
    side = int((inflated_bytes // 2) ** 0.5)
    return dataset("DX", side, side, series, 1, DeflatedExplicitVRLittleEndian, bytes(side * side * 2))
