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

Safe on any input: a bad input spoils only its own file. A twin that is no DICOM JSON object, or over
:data:`~nccidfs.xattrs.MAX_TWIN_BYTES` (not read at all), gives its series (volumes) or image (images) a
reason instead of a file; a series' twins are parsed at most :data:`MAX_SERIES_TWIN_BYTES` together, and
what is remembered of them (plans, sizes) weighs at most :data:`MEMO_TWIN_BYTES` of the twins it came
from. An image is held to its twin before its pixels are decoded (:mod:`nccidfs.derived.agreement`), its
decoding reserves its memory from one :class:`~nccidfs.budget.MemoryBudget`, and a whole file (a PNG) is
built once however many read it. A file whose image fails any of this fails that read with EIO; the reason
is logged, and from then on that file's listing gives the reason in its ``.json`` instead of the file.
Names over :data:`NAME_MAX` bytes are not listed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from nccidfs import deadline
from nccidfs.budget import MemoryBudget
from nccidfs.cache import DiskCache
from nccidfs.config import ReadConfig
from nccidfs.derived.agreement import HEADER_SLACK, Expected, checked, checked_image, expected
from nccidfs.derived.image import build_png, png_size
from nccidfs.derived.pixels import undecodable_reason
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
from nccidfs.views import OPEN_INVALIDATION_WAIT, Invalidator, Parts, Snapshot, VirtualFile
from nccidfs.xattrs import MAX_TWIN_BYTES

log = logging.getLogger(__name__)

READ_THREADS = 16
# Bytes made for open files and kept for their readers (whole PNGs, encoded slices: ranges do not end on
# slice boundaries), all files together.
MADE_BYTES = 48 * 1024 * 1024
IMAGE, TWIN = ".dcm", ".json"
# The longest file name the kernel takes (NAME_MAX).
NAME_MAX = 255
# The twins of one series parsed together: about 2,800 CT slices of 6 KiB. Parsed JSON takes about ten
# times its text, so this bounds the memory of planning one series near 160 MiB.
MAX_SERIES_TWIN_BYTES = 16 * 1024 * 1024
# What is remembered of parsed twins (plans, PNG sizes, what each image must agree with), counted by the
# bytes of the twins it came from.
MEMO_TWIN_BYTES = 32 * 1024 * 1024
# Memory all image decoding may take at once, and what decoding takes per pixel besides the image's bytes:
# its pixels, the display's 8-bit copy and the PNG (the float64 steps of display or rescale go a band of
# rows at a time). Measured 6 to 7 bytes a pixel for 16-bit X-rays of 3000 x 3000 and 4096 x 4096 made into
# PNGs; 16 leaves room, and takes a single 16-bit image up to about 22 million pixels (4730 x 4730), past the
# 3520 x 4280 of the largest detectors. With MADE_BYTES and the rest of the daemon (about 90 MiB), the
# daemon stays under 500 MiB.
DECODE_BUDGET = 384 * 1024 * 1024
WORK_BYTES_PER_PIXEL = 16
# An image may be this many times the pixels its twin gives (plus HEADER_SLACK) before it is not read.
MAX_IMAGE_EXPANSION = 2
# Names, versions and reasons remembered per generated file (each a few hundred bytes).
REMEMBERED_FILES = 100_000


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
    """A small generated JSON file held in memory. Read with direct I/O: its size changes with its series
    (a reason appears), and the kernel must not cut it to a size it was told before."""

    direct_io = True


class Producers:
    """The storage seam for generated files: ``get_range`` makes the bytes asked for instead of fetching
    them, so the fetcher and the disk cache treat a generated file as any object (blocks kept under the
    bound, single flight, read-ahead). A producer is registered while its file is open; every open of the
    same version shares the first one's producer, so a whole file is built once for all its readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._producers: dict[tuple[str, str], tuple[Producer, int]] = {}
        self.stats = None  # making bytes is no request to count

    def add(self, obj: ObjectInfo, produce: Producer) -> None:
        with self._lock:
            kept, opened = self._producers.get((obj.key, obj.etag), (produce, 0))
            self._producers[(obj.key, obj.etag)] = (kept, opened + 1)

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
    """An open generated file: read through its own fetcher, so made once and then served from the cache.
    Its size is exact, so the kernel may cache pages and programs may mmap it; only the first open after
    its size changed reads with direct I/O, so the kernel cannot cut or pad it to the old size."""

    def __init__(self, generated: Generated, obj: ObjectInfo, direct_io: bool) -> None:
        self._generated = generated
        self._obj = obj
        self._entry = generated.cache.pin(obj)
        self._cursor = ReadCursor()
        self.direct_io = direct_io

    def read(self, offset: int, size: int) -> bytes:
        return self._generated.fetcher.read(self._entry, offset, size, self._cursor)

    def release(self) -> None:
        self._generated.cache.unpin(self._entry)
        self._generated.producers.remove(self._obj)


def version_of(inputs: Sequence[ObjectInfo]) -> str:
    """A generated file's version: changes exactly when one of its inputs' ETags does."""
    return hashlib.sha256("\0".join(f"{o.key}\0{o.etag}" for o in inputs).encode()).hexdigest()


class Generated:
    """Generated files, kept in the disk cache under its bound and keyed by the ETags of their inputs.

    It also keeps, per file name, what the kernel must hear about: the size last listed (a new size is
    invalidated in the kernel at once, and the next open waits for that), and the reason a version failed
    (so its listing gives the reason instead of the file). ``name`` is the path below ``prefix``."""

    def __init__(self, cache: DiskCache, config: ReadConfig, timeout: float, prefix: str,
                 invalidate: Invalidator = lambda path, wait: None) -> None:
        self.cache = cache
        self.producers = Producers()
        self.fetcher = Fetcher(self.producers, cache, config, timeout)
        self.budget = MemoryBudget(DECODE_BUDGET, timeout)
        self.made = Made(MADE_BYTES)
        self._prefix = prefix
        self._invalidate = invalidate
        self._lock = threading.Lock()
        self._sizes: LRUCache[str, int] = LRUCache(maxsize=REMEMBERED_FILES)
        self._resized: LRUCache[str, bool] = LRUCache(maxsize=REMEMBERED_FILES)
        self._failed: LRUCache[tuple[str, str], str] = LRUCache(maxsize=REMEMBERED_FILES)

    def _path(self, name: str) -> str:
        return "/" + self._prefix + name

    def listed(self, name: str, size: int) -> None:
        """``name`` is shown with ``size``; a size other than the last shown is forgotten by the kernel."""
        with self._lock:
            before = self._sizes.get(name)
            self._sizes[name] = size
            resized = before is not None and before != size
            if resized:
                self._resized[name] = True
        if resized:
            self._invalidate(self._path(name), 0.0)

    def failure(self, name: str, inputs: Sequence[ObjectInfo]) -> str | None:
        """Why this version of the file could not be made, if it was tried and failed."""
        with self._lock:
            return self._failed.get((name, version_of(inputs)))

    def open(self, name: str, inputs: Sequence[ObjectInfo], size: int, produce: Producer) -> VirtualFile:
        version = version_of(inputs)
        obj = ObjectInfo(self._prefix + name, size, version, 0.0)
        with self._lock:
            resized = self._resized.pop(name, False)
        if resized:
            self._invalidate(self._path(name), OPEN_INVALIDATION_WAIT)
        self.producers.add(obj, self._guarded(name, version, produce))
        return GeneratedFile(self, obj, direct_io=resized)

    def _guarded(self, name: str, version: str, produce: Producer) -> Producer:
        """``produce``, remembering why it failed: the file is then listed with the reason instead."""

        def guarded(start: int, end: int) -> bytes:
            try:
                return produce(start, end)
            except ValueError as error:
                with self._lock:
                    first = (name, version) not in self._failed
                    self._failed[(name, version)] = str(error)
                if first:
                    log.warning("%s: %s; listed with this reason from now on", name, error)
                    stem = name.rsplit(".", 1)[0]
                    for path in (name, stem + TWIN):
                        self._invalidate(self._path(path), 0.0)
                raise

        return guarded


class Made:
    """Bytes made for generated files, kept for their readers in one LRU bounded by bytes: however many
    files are open, what they hold between reads stays within MADE_BYTES. What is dropped is made again
    when asked for (most ranges are then served from the disk cache instead)."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Lock()
        self._kept: LRUCache[tuple[str, ...], bytes] = LRUCache(maxsize=size, getsizeof=len)

    def get(self, key: tuple[str, ...]) -> bytes | None:
        with self._lock:
            return self._kept.get(key)

    def put(self, key: tuple[str, ...], data: bytes) -> None:
        with self._lock, suppress(ValueError):  # heavier than the whole LRU: not kept
            self._kept[key] = data


def volume_producer(plan: VolumePlan, images: Sequence[ObjectInfo], reader: ObjectReader,
                    encode: Callable[[list[int], bytes], list[bytes]], made: Made,
                    scope: tuple[str, ...]) -> Producer:
    """Bytes of a volume file made from just the slices a range covers (each slice has a fixed place);
    ``encode(indices, dicom)`` makes the slices ``indices``, frames of one image, from its bytes. Slices
    made are kept in ``made`` under ``scope`` for a moment: ranges do not end on slice boundaries."""

    def slices(first: int, last: int) -> list[bytes]:
        known = {index: data for index in range(first, last) if (data := made.get((*scope, str(index)))) is not None}
        wanted = [index for index in range(first, last) if index not in known]
        by_image: dict[ObjectInfo, list[int]] = {}  # frames of one image: read and parse it once
        for index in wanted:
            by_image.setdefault(images[index], []).append(index)
        for indices, body in zip(by_image.values(), reader.read_many(list(by_image)), strict=True):
            for index, data in zip(indices, encode(indices, body), strict=True):
                known[index] = data
                made.put((*scope, str(index)), data)
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


def whole_producer(build: Callable[[], bytes], made: Made, scope: tuple[str, ...]) -> Producer:
    """Bytes of a file made whole (a PNG): built once, by the first range asked for, while the ranges
    asked for at the same time (parts of a read-ahead, other readers) wait for it; kept in ``made`` under
    ``scope`` and sliced."""
    lock = threading.Lock()

    def produce(start: int, end: int) -> bytes:
        with lock:
            data = made.get(scope)
            if data is None:
                data = build()
                made.put(scope, data)
        return data[start:end]

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

    def twin_bytes(self) -> int:
        return sum(twin.size for twin in self.twins.values())

    def key(self, kind: str, objects: Mapping[str, ObjectInfo]) -> tuple[str, ...]:
        """A memo key for what is derived from these objects (the twins, or the images too)."""
        return (kind, *sorted(f"{o.key}\0{o.etag}" for o in objects.values()))


@dataclass(frozen=True)
class _Derived:
    """What a layer remembers of a series' parsed twins, weighed by the bytes of the twins."""

    value: Any
    weight: int
    promised: Mapping[str, Expected] = field(default_factory=dict)  # by image id: what each must agree with


Twins = dict[str, dict[str, Any] | str]


class _SeriesLayer:
    """What the two views share: ``<folder>/<Patient>/<Study>/...`` from the listings, twins read within
    their bounds, what is derived from them remembered by their ETags, and a lookup that is the parent
    folder's listing."""

    NAME = ""
    FOLDERS: tuple[str, ...] = ()
    # How deep the listing goes: the last level lists derived files, made by ``_files``.
    FILE_DEPTH = 0

    def __init__(self, namespace: Namespace, reader: ObjectReader, generated: Generated) -> None:
        self._namespace = namespace
        self._reader = reader
        self._generated = generated
        self._lock = threading.Lock()
        self._memo: LRUCache[tuple[str, ...], _Derived] = LRUCache(maxsize=MEMO_TWIN_BYTES,
                                                                   getsizeof=lambda derived: derived.weight)
        self._warned: LRUCache[tuple[str, str], bool] = LRUCache(maxsize=REMEMBERED_FILES)

    def _dir(self, name: str) -> Entry:
        return Entry(name, True, mtime=self._namespace.mount_time)

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            root = self._namespace.list("/")
            return {f: self._dir(f) for f in self.FOLDERS if f in root and f"{f}-metadata" in root}
        if parts[0] not in self.list([]) or len(parts) > self.FILE_DEPTH:
            raise NotFound("/".join(parts))
        if len(parts) == self.FILE_DEPTH:
            return self._shown(parts, self._files(parts))
        return {name: self._dir(name) for name, entry in self._namespace.list("/" + "/".join(parts)).items()
                if entry.is_dir}

    def _shown(self, parts: Parts, entries: dict[str, Entry]) -> dict[str, Entry]:
        """The derived files of a folder as listed: none over NAME_MAX bytes (each logged once), and each
        size told to :class:`Generated`, which has the kernel forget a size that changed."""
        folder = "/".join([self.NAME, *parts])
        shown = {}
        for name, entry in entries.items():
            if len(name.encode()) > NAME_MAX:
                self._warn_once(("name", f"{folder}/{name}"), "%s/%s: a name over %d bytes; not listed",
                                folder, name, NAME_MAX)
                continue
            self._generated.listed(f"{folder}/{name}", entry.size)
            shown[name] = entry
        return shown

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

    def _warn_once(self, key: tuple[str, str], message: str, *args: Any) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned[key] = True
        log.warning(message, *args)

    def _remember(self, key: tuple[str, ...], compute: Callable[[], _Derived]) -> _Derived:
        with self._lock:
            known = self._memo.get(key)
        if known is None:
            known = compute()
            with self._lock, suppress(ValueError):  # heavier than the whole memo: not kept
                self._memo[key] = known
        return known

    def _twins(self, series: _Images) -> Twins:
        """The parsed twins of a series by image id, or for each twin that is not used the reason.
        A twin over MAX_TWIN_BYTES is not read (one warning per version)."""
        parsed: Twins = {}
        readable: list[str] = []
        for ident, twin in series.twins.items():
            if twin.size > MAX_TWIN_BYTES:
                self._warn_once((twin.key, twin.etag), "%s: metadata twin of %d bytes is over the %d byte limit; "
                                "not read for the derived views", twin.key, twin.size, MAX_TWIN_BYTES)
                parsed[ident] = f"{ident}: its metadata twin of {twin.size} bytes is over the {MAX_TWIN_BYTES} " \
                                "byte limit"
            else:
                readable.append(ident)
        total = sum(series.twins[ident].size for ident in readable)
        if total > MAX_SERIES_TWIN_BYTES:
            reason = f"the series' metadata twins take {total} bytes, over the {MAX_SERIES_TWIN_BYTES} parsed " \
                     "for one series"
            return {**parsed, **dict.fromkeys(readable, reason)}
        for ident, body in zip(readable, self._reader.read_many([series.twins[i] for i in readable]), strict=True):
            parsed[ident] = _parse_twin(ident, body)
        return parsed


def _parse_twin(ident: str, body: bytes) -> dict[str, Any] | str:
    """A twin as a DICOM JSON object, or the reason it is none (not JSON, too deep, not an object)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        return f"{ident}: its metadata twin is not a DICOM JSON object (not JSON, or nested too deep)"
    if not isinstance(document, dict):
        return f"{ident}: its metadata twin is not a DICOM JSON object ({type(document).__name__})"
    return document


def _promised(twins: Mapping[str, dict[str, Any]]) -> dict[str, Expected] | str:
    """What each image must agree with, or why a twin cannot say."""
    promised = {}
    for ident, twin in twins.items():
        try:
            promised[ident] = expected(twin)
        except ValueError as error:
            return f"{ident}: {error}"
    return promised


@contextmanager
def _naming(ident: str) -> Iterator[None]:
    """Reasons given inside start with the image they are about."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{ident}: {error}") from None


def _work(promised: Expected, image: ObjectInfo) -> int:
    """The memory decoding an image takes, all in (see WORK_BYTES_PER_PIXEL)."""
    return promised.pixels * WORK_BYTES_PER_PIXEL + image.size


def _oversized(ident: str, image: ObjectInfo, promised: Expected) -> str | None:
    """Why an image is not read at all: far larger than its twin's pixels (its bytes are held at once)."""
    limit = MAX_IMAGE_EXPANSION * promised.pixel_bytes + HEADER_SLACK
    if image.size > limit:
        return f"{ident}: the image is {image.size} bytes, over the {limit} its metadata twin's pixels allow"
    return None


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
        outcome = self._plan([*parts, series])[1].value
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
        files = self._series_files(parts[:-1], series) if folder and folder.is_dir else {}
        entry = self._shown(parts[:-1], files).get(parts[-1])
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def _plan(self, parts: Parts) -> tuple[_Images, _Derived]:
        images = _Images(self._namespace, parts[0], parts[1:])
        missing = sorted(set(images.images) - set(images.twins))
        if missing:
            return images, _Derived(Rejection(f"{len(missing)} images have no metadata twin, e.g. {missing[0]}",
                                              {}), 0)
        planned = self._remember(images.key("plan", images.twins), lambda: self._plan_series(images))
        if not isinstance(planned.value, VolumePlan):
            return images, planned
        failure = self._generated.failure(f"{self.NAME}/{'/'.join(parts)}.nii", images.inputs())
        oversized = (_oversized(ident, images.images[ident], promised) for ident, promised in planned.promised.items())
        reason = failure or next((why for why in oversized if why is not None), None)
        return images, planned if reason is None else _Derived(Rejection(reason, planned.value.tags), 0)

    def _plan_series(self, images: _Images) -> _Derived:
        weight = images.twin_bytes() + 1
        twins = self._twins(images)
        unusable = sorted(reason for reason in twins.values() if isinstance(reason, str))
        if unusable:
            return _Derived(Rejection(unusable[0], {}), weight)
        parsed = {ident: twin for ident, twin in twins.items() if not isinstance(twin, str)}
        promised = _promised(parsed)
        try:
            outcome = plan_volume(parsed)
        except Exception as error:  # a twin shaped as no rule foresaw: the series has a reason, not EINVAL
            log.warning("%s: planning failed: %r", next(iter(images.twins.values())).key, error)
            outcome = Rejection(f"its metadata twins could not be planned: {error!r}", {})
        if isinstance(outcome, VolumePlan) and isinstance(promised, str):
            outcome = Rejection(promised, outcome.tags)
        return _Derived(outcome, weight, promised if isinstance(promised, dict) else {})

    def open(self, parts: Parts) -> VirtualFile:
        if self.lookup(parts).is_dir:
            raise NotFound("/".join(parts))
        series, suffix = parts[3].rsplit(".", 1)
        images, planned = self._plan([*parts[:3], series])
        outcome = planned.value
        if suffix == "json":
            return Sidecar(sidecar(outcome))
        assert isinstance(outcome, VolumePlan)
        ordered = [images.images[ident] for ident in outcome.slices]

        def encode(indices: list[int], dicom: bytes) -> list[bytes]:
            ident = outcome.slices[indices[0]]  # the slices of one image: its frames
            promised = planned.promised[ident]
            with _naming(ident), self._generated.budget.reserve(_work(promised, ordered[indices[0]]), "it"):
                return encode_slices(outcome, indices, *checked_image(dicom, promised))

        name, inputs = f"{self.NAME}/" + "/".join(parts), images.inputs()
        produce = volume_producer(outcome, ordered, self._reader, encode, self._generated.made,
                                  (name, version_of(inputs)))
        return self._generated.open(name, inputs, outcome.size, produce)


@dataclass(frozen=True)
class _Png:
    """An image that is shown as a PNG: its size, and what the image must agree with."""

    size: int
    promised: Expected


class ImageView(_SeriesLayer):
    """``images/xray/<Patient>/<Study>/<Series>/<Image>.png``: each X-ray as an 8-bit display PNG whose size
    follows from its Rows and Columns (see :mod:`nccidfs.derived.image`); an image that has none has a
    ``<Image>.json`` saying why."""

    NAME = "images"
    FOLDERS = ("xray",)
    FILE_DEPTH = 4

    def _files(self, parts: Parts) -> dict[str, Entry]:
        images = _Images(self._namespace, parts[0], parts[1:])
        pngs = self._pngs(images)
        entries = {}
        for ident, image in images.images.items():
            shown = self._shown_as(parts, images, ident, pngs)
            if isinstance(shown, _Png):
                entries[ident + ".png"] = Entry(ident + ".png", False, shown.size, image.mtime)
            else:
                entries[ident + TWIN] = Entry(ident + TWIN, False, len(_reason_file(shown)), image.mtime)
        return dict(sorted(entries.items()))

    def _shown_as(self, parts: Parts, images: _Images, ident: str, pngs: Mapping[str, _Png | str]) -> _Png | str:
        """The image's PNG, or the reason it has none."""
        shown = pngs.get(ident, f"{ident}: no metadata twin")
        if isinstance(shown, _Png):
            inputs = [images.images[ident], images.twins[ident]]
            failure = self._generated.failure(f"{self.NAME}/{'/'.join(parts)}/{ident}.png", inputs)
            return shown if failure is None else failure
        return shown

    def _pngs(self, images: _Images) -> dict[str, _Png | str]:
        """By image id: its PNG or the reason it has none, remembered by the twins' ETags."""
        def compute() -> _Derived:
            twins = self._twins(images)
            return _Derived({ident: self._png(ident, twin, images.images[ident]) for ident, twin in twins.items()},
                            images.twin_bytes() + 1)

        key = images.key("png", {**images.images, **{ident + TWIN: twin for ident, twin in images.twins.items()}})
        return self._remember(key, compute).value  # type: ignore[no-any-return]

    @staticmethod
    def _png(ident: str, twin: dict[str, Any] | str, image: ObjectInfo) -> _Png | str:
        """From the twin's Rows (0028,0010) and Columns (0028,0011), if a decoder reads the transfer syntax the
        twin names and decoding the image fits the budget."""
        if isinstance(twin, str):
            return twin
        undecodable = undecodable_reason(twin)
        if undecodable is not None:
            return f"{ident}: {undecodable}"
        try:
            promised = expected(twin)
            rows, columns = (int(twin[tag]["Value"][0]) for tag in ("00280010", "00280011"))
        except (KeyError, IndexError, TypeError, ValueError) as error:
            return f"{ident}: its metadata twin gives no Rows and Columns ({error})"
        oversized = _oversized(ident, image, promised)
        if oversized is not None:
            return oversized
        work = _work(promised, image)
        if rows <= 0 or columns <= 0 or work > DECODE_BUDGET:
            return f"{ident}: {rows}x{columns} pixels ({promised.pixels} in all) would take about {work} bytes " \
                   f"to decode, over the {DECODE_BUDGET} allowed"
        return _Png(png_size(rows, columns), promised)

    def open(self, parts: Parts) -> VirtualFile:
        entry = self.lookup(parts)
        if entry.is_dir:
            raise NotFound("/".join(parts))
        images = _Images(self._namespace, parts[0], parts[1:4])
        ident, suffix = parts[4].rsplit(".", 1)
        shown = self._shown_as(parts[:4], images, ident, self._pngs(images))
        if suffix == "json":
            if isinstance(shown, _Png):
                raise NotFound("/".join(parts))
            return Sidecar(_reason_file(shown))
        if not isinstance(shown, _Png):
            raise NotFound("/".join(parts))
        image, twin, promised = images.images[ident], images.twins[ident], shown.promised

        def build() -> bytes:
            started = time.monotonic()
            with _naming(ident):
                # Reserved before the image is read: builds waiting for memory hold none.
                with self._generated.budget.reserve(_work(promised, image), "its PNG"):
                    data = build_png(checked(self._reader.read_many([image])[0], promised))
                if len(data) != entry.size:
                    raise ValueError(f"the image is {len(data)} bytes as PNG, its metadata twin promised {entry.size}")
            log.debug("built %s (%d bytes) in %.2f s", "/".join([self.NAME, *parts]), len(data),
                      time.monotonic() - started)
            return data

        name = f"{self.NAME}/" + "/".join(parts)
        return self._generated.open(name, [image, twin], entry.size,
                                    whole_producer(build, self._generated.made, (name, version_of([image, twin]))))


def _reason_file(reason: str) -> bytes:
    """The ``.json`` of an image shown without a PNG."""
    return (json.dumps({"NoImageReason": reason}, indent=2, sort_keys=True) + "\n").encode()
