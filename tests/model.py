"""A model of the bucket for the state-machine tests, and what a read or a listing may show against it.

The same model checks the filesystem core driven directly (tests/unit/test_core_stateful.py) and a real
mount (tests/integration/test_stateful.py): both must keep these promises.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable

KEYS = (
    "ct/P1/S1/R1/a.dcm", "ct/P1/S1/R1/b.dcm", "ct/P1/S1/R2/c.dcm", "ct/P2/S9/R9/d.dcm",
    "data/P1/status_2020-01-01.json", "lead.txt",
)
# Keys that must never show in the mount: the root's own marker, empty and dot segments, a folder marker.
ODD_KEYS = ("", "/x.txt", "../z", "ct/P1/S1/R1/", "ct/P1/./y.dcm")
# Folders the machines list, '' being the root.
FOLDERS = ("", "ct", "ct/P1", "ct/P1/S1", "ct/P1/S1/R1", "data/P1")
# What a read or a listing may fail with: the key is gone (ENOENT), or S3 failed or changed under it (EIO).
READ_ERRNOS = {errno.ENOENT, errno.EIO}


def names_under(folder: str, keys: Iterable[str]) -> set[str]:
    """The names that ``keys`` make directly under ``folder`` ('' is the root), odd ones left out."""
    prefix = f"{folder}/" if folder else ""
    names = {key[len(prefix):].split("/", 1)[0] for key in keys if key.startswith(prefix)}
    return names - {"", ".", ".."}


class BucketModel:
    """Every version each key ever had, the odd keys put, and which keys' listings are fresh (listed
    again since their last change)."""

    def __init__(self) -> None:
        self.versions: dict[str, list[bytes]] = {key: [] for key in KEYS}
        self.current: dict[str, bytes | None] = dict.fromkeys(KEYS)
        self.odd: set[str] = set()
        self.fresh: set[str] = set()

    def put(self, key: str, body: bytes) -> None:
        self.versions[key].append(body)
        self.current[key] = body
        self.fresh.discard(key)

    def delete(self, key: str) -> None:
        self.current[key] = None
        self.fresh.discard(key)

    def put_odd(self, odd: str) -> None:
        self.odd.add(odd)
        self.fresh.clear()

    def names_ever(self, folder: str) -> set[str]:
        """Every name any key ever made under ``folder``."""
        return names_under(folder, set(KEYS) | self.odd)

    def names_now(self, folder: str) -> set[str]:
        return names_under(folder, {key for key in KEYS if self.current[key] is not None} | self.odd)

    def check_read(self, key: str, got: bytes | int, outage: bool, expect: Callable[[bytes], bytes]) -> None:
        """What a read of ``key`` gave (its bytes, or the errno it failed with) is one version's bytes as
        ``expect`` cuts them; once the key's listing is fresh and S3 answers, the current version's, and a
        deleted key is ENOENT."""
        fresh = key in self.fresh and not outage
        current = self.current[key]
        if isinstance(got, int):
            assert got in READ_ERRNOS, f"{key}: errno {got}"
            if fresh:
                assert current is None and got == errno.ENOENT, f"{key} is fresh and current: errno {got}"
            return
        assert any(got == expect(version) for version in self.versions[key]), f"{key}: bytes of no version"
        if fresh:
            assert current is not None and got == expect(current), f"{key}: not the current version"

    def check_listing(self, folder: str, names: Iterable[str], outage: bool) -> None:
        """A listing never shows a name no key made; once every key under it is fresh, exactly those now."""
        shown = set(names)
        assert shown <= self.names_ever(folder), f"{folder}: {sorted(shown)}"
        under = [key for key in KEYS if key.startswith(f"{folder}/" if folder else "")]
        if not outage and all(key in self.fresh for key in under):
            assert shown == self.names_now(folder), f"{folder} is fresh: {sorted(shown)}"
