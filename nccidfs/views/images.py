"""``.nccidfs/images/xray/<Patient_ID>/<STUDY_UID>/<SERIES_UID>/<IMAGE_UUID>.png``: each X-ray as an 8-bit
display PNG made by :mod:`nccidfs.derived.image`, built whole once for all its readers; an image that
cannot be one has a ``<IMAGE_UUID>.json`` saying why.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nccidfs.derived.agreement import Expected, checked, expected
from nccidfs.derived.image import build_png, png_size
from nccidfs.derived.pixels import undecodable_reason
from nccidfs.errors import NotFound
from nccidfs.layout import TWIN_SUFFIX, XRAY
from nccidfs.objects import Entry, ObjectInfo
from nccidfs.views.generated import DECODE_BUDGET, SIDECAR_SUFFIX, Sidecar, version_of, whole_producer
from nccidfs.views.registry import Parts, VirtualFile
from nccidfs.views.series import Derived, SeriesImages, SeriesLayer, decoding_work, naming, oversized_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Png:
    """An image that is shown as a PNG: its size, and what the image must agree with."""

    size: int
    promised: Expected


class ImageView(SeriesLayer):
    """``images/xray/<Patient>/<Study>/<Series>/<Image>.png``: each X-ray as an 8-bit display PNG whose size
    follows from its Rows and Columns (see :mod:`nccidfs.derived.image`); an image that has none has a
    ``<Image>.json`` saying why."""

    NAME = "images"
    FOLDERS = (XRAY,)
    FILE_DEPTH = 4

    def _files(self, parts: Parts) -> dict[str, Entry]:
        images = SeriesImages(self._namespace, parts[0], parts[1:])
        pngs = self._pngs(images)
        entries = {}
        for ident, image in images.images.items():
            shown = self._shown_as(parts, images, ident, pngs)
            if isinstance(shown, _Png):
                entries[ident + ".png"] = Entry(ident + ".png", False, shown.size, image.mtime)
            else:
                name = ident + SIDECAR_SUFFIX
                entries[name] = Entry(name, False, len(_reason_file(shown)), image.mtime)
        return dict(sorted(entries.items()))

    def _shown_as(self, parts: Parts, images: SeriesImages, ident: str, pngs: Mapping[str, _Png | str]) -> _Png | str:
        """The image's PNG, or the reason it has none."""
        shown = pngs.get(ident, f"{ident}: no metadata twin")
        if isinstance(shown, _Png):
            inputs = [images.images[ident], images.twins[ident]]
            failure = self._generated.failure(f"{self.NAME}/{'/'.join(parts)}/{ident}.png", inputs)
            return shown if failure is None else failure
        return shown

    def _pngs(self, images: SeriesImages) -> dict[str, _Png | str]:
        """By image id: its PNG or the reason it has none, remembered by the twins' ETags."""
        def compute() -> Derived:
            twins = self._twins(images)
            return Derived({ident: self._png(ident, twin, images.images[ident]) for ident, twin in twins.items()},
                            images.twin_bytes() + 1)

        twins = {ident + TWIN_SUFFIX: twin for ident, twin in images.twins.items()}
        key = images.key("png", {**images.images, **twins})
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
        oversized = oversized_reason(ident, image, promised)
        if oversized is not None:
            return oversized
        work = decoding_work(promised, image)
        if rows <= 0 or columns <= 0 or work > DECODE_BUDGET:
            return f"{ident}: {rows}x{columns} pixels ({promised.pixels} in all) would take about {work} bytes " \
                   f"to decode, over the {DECODE_BUDGET} allowed"
        return _Png(png_size(rows, columns), promised)

    def open(self, parts: Parts) -> VirtualFile:
        entry = self.lookup(parts)
        if entry.is_dir:
            raise NotFound("/".join(parts))
        images = SeriesImages(self._namespace, parts[0], parts[1:self.FILE_DEPTH])
        ident, suffix = parts[self.FILE_DEPTH].rsplit(".", 1)
        shown = self._shown_as(parts[:self.FILE_DEPTH], images, ident, self._pngs(images))
        if suffix == "json":
            if isinstance(shown, _Png):
                raise NotFound("/".join(parts))
            return Sidecar(_reason_file(shown))
        if not isinstance(shown, _Png):
            raise NotFound("/".join(parts))
        image, twin, promised = images.images[ident], images.twins[ident], shown.promised

        def build() -> bytes:
            started = time.monotonic()
            with naming(ident):
                # Reserved before the image is read: builds waiting for memory hold none.
                with self._generated.budget.reserve(decoding_work(promised, image), "its PNG"):
                    data = build_png(checked(self._reader.read_many([image], keep=False)[0], promised))
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
