"""Virtual subtrees under the hidden ``/.nccidfs/`` folder, as layers of one small protocol.

The mirrored tree holds exactly the bucket's keys; everything nccidfs adds lives here, out of every
listing (as ZFS keeps ``.zfs`` out of ``ls -a``) yet reachable by path. Each layer answers for the paths
below its own name: ``lookup``, ``list``, ``open``, ``readlink``. :class:`ControlFolder` is the one
registry that mounts them; the core dispatches on the first path component and knows no layer by name.

Layers here: ``status.json`` (the daemon's counters, taken at open) and ``patients/<Patient_ID>/``
(symlinks to everything known about a patient). :mod:`nccidfs.assembly` registers them, and the
derived views (volumes, images, catalog, cohorts), the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from nccidfs.config import CONTROL_DIR, KNOWN_FOLDERS, STATUS_FILE
from nccidfs.errors import NotFound
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry

log = logging.getLogger(__name__)

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

    def read(self, offset: int, size: int) -> bytes: ...

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


class StatusFile:
    """``status.json``: the daemon's counters as JSON. Its size at stat is that of a fresh snapshot."""

    def __init__(self, provider: Callable[[], dict[str, Any]], mtime: float) -> None:
        self._provider = provider
        self._mtime = mtime

    def _bytes(self) -> bytes:
        return json.dumps(self._provider(), indent=2, sort_keys=True).encode() + b"\n"

    def lookup(self, parts: Parts) -> Entry:
        if parts:
            raise NotFound("status.json is a file")
        return Entry(STATUS_FILE, False, len(self._bytes()), self._mtime)

    def list(self, parts: Parts) -> dict[str, Entry]:
        raise NotFound("status.json is a file")

    def open(self, parts: Parts) -> VirtualFile:
        if parts:
            raise NotFound("status.json is a file")
        return Snapshot(self._bytes())

    def readlink(self, parts: Parts) -> str:
        raise NotFound("status.json is not a symlink")


class PatientView:
    """``patients/<Patient_ID>/``: symlinks to the patient's clinical files and to each image folder of
    theirs (``ct``, ``ct-metadata``, ``xray``, ...). Symlinks, not copies, so ``find``, ``du`` and
    ``os.walk`` (which do not follow links) see every file once. Only the warehouse's own folders count,
    so a mount of a deeper prefix (``--prefix training/ct``) gets an empty view, not a wrong one."""

    CLINICAL = "data"

    def __init__(self, namespace: Namespace) -> None:
        self._namespace = namespace

    def _folders(self) -> list[str]:
        return [name for name, entry in self._namespace.list("/").items()
                if entry.is_dir and name in KNOWN_FOLDERS]

    def list(self, parts: Parts) -> dict[str, Entry]:
        if not parts:
            names: set[str] = set()
            for folder in self._folders():
                names.update(name for name, entry in self._namespace.list(f"/{folder}").items() if entry.is_dir)
            mtime = self._namespace.mount_time
            return {name: Entry(name, True, mtime=mtime) for name in sorted(names)}
        if len(parts) == 1:
            return self._patient(parts[0])
        raise NotFound("/".join(parts))

    def _patient(self, patient: str) -> dict[str, Entry]:
        up = "../../../"  # from /.nccidfs/patients/<id>/<name> back to the root
        entries: dict[str, Entry] = {}
        for folder in self._folders():
            found = self._namespace.list(f"/{folder}").get(patient)
            if found is None or not found.is_dir:
                continue
            if folder == self.CLINICAL:
                for name, entry in self._namespace.list(f"/{folder}/{patient}").items():
                    entries[name] = _link(name, f"{up}{folder}/{patient}/{name}", entry.mtime)
            else:
                entries[folder] = _link(folder, f"{up}{folder}/{patient}", found.mtime)
        if not entries:
            raise NotFound(f"patients/{patient}")
        return dict(sorted(entries.items()))

    def lookup(self, parts: Parts) -> Entry:
        if len(parts) <= 1:
            if parts:
                self._patient(parts[0])
            return Entry(parts[0] if parts else "patients", True, mtime=self._namespace.mount_time)
        entry = self._patient(parts[0]).get(parts[1]) if len(parts) == 2 else None
        if entry is None:
            raise NotFound("/".join(parts))
        return entry

    def open(self, parts: Parts) -> VirtualFile:
        raise NotFound("the patient view holds only folders and symlinks")

    def readlink(self, parts: Parts) -> str:
        link = self.lookup(parts).link
        if link is None:
            raise NotFound("/".join(parts))
        return link


def _link(name: str, target: str, mtime: float) -> Entry:
    return Entry(name, False, len(target.encode()), mtime, link=target)


class ControlFolder:
    """``/.nccidfs/``: the registry of layers, each under its own name."""

    def __init__(self, mtime: float) -> None:
        self._mtime = mtime
        self._layers: dict[str, Layer] = {}
        # The kernel's invalidation, once the mount is up; layers reach it through here.
        self.invalidate: Invalidator = lambda path, wait: None

    def register(self, name: str, layer: Layer) -> None:
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
