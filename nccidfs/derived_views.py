"""The derived views as layers under ``/.nccidfs/``: series as NIfTI volumes, X-rays as PNG images.

    .nccidfs/volumes/{ct,mri}/<Patient_ID>/<STUDY_UID>/<SERIES_UID>.nii   (+ <SERIES_UID>.json sidecar)
    .nccidfs/images/xray/<Patient_ID>/<STUDY_UID>/<SERIES_UID>/<IMAGE_UUID>.png

The pure builders of :mod:`nccidfs.derived` do the conversion; this module decides what to read and keeps
what it made. Sizes come from the metadata twins (read through the cache, a few KiB each), so ``ls -l``
of any view folder downloads no image, and ``st_size`` is exact at stat time (nibabel memory-maps a
``.nii``). A file is generated on its first open from the images, and kept in the disk cache under the
same bound as everything else, keyed by the ETags of its inputs: a changed image or twin gives a new
version, and an unchanged one is served from the cache after a restart.

A generated file goes through a fetcher of its own whose "store" makes bytes instead of fetching them
(:class:`Producers`): only the ranges read are made (a volume's slice has a fixed place, so a range needs
only the images of the slices it covers), memory stays bounded by the fetcher's part size, and blocks,
single flight, read-ahead and the cache's bound work as for any object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from cachetools import LRUCache

from nccidfs import deadline
from nccidfs.cache import DiskCache
from nccidfs.config import ReadConfig
from nccidfs.derived.image import build_png, png_size
from nccidfs.derived.volume import (
    HEADER_BYTES,
    Rejection,
    VolumePlan,
    encode_header,
    encode_slices,
    plan_volume,
    sidecar,
)
from nccidfs.errors import CorruptData, NotFound, TransientError
from nccidfs.fetch import Fetcher, ReadCursor
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry, Listing, ObjectInfo
from nccidfs.views import Parts, Snapshot, VirtualFile

log = logging.getLogger(__name__)

READ_THREADS = 16
# Encoded slices a volume keeps at hand (about 0.5 MiB each for 512x512).
RECENT_SLICES = 16
IMAGE, TWIN = ".dcm", ".json"


class ObjectReader:
    """Whole objects through the cache, many at once, within what is left of the calling FUSE call."""

    def __init__(self, fetcher: Fetcher, timeout: float) -> None:
        self._fetcher = fetcher
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="derive")

    def _read(self, obj: ObjectInfo) -> bytes:
        return self._fetcher.read_start(obj, obj.size)

    def read_many(self, objects: Sequence[ObjectInfo]) -> list[bytes]:
        futures = [self._pool.submit(self._read, obj) for obj in objects]
        try:
            return [future.result(timeout=deadline.remaining(self._timeout)) for future in futures]
        except FutureTimeout:
            raise TransientError(f"reading {len(objects)} objects took over {self._timeout:g}s") from None
        finally:
            for future in futures:
                future.cancel()


Producer = Callable[[int, int], bytes]


class Sidecar(Snapshot):
    """A small generated JSON file held in memory; its size is exact, so the kernel may cache it."""

    direct_io = False


class Producers:
    """The storage seam for generated files: ``get_range`` makes the bytes asked for instead of fetching
    them, so the fetcher and the disk cache treat a generated file as any object (blocks kept under the
    bound, single flight, read-ahead). A producer is registered while its file is open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producers: dict[tuple[str, str], tuple[Producer, int]] = {}

    def add(self, obj: ObjectInfo, produce: Producer) -> None:
        with self._lock:
            _, opened = self._producers.get((obj.key, obj.etag), (produce, 0))
            self._producers[(obj.key, obj.etag)] = (produce, opened + 1)

    def remove(self, obj: ObjectInfo) -> None:
        with self._lock:
            produce, opened = self._producers.pop((obj.key, obj.etag))
            if opened > 1:
                self._producers[(obj.key, obj.etag)] = (produce, opened - 1)

    def get_range(self, key: str, start: int, end: int, etag: str) -> bytes:
        with self._lock:
            found = self._producers.get((key, etag))
        if found is None:
            raise NotFound(f"{key}: not open")
        try:
            return found[0](start, end)
        except ValueError as error:  # an image pydicom cannot decode, or one that does not match its twin
            raise CorruptData(f"{key}: {error}") from None

    def list_dir(self, prefix: str) -> Listing:
        raise NotFound(prefix)

    def list_tree(self, prefix: str, start_after: str = "", end: str | None = None) -> Listing:
        raise NotFound(prefix)

    def probe(self, prefix: str) -> bool:
        return False


class GeneratedFile:
    """An open generated file: read through its own fetcher, so made once and then served from the cache."""

    direct_io = False  # its size is exact: the kernel may cache pages and programs may mmap it

    def __init__(self, generated: Generated, obj: ObjectInfo) -> None:
        self._generated = generated
        self._obj = obj
        self._entry = generated.cache.pin(obj)
        self._cursor = ReadCursor()

    def read(self, offset: int, size: int) -> bytes:
        return self._generated.fetcher.read(self._entry, offset, size, self._cursor)

    def release(self) -> None:
        self._generated.cache.unpin(self._entry)
        self._generated.producers.remove(self._obj)


class Generated:
    """Generated files, kept in the disk cache under its bound and keyed by the ETags of their inputs."""

    def __init__(self, cache: DiskCache, config: ReadConfig, timeout: float, prefix: str) -> None:
        self.cache = cache
        self.producers = Producers()
        self.fetcher = Fetcher(self.producers, cache, config, timeout)
        self._prefix = prefix

    def open(self, name: str, inputs: Sequence[ObjectInfo], size: int, produce: Producer) -> VirtualFile:
        version = hashlib.sha256("\0".join(f"{o.key}\0{o.etag}" for o in inputs).encode()).hexdigest()
        obj = ObjectInfo(self._prefix + name, size, version, 0.0)
        self.producers.add(obj, produce)
        return GeneratedFile(self, obj)


def volume_producer(plan: VolumePlan, images: Sequence[ObjectInfo], reader: ObjectReader) -> Producer:
    """Bytes of a volume file made from just the slices a range covers (each slice has a fixed place).
    The last slices made are kept for a moment: ranges do not end on slice boundaries."""
    lock = threading.Lock()
    recent: LRUCache[int, bytes] = LRUCache(maxsize=RECENT_SLICES)

    def slices(first: int, last: int) -> list[bytes]:
        with lock:
            known = {index: recent[index] for index in range(first, last) if index in recent}
        wanted = [index for index in range(first, last) if index not in known]
        by_image: dict[ObjectInfo, list[int]] = {}  # frames of one image: read and parse it once
        for index in wanted:
            by_image.setdefault(images[index], []).append(index)
        for (_, indices), body in zip(by_image.items(), reader.read_many(list(by_image)), strict=True):
            made = dict(zip(indices, encode_slices(plan, indices, body), strict=True))
            known.update(made)
            with lock:
                recent.update(made)
        return [known[index] for index in range(first, last)]

    def produce(start: int, end: int) -> bytes:
        header = encode_header(plan)
        pieces = [header[start:end]] if start < HEADER_BYTES else []
        first = max(0, (start - HEADER_BYTES) // plan.slice_bytes)
        last = min(len(images), -(-(end - HEADER_BYTES) // plan.slice_bytes))
        for index, data in zip(range(first, last), slices(first, last) if last > first else [], strict=True):
            begin = HEADER_BYTES + index * plan.slice_bytes
            pieces.append(data[max(start, begin) - begin:min(end, begin + plan.slice_bytes) - begin])
        return b"".join(pieces)

    return produce


def whole_producer(build: Callable[[], bytes]) -> Producer:
    """Bytes of a file made whole (a PNG), built once per open and sliced."""
    made: list[bytes] = []

    def produce(start: int, end: int) -> bytes:
        if not made:
            made.append(build())
        return made[0][start:end]

    return produce


class _Images:
    """The images of one series folder and their metadata twins, by image id (the name without .dcm)."""

    def __init__(self, namespace: Namespace, folder: str, parts: Sequence[str]) -> None:
        rest = "/".join(parts)
        images = {name[:-len(IMAGE)]: e.obj for name, e in namespace.list(f"/{folder}/{rest}").items()
                  if name.endswith(IMAGE) and e.obj is not None}
        try:
            twins = namespace.list(f"/{folder}-metadata/{rest}")
        except NotFound:
            twins = {}
        self.images: dict[str, ObjectInfo] = images
        self.twins: dict[str, ObjectInfo] = {
            ident: twin.obj for ident in images if (twin := twins.get(ident + TWIN)) is not None and twin.obj}

    def inputs(self) -> list[ObjectInfo]:
        return [*self.images.values(), *self.twins.values()]


class _SeriesLayer:
    """What the two views share: ``<folder>/<Patient>/<Study>/...`` from the listings, twins read and
    remembered by their ETags, and a lookup that is the parent folder's listing."""

    NAME = ""
    FOLDERS: tuple[str, ...] = ()
    # How deep the listing goes: the last level lists derived files, made by ``_files``.
    FILE_DEPTH = 0

    def __init__(self, namespace: Namespace, reader: ObjectReader, generated: Generated) -> None:
        self._namespace = namespace
        self._reader = reader
        self._generated = generated
        self._lock = threading.Lock()
        self._memo: LRUCache[tuple[str, ...], Any] = LRUCache(maxsize=4096)

    def _dir(self, name: str) -> Entry:
        return Entry(name, True, mtime=self._namespace.mount_time)

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            root = self._namespace.list("/")
            return {f: self._dir(f) for f in self.FOLDERS if f in root and f"{f}-metadata" in root}
        if parts[0] not in self.list([]) or len(parts) > self.FILE_DEPTH:
            raise NotFound("/".join(parts))
        if len(parts) == self.FILE_DEPTH:
            return self._files(parts)
        return {name: self._dir(name) for name, entry in self._namespace.list("/" + "/".join(parts)).items()
                if entry.is_dir}

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return self._dir(self.NAME)
        entry = self.list(parts[:-1]).get(parts[-1])
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def readlink(self, parts: Parts) -> str:
        raise NotFound(f"the {self.NAME} view holds no symlinks")

    def _files(self, parts: Parts) -> dict[str, Entry]:
        raise NotImplementedError

    def _remember(self, key: tuple[str, ...], compute: Callable[[], Any]) -> Any:
        with self._lock:
            known = self._memo.get(key)
        if known is None:
            known = compute()
            with self._lock:
                self._memo[key] = known
        return known

    def _twins(self, series: _Images) -> dict[str, dict[str, Any]]:
        """The parsed twins of a series (id -> DICOM JSON), remembered by their ETags."""
        key = ("twins", *sorted(f"{t.key}\0{t.etag}" for t in series.twins.values()))
        return self._remember(key, lambda: self._parse(series))  # type: ignore[no-any-return]

    def _parse(self, series: _Images) -> dict[str, dict[str, Any]]:
        idents = list(series.twins)
        parsed = {}
        for ident, body in zip(idents, self._reader.read_many([series.twins[i] for i in idents]), strict=True):
            try:
                parsed[ident] = json.loads(body)
            except ValueError:
                log.warning("metadata twin of %s is not JSON; left out of the derived views", ident)
        return parsed


class VolumeView(_SeriesLayer):
    """``volumes/{ct,mri}/<Patient>/<Study>/<Series>.nii`` and ``.json``: one NIfTI-1 volume per series, or
    only a ``.json`` saying why a series is not one volume."""

    NAME = "volumes"
    FOLDERS = ("ct", "mri")
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
        outcome = self._plan([*parts, series])[1]
        entries = {series + ".json": Entry(series + ".json", False, len(sidecar(outcome)), mtime)}
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
        entry = self._series_files(parts[:-1], series).get(parts[-1]) if folder and folder.is_dir else None
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def _plan(self, parts: Parts) -> tuple[_Images, VolumePlan | Rejection]:
        images = _Images(self._namespace, parts[0], parts[1:])
        missing = sorted(set(images.images) - set(images.twins))
        if missing:
            return images, Rejection(f"{len(missing)} images have no metadata twin, e.g. {missing[0]}", {})
        key = ("plan", *sorted(f"{t.key}\0{t.etag}" for t in images.twins.values()))
        return images, self._remember(key, lambda: plan_volume(self._twins(images)))

    def open(self, parts: Parts) -> VirtualFile:
        if self.lookup(parts).is_dir:
            raise NotFound("/".join(parts))
        series, suffix = parts[3].rsplit(".", 1)
        images, outcome = self._plan([*parts[:3], series])
        if suffix == "json":
            return Sidecar(sidecar(outcome))
        assert isinstance(outcome, VolumePlan)
        produce = volume_producer(outcome, [images.images[ident] for ident in outcome.slices], self._reader)
        return self._generated.open(f"{self.NAME}/" + "/".join(parts), images.inputs(), outcome.size, produce)


class ImageView(_SeriesLayer):
    """``images/xray/<Patient>/<Study>/<Series>/<Image>.png``: each X-ray as an 8-bit display PNG whose size
    follows from its Rows and Columns (see :mod:`nccidfs.derived.image`)."""

    NAME = "images"
    FOLDERS = ("xray",)
    FILE_DEPTH = 4

    def _files(self, parts: Parts) -> dict[str, Entry]:
        images = _Images(self._namespace, parts[0], parts[1:])
        twins = self._twins(images)
        entries = {}
        for ident, image in images.images.items():
            size = self._png_size(twins.get(ident))
            if size is not None:
                entries[ident + ".png"] = Entry(ident + ".png", False, size, image.mtime)
        return dict(sorted(entries.items()))

    @staticmethod
    def _png_size(twin: dict[str, Any] | None) -> int | None:
        """From the twin's Rows (0028,0010) and Columns (0028,0011); None leaves the image out."""
        try:
            return png_size(int(twin["00280010"]["Value"][0]), int(twin["00280011"]["Value"][0]))  # type: ignore[index]
        except (KeyError, IndexError, TypeError, ValueError):
            return None

    def open(self, parts: Parts) -> VirtualFile:
        entry = self.lookup(parts)
        if entry.is_dir:
            raise NotFound("/".join(parts))
        images = _Images(self._namespace, parts[0], parts[1:4])
        ident = parts[4][:-len(".png")]
        image, twin = images.images[ident], images.twins[ident]

        def build() -> bytes:
            data = build_png(self._reader.read_many([image])[0])
            if len(data) != entry.size:
                raise ValueError(f"the image is {len(data)} bytes as PNG, its metadata twin promised {entry.size}")
            return data

        return self._generated.open(f"{self.NAME}/" + "/".join(parts), [image, twin], entry.size,
                                    whole_producer(build))

