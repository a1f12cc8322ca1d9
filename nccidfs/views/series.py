"""What the views of image series share: ``<folder>/<Patient>/<Study>/...`` from the listings, each
image paired with its metadata twin, twins read within their bounds and what is derived from them remembered
by their ETags.

Sizes come from the metadata twins (read through the cache, a few KiB each), so ``ls -l`` of any view
folder downloads no image, and ``st_size`` is exact at stat time (nibabel memory-maps a ``.nii``).

Safe on any input: a bad input spoils only its own file. A twin that is no DICOM JSON object, or over
:data:`~nccidfs.xattrs.MAX_TWIN_BYTES` (not read at all), gives its series (volumes) or image (images) a
reason instead of a file; a series' twins are parsed at most :data:`MAX_SERIES_TWIN_BYTES` together, and
what is remembered of them (plans, sizes) weighs at most :data:`MEMO_TWIN_BYTES` of the twins it came
from. An image is held to its twin before its pixels are decoded (:mod:`nccidfs.derived.agreement`), and
one far larger than its twin's pixels (:data:`MAX_IMAGE_EXPANSION`) is not read. A file whose image fails
any of this fails that read with EIO; the reason is logged, and from then on that file's listing gives the
reason in its ``.json`` instead of the file. Names over
:data:`~nccidfs.namespace.rules.MAX_NAME_BYTES` bytes are not listed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache

from nccidfs.derived.agreement import HEADER_SLACK, Expected, expected
from nccidfs.dicom import json_document
from nccidfs.errors import NotFound
from nccidfs.layout import TWIN_SUFFIX, image_id, is_image, twin_folder
from nccidfs.namespace import Namespace
from nccidfs.namespace.rules import MAX_NAME_BYTES
from nccidfs.objects import Entry, ObjectInfo
from nccidfs.views.generated import REMEMBERED_FILES, WORK_BYTES_PER_PIXEL, Generated, ObjectReader
from nccidfs.views.registry import Parts
from nccidfs.xattrs import MAX_TWIN_BYTES

log = logging.getLogger(__name__)

# The twins of one series parsed together: about 2,800 CT slices of 6 KiB. Parsed JSON takes about ten
# times its text, so this bounds the memory of planning one series near 160 MiB.
MAX_SERIES_TWIN_BYTES = 16 * 1024 * 1024
# What is remembered of parsed twins (plans, PNG sizes, what each image must agree with), counted by the
# bytes of the twins it came from.
MEMO_TWIN_BYTES = 32 * 1024 * 1024
# An image may be this many times the pixels its twin gives (plus HEADER_SLACK) before it is not read.
MAX_IMAGE_EXPANSION = 2


class SeriesImages:
    """The images of one series folder and their metadata twins, by image id (the name without .dcm)."""

    def __init__(self, namespace: Namespace, folder: str, parts: Sequence[str]) -> None:
        rest = "/".join(parts)
        images = {image_id(name): e.obj for name, e in namespace.list(f"/{folder}/{rest}").items()
                  if is_image(name) and e.obj is not None}
        try:
            twins = namespace.list(f"/{twin_folder(folder)}/{rest}")
        except NotFound:
            twins = {}
        self.images: dict[str, ObjectInfo] = images
        self.twins: dict[str, ObjectInfo] = {
            ident: twin.obj for ident in images if (twin := twins.get(ident + TWIN_SUFFIX)) is not None and twin.obj}

    def inputs(self) -> list[ObjectInfo]:
        return [*self.images.values(), *self.twins.values()]

    def twin_bytes(self) -> int:
        return sum(twin.size for twin in self.twins.values())

    def key(self, kind: str, objects: Mapping[str, ObjectInfo]) -> tuple[str, ...]:
        """A memo key for what is derived from these objects (the twins, or the images too)."""
        return (kind, *sorted(f"{o.key}\0{o.etag}" for o in objects.values()))


@dataclass(frozen=True)
class Derived:
    """What a layer remembers of a series' parsed twins, weighed by the bytes of the twins."""

    value: Any
    weight: int
    promised: Mapping[str, Expected] = field(default_factory=dict)  # by image id: what each must agree with


Twins = dict[str, dict[str, Any] | str]


class SeriesLayer:
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
        self._memo: LRUCache[tuple[str, ...], Derived] = LRUCache(maxsize=MEMO_TWIN_BYTES,
                                                                   getsizeof=lambda derived: derived.weight)
        self._warned: LRUCache[tuple[str, str], bool] = LRUCache(maxsize=REMEMBERED_FILES)

    def _dir(self, name: str) -> Entry:
        return Entry(name, True, mtime=self._namespace.mount_time)

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            root = self._namespace.list("/")
            return {f: self._dir(f) for f in self.FOLDERS if f in root and twin_folder(f) in root}
        if parts[0] not in self.list([]) or len(parts) > self.FILE_DEPTH:
            raise NotFound("/".join(parts))
        if len(parts) == self.FILE_DEPTH:
            return self._shown(parts, self._files(parts))
        return {name: self._dir(name) for name, entry in self._namespace.list("/" + "/".join(parts)).items()
                if entry.is_dir}

    def _shown(self, parts: Parts, entries: dict[str, Entry]) -> dict[str, Entry]:
        """The derived files of a folder as listed: none over MAX_NAME_BYTES (each logged once), and each
        size told to :class:`Generated`, which has the kernel forget a size that changed."""
        folder = "/".join([self.NAME, *parts])
        shown = {}
        for name, entry in entries.items():
            if len(name.encode()) > MAX_NAME_BYTES:
                self._warn_once(("name", f"{folder}/{name}"), "%s/%s: a name over %d bytes; not listed",
                                folder, name, MAX_NAME_BYTES)
                continue
            self._generated.listed(f"{folder}/{name}", entry.size)
            shown[name] = entry
        return shown

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return self._dir(self.NAME)
        if 1 < len(parts) <= self.FILE_DEPTH and parts[0] in self.list([]):
            # A folder of the mirrored tree, looked up by name as the tree looks it up (a patient from the
            # listing of its own subtree), not in the listing of its whole parent: a modality folder holds
            # thousands of patients, and a cold open of a volume would wait for every page of it.
            if not self._namespace.lookup("/" + "/".join(parts)).is_dir:
                raise NotFound("/".join(parts))
            return self._dir(parts[-1])
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

    def _remember(self, key: tuple[str, ...], compute: Callable[[], Derived]) -> Derived:
        with self._lock:
            known = self._memo.get(key)
        if known is None:
            known = compute()
            with self._lock, suppress(ValueError):  # heavier than the whole memo: not kept
                self._memo[key] = known
        return known

    def _twins(self, series: SeriesImages) -> Twins:
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
        documents = self._reader.read_each([series.twins[ident] for ident in readable], _parse_twin)
        for ident, document in zip(readable, documents, strict=True):
            parsed[ident] = document if isinstance(document, dict) else f"{ident}: its metadata twin {document}"
        return parsed


def _parse_twin(body: bytes) -> dict[str, Any] | str:
    """A twin as a DICOM JSON object, or why it is none (not JSON, too deep, not an object)."""
    try:
        document = json_document(body)
    except (ValueError, RecursionError):  # ValueError covers bad UTF-8 and bad JSON
        return "is not a DICOM JSON object (not JSON, or nested too deep)"
    if not isinstance(document, dict):
        return f"is not a DICOM JSON object ({type(document).__name__})"
    return document


def promised_by(twins: Mapping[str, dict[str, Any]]) -> dict[str, Expected] | str:
    """What each image must agree with, or why a twin cannot say."""
    promised = {}
    for ident, twin in twins.items():
        try:
            promised[ident] = expected(twin)
        except ValueError as error:
            return f"{ident}: {error}"
    return promised


@contextmanager
def naming(ident: str) -> Iterator[None]:
    """Reasons given inside start with the image they are about."""
    try:
        yield
    except ValueError as error:
        raise ValueError(f"{ident}: {error}") from None


def decoding_work(promised: Expected, image: ObjectInfo) -> int:
    """The memory decoding an image takes, all in (see WORK_BYTES_PER_PIXEL)."""
    return promised.pixels * WORK_BYTES_PER_PIXEL + image.size


def oversized_reason(ident: str, image: ObjectInfo, promised: Expected) -> str | None:
    """Why an image is not read at all: far larger than its twin's pixels (its bytes are held at once)."""
    limit = MAX_IMAGE_EXPANSION * promised.pixel_bytes + HEADER_SLACK
    if image.size > limit:
        return f"{ident}: the image is {image.size} bytes, over the {limit} its metadata twin's pixels allow"
    return None
