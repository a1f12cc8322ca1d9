"""The fields of a volume's JSON sidecar, named and written as dcm2niix writes its BIDS sidecars, so that
a pipeline built on dcm2niix's output reads nccidfs's the same way.

dcm2niix's conventions, each checked against ``dcm2niix -b y`` on the same series in the tests: BIDS
names; MR times (echo, repetition, inversion) in seconds where DICOM has milliseconds; AcquisitionTime
as ``HH:MM:SS.ffffff``; the manufacturer as its short name (``GE``, ``Siemens``, ``Philips``...);
ImageType as a list without empty values, the other multi-valued code strings (ScanningSequence,
SequenceVariant, ScanOptions) joined by backslashes; numbers with six significant digits, integers as
integers. Read from the first image's metadata twin (DICOM JSON); pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydicom.datadict import tag_for_keyword

SOFTWARE = "nccidfs"
_SIGNIFICANT_DIGITS = 6  # dcm2niix prints floats with %g
_SECONDS_PER_MILLISECOND = 0.001

# How a field is written: as is, a list, joined by backslashes, milliseconds as seconds, a time of day.
_TEXT, _LIST, _JOINED, _SECONDS, _TIME = "text", "list", "joined", "seconds", "time"

# BIDS name, DICOM keyword, how it is written
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("Modality", "Modality", _TEXT),
    ("Manufacturer", "Manufacturer", _TEXT),
    ("ManufacturersModelName", "ManufacturerModelName", _TEXT),
    ("SoftwareVersions", "SoftwareVersions", _JOINED),
    ("BodyPartExamined", "BodyPartExamined", _TEXT),
    ("PatientPosition", "PatientPosition", _TEXT),
    ("StudyInstanceUID", "StudyInstanceUID", _TEXT),
    ("SeriesInstanceUID", "SeriesInstanceUID", _TEXT),
    ("SeriesDescription", "SeriesDescription", _TEXT),
    ("ProtocolName", "ProtocolName", _TEXT),
    ("SeriesNumber", "SeriesNumber", _TEXT),
    ("AcquisitionNumber", "AcquisitionNumber", _TEXT),
    ("ImageType", "ImageType", _LIST),
    ("AcquisitionDate", "AcquisitionDate", _TEXT),
    ("AcquisitionTime", "AcquisitionTime", _TIME),
    ("SliceThickness", "SliceThickness", _TEXT),
    ("SpacingBetweenSlices", "SpacingBetweenSlices", _TEXT),
    ("ConvolutionKernel", "ConvolutionKernel", _JOINED),
    ("KVP", "KVP", _TEXT),
    ("MagneticFieldStrength", "MagneticFieldStrength", _TEXT),
    ("ImagingFrequency", "ImagingFrequency", _TEXT),
    ("ScanningSequence", "ScanningSequence", _JOINED),
    ("SequenceVariant", "SequenceVariant", _JOINED),
    ("ScanOptions", "ScanOptions", _JOINED),
    ("SequenceName", "SequenceName", _TEXT),
    ("MRAcquisitionType", "MRAcquisitionType", _TEXT),
    ("EchoTime", "EchoTime", _SECONDS),
    ("RepetitionTime", "RepetitionTime", _SECONDS),
    ("InversionTime", "InversionTime", _SECONDS),
    ("FlipAngle", "FlipAngle", _TEXT),
    ("EchoTrainLength", "EchoTrainLength", _TEXT),
    ("PixelBandwidth", "PixelBandwidth", _TEXT),
    ("ImageOrientationPatientDICOM", "ImageOrientationPatient", _LIST),
)

# What dcm2niix calls each manufacturer, by the start of the Manufacturer value (upper case).
_MANUFACTURERS: tuple[tuple[str, str], ...] = (
    ("SIEMENS", "Siemens"), ("GE ", "GE"), ("GE_", "GE"), ("GENERAL ELECTRIC", "GE"), ("PHILIPS", "Philips"),
    ("TOSHIBA", "Toshiba"), ("CANON", "Canon"),
    ("UIH", "UIH"), ("UNITED IMAGING", "UIH"), ("HITACHI", "Hitachi"), ("BRUKER", "Bruker"), ("MEDISO", "Mediso"),
)


def sidecar_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar fields present in one image's metadata twin, written as dcm2niix writes them."""
    fields: dict[str, Any] = {"ConversionSoftware": SOFTWARE}
    for name, keyword, how in _FIELDS:
        values = [v for v in json_values(meta, keyword) if isinstance(v, str | int | float) and v != ""]
        if values:
            fields[name] = _written(keyword, values, how)
    return fields


def _written(keyword: str, values: list[Any], how: str) -> Any:
    if how == _LIST:
        return [_number(v) for v in values]
    if how == _JOINED:
        return "\\".join(str(v) for v in values)
    if how == _SECONDS:
        return _number(float(values[0]) * _SECONDS_PER_MILLISECOND)
    if how == _TIME:
        return _time_of_day(str(values[0]))
    if keyword == "Manufacturer":
        return _manufacturer(str(values[0]))
    return _number(values[0])


def _number(value: Any) -> Any:
    """A number with dcm2niix's six significant digits, integral ones as integers; text as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    rounded = float(f"{value:.{_SIGNIFICANT_DIGITS}g}")
    return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded


def _time_of_day(value: str) -> str:
    """DICOM TM (``HHMMSS.ffffff``, fields from the right optional) as ``HH:MM:SS.ffffff``; anything
    else as it is."""
    whole, _, fraction = value.strip().partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        return value
    hours, minutes, seconds = whole[0:2], whole[2:4] or "00", whole[4:6] or "00"
    return f"{hours}:{minutes}:{seconds}.{fraction[:6].ljust(6, '0')}"


def _manufacturer(value: str) -> str:
    upper = value.strip().upper() + " "  # so that a bare "GE" matches "GE "
    return next((short for prefix, short in _MANUFACTURERS if upper.startswith(prefix)), value.strip())


def json_values(meta: Mapping[str, Any], keyword: str) -> list[Any]:
    """The "Value" list of an element in a DICOM JSON object; [] when absent or null."""
    attribute = meta.get(f"{tag_for_keyword(keyword):08X}")
    value = attribute.get("Value") if isinstance(attribute, dict) else None
    return value if isinstance(value, list) else []
