"""``/.nccidfs/status.json``: the daemon's counters as JSON, fixed at open."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nccidfs.config import STATUS_FILE
from nccidfs.errors import NotFound
from nccidfs.objects import Entry
from nccidfs.views.registry import Parts, Snapshot, VirtualFile


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
