"""``.nccidfs/volumes/{ct,mri}/<Patient_ID>/<STUDY_UID>/<SERIES_UID>.nii`` (+ ``<SERIES_UID>.json``
sidecar): each series as one NIfTI-1 volume, made by :mod:`nccidfs.derived.volume`, or only a ``.json``
saying why it is not one volume. A range read makes only the slices it covers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy

from nccidfs.derived.volume import (
    HEADER_BYTES,
    Rejection,
    VolumePlan,
    encode_checked,
    encode_header,
    plan_volume,
    sidecar,
)
from nccidfs.errors import NotFound
from nccidfs.layout import CT, MRI
from nccidfs.objects import Entry, ObjectInfo
from nccidfs.views.generated import SIDECAR_SUFFIX, Made, ObjectReader, Producer, Sidecar, version_of
from nccidfs.views.registry import Parts, VirtualFile
from nccidfs.views.series import (
    Derived,
    SeriesImages,
    SeriesLayer,
    decoding_work,
    naming,
    oversized_reason,
    promised_by,
)

log = logging.getLogger(__name__)


def volume_producer(plan: VolumePlan, images: Sequence[ObjectInfo], reader: ObjectReader,
                    encode: Callable[[list[int], bytes], list[memoryview]], made: Made,
                    scope: tuple[str, ...]) -> Producer:
    """Bytes of a volume file made from just the slices a range covers (each slice has a fixed place);
    ``encode(indices, dicom)`` makes the slices ``indices``, frames of one image, from its bytes. A slice
    that a range cuts is kept in ``made`` under ``scope`` for a moment: the next range holds its rest."""

    def slices(first: int, last: int) -> dict[int, bytes | memoryview]:
        known: dict[int, bytes | memoryview] = {
            index: data for index in range(first, last) if (data := made.get((*scope, str(index)))) is not None}
        by_image: dict[ObjectInfo, list[int]] = {}  # frames of one image: read and parse it once
        for index in range(first, last):
            if index not in known:
                by_image.setdefault(images[index], []).append(index)
        bodies = reader.read_many(list(by_image), keep=False, rank=HEADER_BYTES + first * plan.slice_bytes)
        for indices, body in zip(by_image.values(), bodies, strict=True):
            known.update(zip(indices, encode(indices, body), strict=True))
        return known

    def produce(start: int, end: int) -> memoryview:
        header = encode_header(plan)
        pieces: list[bytes | memoryview] = [header[start:end]] if start < HEADER_BYTES else []
        first = max(0, (start - HEADER_BYTES) // plan.slice_bytes)
        last = min(len(images), -(-(end - HEADER_BYTES) // plan.slice_bytes))
        made_here = slices(first, last) if last > first else {}
        for index in range(first, last):
            data, begin = made_here[index], HEADER_BYTES + index * plan.slice_bytes
            if (begin < start or begin + plan.slice_bytes > end) and isinstance(data, memoryview):
                made.put((*scope, str(index)), bytes(data))  # cut here: its rest is in the next range
            pieces.append(data[max(start, begin) - begin:min(end, begin + plan.slice_bytes) - begin])
        return joined(pieces, end - start)

    return produce


def joined(pieces: Sequence[bytes | memoryview], size: int) -> memoryview:
    """The pieces in one new block of ``size`` bytes, as a view handed on to the kernel's reply as it is.
    numpy copies with the interpreter lock let go: a part is 8 MiB of fresh pages, and ``b"".join`` held
    the lock through their page faults while every other reader waited."""
    part = numpy.empty(size, dtype=numpy.uint8)
    at = 0
    for piece in pieces:
        flat = numpy.frombuffer(piece, dtype=numpy.uint8)
        part[at:at + flat.size] = flat
        at += flat.size
    if at != size:
        raise ValueError(f"a part of {size} bytes was made from {at}")
    return part.data


class VolumeView(SeriesLayer):
    """``volumes/{ct,mri}/<Patient>/<Study>/<Series>.nii`` and ``.json``: one NIfTI-1 volume per series, or
    only a ``.json`` saying why a series is not one volume."""

    NAME = "volumes"
    FOLDERS = (CT, MRI)
    FILE_DEPTH = 3

    def _files(self, parts: Parts) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for series, entry in self._namespace.list("/" + "/".join(parts)).items():
            if entry.is_dir:
                entries.update(self._series_files(parts, series))
        return dict(sorted(entries.items()))

    def _series_files(self, parts: Parts, series: str) -> dict[str, Entry]:
        """The .nii (if the series is one volume) and .json of one series folder."""
        mtime = self._namespace.mount_time
        outcome = self._plan([*parts, series])[1].value
        entries = {series + SIDECAR_SUFFIX: Entry(series + SIDECAR_SUFFIX, False, len(sidecar(outcome)), mtime)}
        if isinstance(outcome, VolumePlan):
            entries[series + ".nii"] = Entry(series + ".nii", False, outcome.size, mtime)
        return entries

    def lookup(self, parts: Parts) -> Entry:
        """A file's entry from its own series alone: opening one volume plans only its series, not every
        series of the study as a listing does."""
        series, dot, suffix = parts[-1].rpartition(".") if parts else ("", "", "")
        if len(parts) != self.FILE_DEPTH + 1 or not dot or suffix not in ("nii", "json"):
            return super().lookup(parts)
        if parts[0] not in self.list([]):
            raise NotFound("/".join(parts))
        folder = self._namespace.list("/" + "/".join(parts[:-1])).get(series)
        files = self._series_files(parts[:-1], series) if folder and folder.is_dir else {}
        entry = self._shown(parts[:-1], files).get(parts[-1])
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def _plan(self, parts: Parts) -> tuple[SeriesImages, Derived]:
        images = SeriesImages(self._namespace, parts[0], parts[1:])
        missing = sorted(set(images.images) - set(images.twins))
        if missing:
            return images, Derived(Rejection(f"{len(missing)} images have no metadata twin, e.g. {missing[0]}",
                                              {}), 0)
        planned = self._remember(images.key("plan", images.twins), lambda: self._plan_series(images))
        if not isinstance(planned.value, VolumePlan):
            return images, planned
        failure = self._generated.failure(f"{self.NAME}/{'/'.join(parts)}.nii", images.inputs())
        oversized = (oversized_reason(ident, images.images[ident], promised)
                     for ident, promised in planned.promised.items())
        reason = failure or next((why for why in oversized if why is not None), None)
        return images, planned if reason is None else Derived(Rejection(reason, planned.value.tags), 0)

    def _plan_series(self, images: SeriesImages) -> Derived:
        weight = images.twin_bytes() + 1
        twins = self._twins(images)
        unusable = sorted(reason for reason in twins.values() if isinstance(reason, str))
        if unusable:
            return Derived(Rejection(unusable[0], {}), weight)
        parsed = {ident: twin for ident, twin in twins.items() if not isinstance(twin, str)}
        promised = promised_by(parsed)
        try:
            outcome = plan_volume(parsed)
        except Exception as error:  # a twin shaped as no rule foresaw: the series has a reason, not EINVAL
            log.warning("%s: planning failed: %r", next(iter(images.twins.values())).key, error)
            outcome = Rejection(f"its metadata twins could not be planned: {error!r}", {})
        if isinstance(outcome, VolumePlan) and isinstance(promised, str):
            outcome = Rejection(promised, outcome.tags)
        return Derived(outcome, weight, promised if isinstance(promised, dict) else {})

    def open(self, parts: Parts) -> VirtualFile:
        if self.lookup(parts).is_dir:
            raise NotFound("/".join(parts))
        series, suffix = parts[self.FILE_DEPTH].rsplit(".", 1)
        images, planned = self._plan([*parts[:self.FILE_DEPTH], series])
        outcome = planned.value
        if suffix == "json":
            return Sidecar(sidecar(outcome))
        assert isinstance(outcome, VolumePlan)
        ordered = [images.images[ident] for ident in outcome.slices]

        def encode(indices: list[int], dicom: bytes) -> list[memoryview]:
            ident = outcome.slices[indices[0]]  # the slices of one image: its frames
            promised = planned.promised[ident]
            with naming(ident), self._generated.budget.reserve(decoding_work(promised, ordered[indices[0]]), "it"):
                return encode_checked(outcome, indices, dicom, promised)

        name, inputs = f"{self.NAME}/" + "/".join(parts), images.inputs()
        produce = volume_producer(outcome, ordered, self._reader, encode, self._generated.made,
                                  (name, version_of(inputs)))
        return self._generated.open(name, inputs, outcome.size, produce)
