"""The protocol every view under ``/.nccidfs/`` answers, and :class:`ControlFolder`, the registry that
routes a path to its view by the path's first component below ``/.nccidfs/``.

Each view (a layer) answers for the paths below its own name: ``lookup``, ``list``, ``open``,
``readlink``; an open file is a :class:`VirtualFile` whose bytes are fixed from open to release.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from nccidfs.config import CONTROL_DIR
from nccidfs.errors import NotFound
from nccidfs.objects import Chunk, Entry

CONTROL = CONTROL_DIR
Parts = Sequence[str]
# Called with a mount path whose size or bytes the kernel may hold wrongly (a replaced or discarded object,
# a derived file whose inputs changed), and how long to wait for the kernel to take it in (0: do not wait).
Invalidator = Callable[[str, float], None]
# An open of a replaced object (or of a derived file of a new size) waits this long for the kernel to
# forget the old size, so that a stat right after agrees with the bytes read; a read never waits (the
# kernel may hold the page it asks for).
OPEN_INVALIDATION_WAIT = 0.2


class VirtualFile(Protocol):
    """An open virtual file: its bytes are fixed from open to release."""

    def read(self, offset: int, size: int) -> Chunk: ...

    def release(self) -> None: ...


class Layer(Protocol):
    """A virtual subtree; ``parts`` are path components below the layer's own name ([] is the layer)."""

    def lookup(self, parts: Parts) -> Entry: ...

    def list(self, parts: Parts) -> dict[str, Entry]: ...

    def open(self, parts: Parts) -> VirtualFile: ...

    def readlink(self, parts: Parts) -> str: ...


class Snapshot:
    """A virtual file held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, size: int) -> bytes:
        return self._data[offset:offset + size]

    def release(self) -> None:
        """Nothing to free beyond the bytes themselves."""


class ControlFolder:
    """``/.nccidfs/``: the registry of layers, each under its own name."""

    def __init__(self, mtime: float) -> None:
        self._mtime = mtime
        self._layers: dict[str, Layer] = {}
        # The kernel's invalidation, once the mount is up; layers reach it through here.
        self.invalidate: Invalidator = lambda path, wait: None

    def register(self, name: str, layer: Layer) -> None:
        """Show ``layer`` as ``/.nccidfs/<name>``."""
        self._layers[name] = layer

    def _route(self, parts: Parts) -> tuple[Layer, Parts]:
        layer = self._layers.get(parts[0])
        if layer is None:
            raise NotFound(f"{CONTROL}/{parts[0]}")
        return layer, parts[1:]

    def lookup(self, parts: Parts) -> Entry:
        if not parts:
            return Entry(CONTROL, True, mtime=self._mtime)
        layer, rest = self._route(parts)
        entry = layer.lookup(rest)
        return entry if rest else Entry(parts[0], entry.is_dir, entry.size, entry.mtime, entry.obj, entry.link)

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            return {name: self.lookup([name]) for name in sorted(self._layers)}
        layer, rest = self._route(parts)
        return layer.list(rest)

    def open(self, parts: Parts) -> VirtualFile:
        if not parts:
            raise NotFound(CONTROL)
        layer, rest = self._route(parts)
        return layer.open(rest)

    def readlink(self, parts: Parts) -> str:
        if not parts:
            raise NotFound(CONTROL)
        layer, rest = self._route(parts)
        return layer.readlink(rest)
