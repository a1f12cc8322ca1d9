"""The NCCID warehouse's layout, written once: its folders, file suffixes, the image -> metadata-twin rule,
where a patient's folder is, and how clinical files are named.

The warehouse loader writes, under the prefix::

    <modality>/<Patient_ID>/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.dcm
    <modality>-metadata/<Patient_ID>/<StudyInstanceUID>/<SeriesInstanceUID>/<image>.json
    data/<Patient_ID>/status_<YYYY-MM-DD>.json  or  data_<YYYY-MM-DD>.json

Each image has a metadata twin: its DICOM header as JSON, at the same place in the modality's
``-metadata`` folder, ``.dcm`` made ``.json``. Paths here are relative keys (``ct/P/...``) or mount paths
(``/ct/P/...``); the rules keep a leading ``/`` as they find it. Pure: no I/O.
"""

from __future__ import annotations

import re

# The image folders, one per modality; "unknown" holds modalities outside CT/MR/DX/CR.
CT, MRI, XRAY, UNKNOWN = "ct", "mri", "xray", "unknown"
IMAGE_FOLDERS = (CT, MRI, XRAY, UNKNOWN)
# An image folder's metadata twins are in the folder of this name plus this suffix.
TWIN_FOLDER_SUFFIX = "-metadata"
# The clinical folder: one folder per patient holding dated JSON files.
CLINICAL_FOLDER = "data"
IMAGE_SUFFIX = ".dcm"
TWIN_SUFFIX = ".json"
# Keys this deep below the prefix (``ct/<Patient_ID>/``) are a patient's folder.
PATIENT_DEPTH = 2
# The clinical files' kinds: a ``data_`` file is written for a COVID-positive patient, ``status_`` otherwise.
POSITIVE_KIND, NEGATIVE_KIND = "data", "status"
# A clinical file's name; NHSX match the kind whatever its case (Data_, Status_), and so do we.
CLINICAL_FILE_NAME = re.compile(rf"(?P<kind>{POSITIVE_KIND}|{NEGATIVE_KIND})_(?P<date>\d{{4}}-\d{{2}}-\d{{2}})\.json",
                                re.IGNORECASE)


def patient_folder(key: str) -> str:
    """``ct/P/S/R/x.dcm`` -> ``ct/P/``: the patient's folder a relative key lies in (a shorter key is
    returned as it is, with a ``/``)."""
    return "/".join(key.split("/", PATIENT_DEPTH)[:PATIENT_DEPTH]) + "/"


def twin_folder(folder: str) -> str:
    """``ct`` -> ``ct-metadata``: the folder holding the twins of an image folder's images."""
    return folder + TWIN_FOLDER_SUFFIX


def is_twin_folder(folder: str) -> bool:
    """Whether a top-level folder holds metadata twins (``ct-metadata``) rather than images."""
    return folder.endswith(TWIN_FOLDER_SUFFIX)


# Every folder the loader writes, in the order the mount's default lists them.
KNOWN_FOLDERS = (CT, twin_folder(CT), MRI, twin_folder(MRI), XRAY, twin_folder(XRAY), CLINICAL_FOLDER, UNKNOWN,
                 twin_folder(UNKNOWN))


def is_image(name: str) -> bool:
    """Whether a file name (or key) is an image's: it ends in ``.dcm``."""
    return name.endswith(IMAGE_SUFFIX)


def image_id(name: str) -> str:
    """``x.dcm`` -> ``x``: an image's name without its suffix, shared with its twin."""
    return name.removesuffix(IMAGE_SUFFIX)


def twin_name(image_name: str) -> str:
    """``x.dcm`` -> ``x.json``: the file name of an image's twin."""
    return image_id(image_name) + TWIN_SUFFIX


def twin_folder_path(path: str) -> str | None:
    """``ct/P/S/R/`` -> ``ct-metadata/P/S/R/``: the path in the twin folder of a path in an image folder;
    None for a top-level path, or one already in a twin folder. Slashes at either end are kept."""
    rooted = path.startswith("/")
    top, slash, below = path.removeprefix("/").partition("/")
    if not below.strip("/") or is_twin_folder(top):
        return None
    return "/" * rooted + twin_folder(top) + slash + below


def twin_of(path: str) -> str | None:
    """``ct/P/S/R/x.dcm`` -> ``ct-metadata/P/S/R/x.json``; None for a path that is no image in an image
    folder (not ``.dcm``, at the top, or in a twin folder)."""
    renamed = twin_folder_path(path)
    if renamed is None or not is_image(path):
        return None
    return twin_name(renamed)
