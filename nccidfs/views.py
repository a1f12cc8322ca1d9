"""The patient view: ``/patients/<Patient_ID>/`` shows everything known about one patient.

It holds symlinks to the patient's clinical files (``data/<Patient_ID>/*``) and one symlink per image
folder (``ct``, ``ct-metadata``, ``xray``, ...) to that patient's studies. Symlinks, not copies, so
``find``, ``du`` and ``os.walk`` (which do not follow links) see every file once, and the mirrored tree
stays exactly as the warehouse is.
"""

from __future__ import annotations

from nccidfs.errors import NotFound
from nccidfs.namespace import Entry, Namespace, split_path

VIEW = "patients"
CLINICAL = "data"


class PatientView:
    def __init__(self, namespace: Namespace) -> None:
        self._namespace = namespace

    @staticmethod
    def owns(path: str) -> bool:
        parts = split_path(path)
        return bool(parts) and parts[0] == VIEW

    def list(self, path: str) -> dict[str, Entry]:
        parts = split_path(path)
        if len(parts) == 1:
            names: set[str] = set()
            for folder in self._namespace.list("/"):
                names.update(name for name, entry in self._namespace.list(f"/{folder}").items() if entry.is_dir)
            mtime = self._namespace.mount_time
            return {name: Entry(name, True, mtime=mtime) for name in sorted(names)}
        if len(parts) == 2:
            return self._patient(parts[1])
        raise NotFound(path)

    def _patient(self, patient: str) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        for folder in self._namespace.list("/"):
            found = self._namespace.list(f"/{folder}").get(patient)
            if found is None or not found.is_dir:
                continue
            if folder == CLINICAL:
                for name, entry in self._namespace.list(f"/{CLINICAL}/{patient}").items():
                    entries[name] = Entry(name, False, len(f"../../{CLINICAL}/{patient}/{name}"), entry.mtime,
                                          link=f"../../{CLINICAL}/{patient}/{name}")
            else:
                target = f"../../{folder}/{patient}"
                entries[folder] = Entry(folder, False, len(target), found.mtime, link=target)
        if not entries:
            raise NotFound(f"/{VIEW}/{patient}")
        return dict(sorted(entries.items()))

    def lookup(self, path: str) -> Entry:
        parts = split_path(path)
        if len(parts) == 1:
            return Entry(VIEW, True, mtime=self._namespace.mount_time)
        if len(parts) == 2:
            self._patient(parts[1])
            return Entry(parts[1], True, mtime=self._namespace.mount_time)
        if len(parts) == 3:
            entry = self._patient(parts[1]).get(parts[2])
            if entry is not None:
                return entry
        raise NotFound(path)
