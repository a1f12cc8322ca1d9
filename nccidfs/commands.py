"""The commands that work on a running mount or a cache directory: refresh, status, cache, prefetch.

They find the daemon through the mount's ``.nccidfs/status.json`` (its control socket and its cache
bound), so they need no flags repeated from the mount command.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from nccidfs import control
from nccidfs.cache import clear_directory
from nccidfs.catalog_build import IMAGE_FOLDERS
from nccidfs.catalog_db import FILES as CATALOG_FILES
from nccidfs.config import CONTROL_DIR, STATUS_FILE, format_size
from nccidfs.errors import ConfigError, NccidfsError
from nccidfs.index import INDEX_FILES

STATUS_RELATIVE = f"{CONTROL_DIR}/{STATUS_FILE}"
READ_CHUNK = 1 << 20


def mounted_nccidfs() -> list[Path]:
    """Mount points of nccidfs filesystems, from /proc/self/mounts."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.nccidfs":
                found.append(Path(fields[1].replace("\\040", " ")))
    return found


def mount_status(mountpoint: Path) -> dict[str, Any]:
    """The daemon's status.json, or a ConfigError naming the problem."""
    try:
        status: dict[str, Any] = json.loads((mountpoint / STATUS_RELATIVE).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{mountpoint} is not an nccidfs mount") from None
    except OSError as error:
        raise ConfigError(f"{mountpoint}: {error.strerror}") from None
    return status


def find_mount(path: Path) -> Path:
    """The nccidfs mount point that ``path`` lies in."""
    path = path.absolute()
    for mountpoint in sorted(mounted_nccidfs(), key=lambda p: len(p.parts), reverse=True):
        if path == mountpoint or mountpoint in path.parents:
            return mountpoint
    raise ConfigError(f"{path} is not under an nccidfs mount")


def refresh(mountpoint: Path, path: str | None) -> int:
    """Drop the daemon's cached listings at and below ``path`` (in the mount); returns how many."""
    status = mount_status(mountpoint)
    inside = path_in_mount(mountpoint, path) if path else "/"
    reply = _ask(status, {"op": "refresh", "path": inside})
    return int(reply["dropped"])


def path_in_mount(mountpoint: Path, path: str) -> str:
    """``path`` (absolute, relative to here, or relative to the mount point) as ``/a/b`` inside the mount.

    It must exist: refreshing a name the mount does not show drops nothing, and its parent is what
    needs refreshing for a new upload to appear.
    """
    candidate = Path(os.path.abspath(path))
    if candidate != mountpoint and mountpoint not in candidate.parents:
        if Path(path).is_absolute():
            raise ConfigError(f"{path} is not in the mount {mountpoint}")
        candidate = mountpoint / path
    if not os.path.lexists(candidate):
        raise ConfigError(f"{path} is not in the mount {mountpoint} (to show a new upload, refresh its parent)")
    inside = candidate.relative_to(mountpoint)
    return "/" if inside == Path() else f"/{inside}"


def catalog_build(mountpoint: Path, folders: list[str] | None) -> dict[str, Any]:
    """Have the daemon build its catalog anew and show its progress until it ends; returns the last.
    ``folders`` must be image folders the mount shows, as they are named there."""
    status = mount_status(mountpoint)
    shown = [name for name in IMAGE_FOLDERS if (mountpoint / name).is_dir()]
    for folder in folders or ():
        if folder not in shown:
            raise ConfigError(f"--modality {folder}: not an image folder of {mountpoint} "
                              f"(choose from {', '.join(shown) or 'none'})")
    progress = _ask(status, {"op": "catalog", "folders": folders})
    with tqdm(total=None, unit=" patients", desc="catalog", disable=None) as bar:
        while progress["state"] == "building":
            time.sleep(0.5)
            progress = _ask(status, {"op": "catalog-progress"})
            bar.total = progress["patients_total"] or None
            bar.update(progress["patients_done"] - bar.n)
    return progress


def daemon_status(mountpoint: Path) -> dict[str, Any]:
    return _ask(mount_status(mountpoint), {"op": "status"})


def _ask(status: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = control.send(Path(status["control_socket"]), request)
    except (OSError, ValueError) as error:
        raise NccidfsError(f"cannot reach the daemon at {status.get('control_socket')}: {error}") from None
    if "error" in reply:
        raise NccidfsError(str(reply["error"]))
    return reply


def cache_clear(directory: Path) -> int:
    """Empty a cache directory; refused (by its lock) while a daemon holds it, and anywhere without the
    nccidfs marker."""
    return clear_directory(directory, (*INDEX_FILES, *CATALOG_FILES))


class _SizeBar(tqdm):  # type: ignore[misc]
    """tqdm's bar with sizes named as what they are (MiB, MiB/s): its unit_scale calls 1024-based units MB."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {done}/{size} [{elapsed}<{remaining}, {speed}]"

    @property
    def format_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = super().format_dict
        rate = values.get("rate") or (values["n"] / values["elapsed"] if values.get("elapsed") else 0)
        values.update(done=format_size(values["n"]), size=format_size(values["total"] or 0),
                      speed=f"{format_size(rate)}/s" if rate else "? B/s")
        return values


def _files(paths: list[Path]) -> Iterator[Path]:
    """Every file under the paths. Links are followed: the mirrored tree has none, and those of the patient
    view (``.nccidfs/patients/<id>/ct``) lead to the images a prefetch of that patient means."""
    for path in paths:
        if path.is_dir():
            for root, _dirs, names in os.walk(path, followlinks=True):
                for name in sorted(names):
                    yield Path(root) / name
        else:
            yield path


def resolve_prefetch_targets(arguments: list[str]) -> list[Path]:
    """Paths under a mount as given, or warehouse keys (``training/ct/<id>/...``) mapped into the mount."""
    targets = []
    for argument in arguments:
        path = Path(argument)
        if path.exists():
            targets.append(path.absolute())
            continue
        for mountpoint in mounted_nccidfs():
            prefix = str(mount_status(mountpoint)["prefix"])
            if argument.startswith(prefix) and (mountpoint / argument[len(prefix):]).exists():
                targets.append(mountpoint / argument[len(prefix):].strip("/"))
                break
        else:
            raise ConfigError(f"{argument}: no such path, nor a key under a mounted prefix")
    return targets


def prefetch(arguments: list[str], jobs: int, force: bool) -> tuple[int, int]:
    """Read every file under the targets through the mount, in parallel, so the daemon caches them.

    Returns (files, bytes). Refuses, unless ``force``, more than the cache can hold. Ctrl-C stops the
    workers after their current chunk.
    """
    targets = resolve_prefetch_targets(arguments)
    files = [(path, path.stat().st_size) for path in _files(targets)]
    total = sum(size for _, size in files)
    bound = int(mount_status(find_mount(targets[0]))["cache"]["bound_bytes"]) if targets else 0
    if total > bound and not force:
        raise ConfigError(f"{format_size(total)} requested but the cache holds {format_size(bound)}; "
                          "use --force to read anyway")
    stop = threading.Event()
    with _SizeBar(total=total, desc=f"0/{len(files)} files", dynamic_ncols=True,
                  bar_format=_SizeBar.FORMAT) as progress:
        lock = threading.Lock()
        done = 0

        def read_one(path: Path) -> None:
            with open(path, "rb", buffering=0) as handle:
                while not stop.is_set():
                    chunk = handle.read(READ_CHUNK)
                    if not chunk:
                        return
                    with lock:
                        progress.update(len(chunk))

        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(read_one, path) for path, _ in files]
            try:
                for future in as_completed(futures):
                    future.result()
                    with lock:
                        done += 1
                        progress.set_description(f"{done}/{len(files)} files")
            except BaseException:
                stop.set()
                for future in futures:
                    future.cancel()
                raise
    return len(files), total
