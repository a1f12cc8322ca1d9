"""``/.nccidfs/patients/<Patient_ID>/``: symlinks to everything the mount holds of one patient."""

from __future__ import annotations

from nccidfs.errors import NotFound
from nccidfs.layout import CLINICAL_FOLDER, KNOWN_FOLDERS
from nccidfs.namespace import Namespace
from nccidfs.objects import Entry
from nccidfs.views.registry import Parts, VirtualFile


class PatientView:
    """``patients/<Patient_ID>/``: symlinks to the patient's clinical files and to each image folder of
    theirs (``ct``, ``ct-metadata``, ``xray``, ...). Symlinks, not copies, so ``find``, ``du`` and
    ``os.walk`` (which do not follow links) see every file once. Only the warehouse's own folders count,
    so a mount of a deeper prefix (``--prefix training/ct``) gets an empty view, not a wrong one."""

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
            if folder == CLINICAL_FOLDER:
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
