"""The inode numbers the kernel holds for mount paths, with its lookup count of each, under a ceiling.

The kernel names a file by the number a lookup (or a listing with attributes) gave it, and keeps that
number until it sends FORGET; until then the daemon must know the path. Nothing but memory bounds how
many the kernel keeps (a stat of every file of the warehouse would keep 10.5 million), so past
``limit`` the oldest are given up: a file is reported deleted to the kernel, which then forgets it at
once, and its path gets a new number at its next lookup; a directory only loses its name in the
kernel's cache, and is forgotten when the kernel reclaims memory. Numbers are never reused.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass

ROOT = 1
# Past the limit, enough of the oldest are given up to bring the count down by this share of the limit,
# so that a walk does not have them given up one at a time.
GIVE_UP_SHARE = 0.1


@dataclass(frozen=True)
class GivenUp:
    """A number the kernel is asked to drop: ``parent`` and ``name`` say where it is in the tree."""

    ino: int
    parent: int
    name: str
    is_dir: bool


class Inodes:
    """Paths by number and numbers by path. Methods are safe to call from any thread."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        # By number, in the order they were first looked up (oldest first): (path, is_dir).
        self._paths: dict[int, tuple[str, bool]] = {ROOT: ("/", True)}
        self._numbers: dict[str, int] = {"/": ROOT}
        self._lookups: dict[int, int] = {ROOT: 1}
        self._next = itertools.count(ROOT + 1)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._paths)

    def path(self, ino: int) -> str:
        """The path of a number the kernel holds (KeyError for one it was never given or forgot)."""
        return self._paths[ino][0]

    def number(self, path: str) -> int | None:
        """The number the kernel holds for ``path``, if any."""
        return self._numbers.get(path)

    def reserve(self, path: str) -> int:
        """The number to give the kernel for ``path``: its own if it has one, else a new one, which
        :meth:`looked_up` then records (a reserved number left unused is simply never seen again)."""
        ino = self._numbers.get(path)
        return next(self._next) if ino is None else ino

    def looked_up(self, path: str, ino: int, is_dir: bool) -> bool:
        """The kernel was given ``ino`` for ``path`` once more. Says whether the count is past the limit."""
        with self._lock:
            if ino in self._lookups:
                self._lookups[ino] += 1
            else:
                self._paths[ino] = (path, is_dir)
                self._numbers[path] = ino
                self._lookups[ino] = 1
            return len(self._paths) > self._limit

    def forget(self, ino: int, count: int) -> bool:
        """The kernel dropped ``count`` lookups of ``ino`` (FORGET). Says whether it still holds it."""
        with self._lock:
            if ino == ROOT:
                return True
            if ino not in self._lookups:
                return False
            left = self._lookups[ino] - count
            if left > 0:
                self._lookups[ino] = left
                return True
            path, _ = self._paths.pop(ino)
            del self._lookups[ino]
            if self._numbers.get(path) == ino:
                del self._numbers[path]
            return False

    def give_up(self, busy: Callable[[int], bool]) -> list[GivenUp]:
        """The oldest numbers past the limit (and a tenth of it), except the root and those ``busy``
        says are in use: files lose their path here (their next lookup gets a new number); each taken
        moves to the back of the order, so a directory the kernel keeps is not taken again at once."""
        with self._lock:
            wanted = len(self._paths) - int(self._limit * (1 - GIVE_UP_SHARE))
            taken: list[GivenUp] = []
            for ino, (path, is_dir) in self._paths.items():
                if len(taken) >= wanted:
                    break
                if ino == ROOT or busy(ino):
                    continue
                parent_path, _, name = path.rpartition("/")
                parent = self._numbers.get(parent_path or "/")
                if parent is None:
                    continue
                taken.append(GivenUp(ino, parent, name, is_dir))
            for given in taken:
                path, is_dir = self._paths.pop(given.ino)
                self._paths[given.ino] = (path, is_dir)
                if not is_dir and self._numbers.get(path) == given.ino:
                    del self._numbers[path]
            return taken

    def under(self, path: str) -> list[int]:
        """Numbers of ``path`` and of everything the kernel holds below it."""
        below = path.rstrip("/") + "/"
        with self._lock:
            return [ino for number, ino in self._numbers.items() if number == path or number.startswith(below)]

    def names_in(self, path: str) -> list[str]:
        """Names the kernel holds directly in directory ``path``."""
        below = path.rstrip("/") + "/"
        with self._lock:
            return [number[len(below):] for number in self._numbers
                    if len(number) > len(below) and number.startswith(below) and "/" not in number[len(below):]]
