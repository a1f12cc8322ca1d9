"""A CT or MR series as one NIfTI-1 volume, planned from the series' metadata JSON twins alone.

A slice is a single-frame image or one frame of an enhanced multi-frame image (Enhanced CT and MR: each
frame placed by its functional groups, see :mod:`nccidfs.derived.frames`); the planning is the same.
Several images at each position make a 4D volume, one 3D volume after another in the order of the
attribute that tells them apart (echo, time point, b-value...: :mod:`nccidfs.derived.split`).

Why a plan comes first: the mount shows a file's size at stat time, before any image is fetched, and
nibabel memory-maps ``.nii`` files, so that size must be exact. ``plan_volume`` fixes, from the JSON
twins only, whether the series is one volume at all, the slice order, the voxel type and the geometry;
the pixels are read later and only fill in the planned layout.

Layout of the file: nibabel's 348-byte NIfTI-1 header, 4 zero bytes (no extensions), then the voxels.
Voxel (i, j, k) is column i and row j of slice k, so slice k is the image's pixel array in row-major
order, one contiguous block at ``HEADER_BYTES + k * plan.slice_bytes``. A reader of one byte range needs
only the images of the slices it covers.

Geometry follows DICOM PS3.3 C.7.6.2.1.1 and NIfTI's RAS+ world: the first voxel axis steps along the
row direction cosines by the column spacing, the second along the column cosines by the row spacing,
the third along the slice normal (row x column) by the slice spacing; DICOM's LPS is turned into RAS by
negating x and y. This is the frame dcm2niix writes up to a flip of axes, which the tests check.

Voxel type, as dcm2niix chooses it: the stored values untouched, with the shared RescaleSlope and
RescaleIntercept as scl_slope/scl_inter, when every slice has the same rescale: int16 when every value
the stored bits can hold fits it (dcm2niix turns uint16 into int16 then), uint16 for unsigned 16-bit
images, 8-bit images widened to int16; float32 holding the rescaled values when slices differ.

What is refused, with a reason: geometry that is missing, not finite or absurd (sizes outside 1 ..
``MAX_SIDE``, spacings outside 0 .. ``MAX_SPACING_MM``, positions beyond ``MAX_POSITION_MM``,
orientation cosines that are not two orthogonal unit vectors); gantry-tilted CT, whose slices are
sheared, not a box (the reason says "gantry tilt"). A Siemens mosaic is cut into its slices
(:mod:`nccidfs.derived.mosaic`), never served as one raw slice.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from nccidfs.derived.agreement import Expected, checked_image, checked_plain_pixels
from nccidfs.derived.bids import json_values, sidecar_fields
from nccidfs.derived.frames import SINGLE, NotFrames, frames_of
from nccidfs.derived.mosaic import Mosaic, NotMosaic, check_slice_normal, mosaic_of, tiles_of
from nccidfs.derived.pixels import read_frames, read_pixels, undecodable_reason
from nccidfs.derived.split import SPLIT_KEYWORDS, NotSplit, positions, split_volumes

HEADER_BYTES = 352  # the NIfTI-1 header (348) and the 4-byte extension flag: vox_offset of a .nii
_INT16 = np.dtype("<i2")
_UINT16 = np.dtype("<u2")
_FLOAT32 = np.dtype("<f4")
# Geometry a real scanner cannot have: past these the twin is wrong, and a volume of it would be absurd.
MAX_SIDE = 16384  # rows or columns; the largest detectors are about 4,300 pixels a side
MAX_SPACING_MM = 1000.0
MAX_POSITION_MM = 1e6
_COSINE_TOLERANCE = 1e-3  # how far the orientation's cosines may be from unit length and orthogonality
# Orientation cosines and pixel spacings that differ by less than these are the same.
_ORIENTATION_TOLERANCE = 1e-4
_SPACING_TOLERANCE_MM = 1e-3
# A slice may sit this far from where an evenly spaced stack puts it: 0.01 mm of rounding in the
# positions plus 5% of a slice step, far less than the whole step a missing slice leaves.
_POSITION_TOLERANCE_MM = 0.01
_POSITION_TOLERANCE_STEPS = 0.05

Affine = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Rejection:
    """A series that is not one volume, with the reason in words for the sidecar."""

    reason: str
    tags: Mapping[str, Any]  # the sidecar fields of the series' first image


@dataclass(frozen=True, eq=False)
class VolumePlan:
    """Everything about the volume that the metadata decides: which image is which slice, and how
    the voxels are stored. ``slices[k]`` is the id (the caller's key for the image) of slice k."""

    slices: tuple[str, ...]  # volume after volume, each in slice order
    frames: tuple[int, ...]  # the frame (or mosaic tile) of each slice's image (frames.SINGLE: the image)
    volumes: int  # the fourth dimension: several images at each position, split by an attribute
    rows: int
    columns: int
    dtype: np.dtype[Any]
    scl_slope: float
    scl_inter: float
    rescale: tuple[tuple[float, float], ...]  # (slope, intercept) per slice, applied for float32
    affine: Affine  # voxel -> RAS+ millimetres
    tags: Mapping[str, Any]
    mosaic: Mosaic | None = None  # every image a Siemens mosaic of this layout: slices are its tiles
    orientation: tuple[float, ...] = ()  # ImageOrientationPatient of the slices

    @property
    def slice_bytes(self) -> int:
        return self.rows * self.columns * self.dtype.itemsize

    @property
    def size(self) -> int:
        """The exact length of the .nii file."""
        return HEADER_BYTES + len(self.slices) * self.slice_bytes


@dataclass(frozen=True)
class _Slice:
    """The geometry and pixel format of one image, as read from its metadata twin."""

    ident: str
    frame: int
    rows: int
    columns: int
    orientation: tuple[float, ...]  # ImageOrientationPatient: row cosines, then column cosines
    position: tuple[float, ...]  # ImagePositionPatient of the first transmitted pixel
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns
    slope: float
    intercept: float
    bits_stored: int
    signed: bool
    keys: Mapping[str, Any]  # the values of split.SPLIT_KEYWORDS that tell images at one position apart


class _NotAVolume(Exception):
    """Raised inside planning with the reason a series is no volume."""


def plan_volume(metas: Mapping[str, Mapping[str, Any]]) -> VolumePlan | Rejection:
    """Plan the volume of one series from its images' metadata twins (parsed DICOM JSON), keyed by
    the caller's id for each image. A Rejection names the first rule the series breaks."""
    idents = sorted(metas)
    tags = sidecar_fields(_first_frame(metas[idents[0]])) if idents else {}
    try:
        mosaic = _one_mosaic(idents, metas)
        slices = [_read_slice(ident, number, frame)
                  for ident in idents for number, frame in _frames(ident, metas[ident], mosaic)]
        _check_same_frame(slices)
        split, volumes = _volumes(slices)
        stacks = [_stack(volume, metas[idents[0]]) for volume in volumes]
        _check_same_positions(stacks)
    except _NotAVolume as why:
        return Rejection(str(why), tags)
    if split is not None:
        tags = {**tags, "VolumeSplitBy": split[0], "VolumeSplitValues": list(split[1])}
    ordered, step = [s for stack, _ in stacks for s in stack], stacks[0][1]
    first = ordered[0]
    rescale = tuple((s.slope, s.intercept) for s in ordered)
    dtype = _voxel_type(first) if len(set(rescale)) == 1 else _FLOAT32
    slope, inter = rescale[0] if dtype != _FLOAT32 else (1.0, 0.0)
    return VolumePlan(
        slices=tuple(s.ident for s in ordered),
        frames=tuple(s.frame for s in ordered),
        volumes=len(stacks),
        rows=first.rows,
        columns=first.columns,
        dtype=dtype,
        scl_slope=slope,
        scl_inter=inter,
        rescale=rescale,
        affine=_affine(first, step),
        tags=tags,
        mosaic=mosaic,
        orientation=first.orientation,
    )


def encode_header(plan: VolumePlan) -> bytes:
    """The first HEADER_BYTES of the file: nibabel's header for the plan, then an empty extension flag."""
    header = nib.Nifti1Header()
    header.set_data_dtype(plan.dtype)
    depth = len(plan.slices) // plan.volumes
    header.set_data_shape((plan.columns, plan.rows, depth) + ((plan.volumes,) if plan.volumes > 1 else ()))
    header.set_qform(plan.affine, code=1)  # 1: scanner-based anatomical coordinates
    header.set_sform(plan.affine, code=1)
    header.set_slope_inter(plan.scl_slope, plan.scl_inter)
    header.set_xyzt_units("mm", "sec")
    header["vox_offset"] = HEADER_BYTES
    header["descrip"] = b"nccidfs"
    return bytes(header.binaryblock) + bytes(HEADER_BYTES - len(header.binaryblock))


def encode_slice(plan: VolumePlan, index: int, dicom: bytes) -> bytes:
    """The voxels of slice ``index`` from its image's DICOM bytes: exactly ``plan.slice_bytes`` bytes.
    Raises ValueError when the image cannot be decoded or does not match its metadata."""
    return bytes(encode_slices(plan, [index], dicom)[0])


def encode_slices(plan: VolumePlan, indices: Sequence[int], dicom: bytes,
                  parsed: Dataset | None = None) -> list[memoryview]:
    """The voxels of several slices that are frames or tiles of one image (or the one slice of a
    single-frame image), the image parsed once (``parsed``: its dataset, when the caller has it).
    Each is a view of ``plan.slice_bytes`` bytes: of the image's own pixel bytes when they are already the
    voxels (a 16-bit slice stored as the volume stores it), so a volume copies them only into its file."""
    frames = [plan.frames[index] for index in indices]
    if plan.mosaic is not None:
        dataset, whole = read_pixels(dicom, parsed)
        check_slice_normal(dataset, plan.orientation)
        pixels = [plan.mosaic.tile(whole, frame) for frame in frames]
    elif all(frame == SINGLE for frame in frames):
        pixels = [read_pixels(dicom, parsed)[1]] * len(indices)
    else:
        pixels = read_frames(dicom, frames)
    return [_encoded(plan, index, values) for index, values in zip(indices, pixels, strict=True)]


def encode_checked(plan: VolumePlan, indices: Sequence[int], dicom: bytes, promised: Expected) -> list[memoryview]:
    """As ``encode_slices``, once the image is shown to be the image its twin promised (``checked_image``);
    a plain 16-bit slice (most CT) is checked and read without pydicom."""
    if plan.mosaic is None and all(plan.frames[index] == SINGLE for index in indices):
        pixels = checked_plain_pixels(dicom, promised)
        if pixels is not None:
            return [_encoded(plan, index, pixels) for index in indices]
    return encode_slices(plan, indices, *checked_image(dicom, promised))


def _encoded(plan: VolumePlan, index: int, pixels: npt.NDArray[Any]) -> memoryview:
    if pixels.shape != (plan.rows, plan.columns):
        raise ValueError(f"{plan.slices[index]}: pixels {pixels.shape}, metadata {plan.rows}x{plan.columns}")
    if plan.dtype != _FLOAT32:
        limits = np.iinfo(plan.dtype)
        fits = np.can_cast(pixels.dtype, plan.dtype)  # every value of the type fits: no scan of the pixels
        if not fits and pixels.size and (pixels.min() < limits.min or pixels.max() > limits.max):
            raise ValueError(f"{plan.slices[index]}: stored values do not fit {plan.dtype.name}")
        return _bytes_of(pixels.astype(plan.dtype, copy=False))
    slope, intercept = plan.rescale[index]
    return _bytes_of((pixels.astype(np.float64) * slope + intercept).astype(_FLOAT32))


def _bytes_of(voxels: npt.NDArray[Any]) -> memoryview:
    """The array's bytes in row-major order, without a copy when it is laid out so already."""
    return np.ascontiguousarray(voxels).data.cast("B")


def volume_chunks(plan: VolumePlan, images: Mapping[str, bytes]) -> Iterator[bytes | memoryview]:
    """The file in pieces: the header, then the slices, the frames of one image made together;
    ``images`` maps slice ids to DICOM."""
    yield encode_header(plan)
    for ident, run in groupby(range(len(plan.slices)), key=lambda index: plan.slices[index]):
        yield from encode_slices(plan, list(run), images[ident])


def build_volume(plan: VolumePlan, images: Mapping[str, bytes]) -> bytes:
    """The whole .nii file, exactly ``plan.size`` bytes."""
    data = b"".join(volume_chunks(plan, images))
    if len(data) != plan.size:  # a broken invariant, not bad input: every piece has a planned length
        raise AssertionError(f"volume of {len(data)} bytes, planned {plan.size}")
    return data


def sidecar(outcome: VolumePlan | Rejection) -> bytes:
    """A BIDS-style JSON sidecar: key acquisition tags, named and scaled as dcm2niix names them, or
    for a rejected series the reason it has no volume."""
    document = dict(outcome.tags)
    if isinstance(outcome, Rejection):
        document["NoVolumeReason"] = outcome.reason
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


# --- reading the metadata twins --------------------------------------------------------------------


def _numbers(meta: Mapping[str, Any], keyword: str, count: int, ident: str) -> tuple[float, ...]:
    """Exactly ``count`` finite numbers of an element, or the series is rejected naming it."""
    try:
        numbers = tuple(float(value) for value in json_values(meta, keyword))
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise _NotAVolume(f"{ident}: {keyword} is missing or not {count} numbers")
    return numbers


def _optional_number(meta: Mapping[str, Any], keyword: str, default: float) -> float:
    values = json_values(meta, keyword)
    try:
        return float(values[0]) if values else default
    except (TypeError, ValueError):
        return default


def _one_mosaic(idents: Sequence[str], metas: Mapping[str, Mapping[str, Any]]) -> Mosaic | None:
    """The layout every image of the series shares as a Siemens mosaic, or None when none is one."""
    layouts: dict[str, Mosaic | None] = {}
    for ident in idents:
        try:
            layouts[ident] = mosaic_of(metas[ident])
        except NotMosaic as why:
            raise _NotAVolume(f"{ident}: {why}") from None
    if not idents:
        return None
    first = layouts[idents[0]]
    other = next((ident for ident in idents if layouts[ident] != first), None)
    if other is not None:
        raise _NotAVolume(f"mosaics of different layouts, or mosaics and single images: {idents[0]} and {other}")
    return first


def _frames(ident: str, meta: Mapping[str, Any], mosaic: Mosaic | None) -> list[tuple[int, Mapping[str, Any]]]:
    try:
        return tiles_of(meta, mosaic) if mosaic is not None else frames_of(meta)
    except (NotFrames, NotMosaic) as why:
        raise _NotAVolume(f"{ident}: {why}") from None


def _first_frame(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """What the sidecar describes: the first frame of an enhanced image (its functional groups hold the
    acquisition's values), or the image itself."""
    try:
        return frames_of(meta)[0][1]
    except NotFrames:
        return meta


def _read_slice(ident: str, frame: int, meta: Mapping[str, Any]) -> _Slice:
    undecodable = undecodable_reason(meta)
    if undecodable is not None:
        raise _NotAVolume(f"{ident}: {undecodable}")
    frames = _optional_number(meta, "NumberOfFrames", 1.0)
    samples = _optional_number(meta, "SamplesPerPixel", 1.0)
    if frames != 1 or samples != 1:
        raise _NotAVolume(f"{ident}: {frames:g} frames of {samples:g} samples; only single-frame greyscale")
    (rows,), (columns,) = _numbers(meta, "Rows", 1, ident), _numbers(meta, "Columns", 1, ident)
    if not (1 <= rows <= MAX_SIDE and 1 <= columns <= MAX_SIDE and rows.is_integer() and columns.is_integer()):
        raise _NotAVolume(f"{ident}: {rows:g} rows of {columns:g} columns, not a size between 1 and {MAX_SIDE}")
    spacing = _numbers(meta, "PixelSpacing", 2, ident)
    if not all(0 < value <= MAX_SPACING_MM for value in spacing):
        raise _NotAVolume(f"{ident}: PixelSpacing {list(spacing)} is not between 0 and {MAX_SPACING_MM:g} mm")
    position = _numbers(meta, "ImagePositionPatient", 3, ident)
    if max(abs(value) for value in position) > MAX_POSITION_MM:
        raise _NotAVolume(f"{ident}: ImagePositionPatient {list(position)} is beyond {MAX_POSITION_MM:g} mm")
    orientation = _numbers(meta, "ImageOrientationPatient", 6, ident)
    if not _is_orthonormal(orientation):
        raise _NotAVolume(f"{ident}: ImageOrientationPatient {list(orientation)} is not two orthogonal unit vectors")
    return _Slice(
        ident=ident,
        frame=frame,
        rows=int(rows),
        columns=int(columns),
        orientation=orientation,
        position=position,
        spacing=(spacing[0], spacing[1]),
        slope=_optional_number(meta, "RescaleSlope", 1.0),
        intercept=_optional_number(meta, "RescaleIntercept", 0.0),
        bits_stored=int(_optional_number(meta, "BitsStored", 16.0)),
        signed=_optional_number(meta, "PixelRepresentation", 0.0) == 1,
        keys=_split_keys(meta),
    )


def _split_keys(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The first value of each attribute that may tell images at one position apart."""
    keys = {}
    for keyword in SPLIT_KEYWORDS:
        values = json_values(meta, keyword)
        if values and isinstance(values[0], str | int | float):
            keys[keyword] = values[0]
    return keys


def _is_orthonormal(orientation: Sequence[float]) -> bool:
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    lengths = (np.linalg.norm(row), np.linalg.norm(column))
    return all(abs(length - 1) < _COSINE_TOLERANCE for length in lengths) and abs(row @ column) < _COSINE_TOLERANCE


# --- the rules of one volume -----------------------------------------------------------------------


def _check_same_frame(slices: Sequence[_Slice]) -> None:
    """One size, one pixel spacing and one orientation for every slice."""
    if not slices:
        raise _NotAVolume("the series has no images")
    first = slices[0]
    for other in slices[1:]:
        if (other.rows, other.columns) != (first.rows, first.columns):
            raise _NotAVolume(
                f"images of different sizes: {first.rows}x{first.columns} ({first.ident}) and "
                f"{other.rows}x{other.columns} ({other.ident})"
            )
        if not np.allclose(other.spacing, first.spacing, rtol=0.0, atol=_SPACING_TOLERANCE_MM):
            raise _NotAVolume(f"different pixel spacings: {first.spacing} and {other.spacing} ({other.ident})")
        if not np.allclose(other.orientation, first.orientation, rtol=0.0, atol=_ORIENTATION_TOLERANCE):
            raise _NotAVolume(f"more than one orientation: {first.orientation} and {other.orientation}")


def _volumes(slices: Sequence[_Slice]) -> tuple[tuple[str, list[Any]] | None, list[list[_Slice]]]:
    """The slices as one volume, or, with several images at each position, as the volumes an attribute
    splits them into (with the attribute and its values)."""
    normal = _normal(slices[0].orientation)
    groups = positions([float(normal @ np.asarray(s.position)) for s in slices], _POSITION_TOLERANCE_MM)
    if all(len(group) == 1 for group in groups):
        return None, [list(slices)]
    try:
        keyword, values, volumes = split_volumes(groups, [s.keys for s in slices])
    except NotSplit as why:
        crowded = next(group for group in groups if len(group) > 1)
        raise _NotAVolume(f"several images at one position ({slices[crowded[0]].ident} and "
                          f"{slices[crowded[1]].ident}): {why}") from None
    return (keyword, values), [[slices[i] for i in volume] for volume in volumes]


def _check_same_positions(stacks: Sequence[tuple[list[_Slice], float]]) -> None:
    """Every volume of a 4D series at the positions of the first."""
    first = np.array([s.position for s in stacks[0][0]])
    for stack, _ in stacks[1:]:
        if not np.allclose(np.array([s.position for s in stack]), first, rtol=0.0, atol=_POSITION_TOLERANCE_MM):
            raise _NotAVolume(f"the volumes of the series are at different positions ({stack[0].ident})")


def _normal(orientation: Sequence[float]) -> npt.NDArray[np.float64]:
    """The slice normal: row cosines x column cosines."""
    return np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))


def _stack(slices: Sequence[_Slice], first_meta: Mapping[str, Any]) -> tuple[list[_Slice], float]:
    """The slices ordered along the normal, and the step between them, if they are evenly spaced
    along the normal with no gap, no duplicate and no drift within the plane."""
    normal = _normal(slices[0].orientation)
    ordered = sorted(slices, key=lambda s: float(np.dot(normal, s.position)))
    if len(ordered) == 1:
        thickness = _optional_number(first_meta, "SliceThickness", 1.0)
        return ordered, _optional_number(first_meta, "SpacingBetweenSlices", thickness) or 1.0
    positions = np.array([s.position for s in ordered])
    depths = positions @ normal
    steps = np.diff(depths)
    if steps.min() <= _POSITION_TOLERANCE_MM:
        index = int(np.argmin(steps))
        raise _NotAVolume(f"two images at one position: {ordered[index].ident} and {ordered[index + 1].ident}")
    step = float((depths[-1] - depths[0]) / (len(ordered) - 1))
    expected = positions[0] + np.outer(np.arange(len(ordered)) * step, normal)
    drift = np.linalg.norm(positions - expected, axis=1)
    if drift.max() > _POSITION_TOLERANCE_MM + _POSITION_TOLERANCE_STEPS * step:
        tilt = _optional_number(first_meta, "GantryDetectorTilt", 0.0)
        raise _NotAVolume(_spacing_reason(ordered, steps, float(np.median(steps)), tilt))
    return ordered, step


def _spacing_reason(ordered: Sequence[_Slice], steps: npt.NDArray[np.float64], typical: float, tilt: float) -> str:
    """Why positions do not form a stack: a gap, uneven steps, or a shift within the plane (a gantry
    tilt, whose angle GantryDetectorTilt gives when the scanner wrote it)."""
    index = int(np.argmax(np.abs(steps - typical)))
    if abs(steps[index] - typical) > _POSITION_TOLERANCE_STEPS * typical:
        return (
            f"uneven slice spacing: {steps[index]:.4g} mm between {ordered[index].ident} and "
            f"{ordered[index + 1].ident}, {typical:.4g} mm elsewhere (a missing slice?)"
        )
    angle = f" of {tilt:g} degrees" if tilt else ""
    return f"gantry tilt{angle}: slice positions drift within the image plane; the stack is sheared, not a box"


def _voxel_type(first: _Slice) -> np.dtype[Any]:
    """int16 when every value the stored bits can hold fits it, else uint16 (unsigned 16-bit), else float32."""
    if first.bits_stored <= (16 if first.signed else 15):
        return _INT16
    return _UINT16 if not first.signed and first.bits_stored == 16 else _FLOAT32


def _affine(first: _Slice, step: float) -> Affine:
    """Voxel (column, row, slice) -> RAS+ mm, from the first slice's position and orientation."""
    row_cosines = np.asarray(first.orientation[:3])
    column_cosines = np.asarray(first.orientation[3:])
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cosines * column_spacing
    lps[:3, 1] = column_cosines * row_spacing
    lps[:3, 2] = _normal(first.orientation) * step
    lps[:3, 3] = first.position
    affine: Affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return affine
