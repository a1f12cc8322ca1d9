"""The commands that work on a running mount or a cache directory: status, refresh, catalog build,
metrics, prefetch, and cache stats and clear.

A mount is recognised from the mount table alone; its daemon is then found through the record it left in
the runtime directory (:func:`nccidfs.control.lookup`), or, for a daemon without one, through the
mount's ``.nccidfs/status.json`` read by a thread that is given up on after
:data:`~nccidfs.control.ANSWER_SECONDS`. Every request then goes over the daemon's control socket, whose
status also gives the cache's bound, so the commands need no flags repeated from the mount command.
The cache commands work on the directory alone, without a daemon.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import platformdirs
from tqdm import tqdm

from nccidfs import control
from nccidfs.cache import clear_directory, disk_usage
from nccidfs.cachedir import MARKER, is_cache_dir
from nccidfs.catalog_build import CATALOGUED_FOLDERS
from nccidfs.catalog_db import FILES as CATALOG_FILES
from nccidfs.config import APP_NAME, CONTROL_DIR, STATUS_FILE, format_size
from nccidfs.errors import ConfigError, NccidfsError
from nccidfs.index import INDEX_FILES

STATUS_RELATIVE = f"{CONTROL_DIR}/{STATUS_FILE}"
READ_CHUNK = 1 << 20
# How often ``catalog build`` asks the daemon how far the build is.
PROGRESS_POLL_SECONDS = 0.5
MAX_LINKS = 40  # links followed in one path, as the kernel allows


def mounted_nccidfs() -> list[Path]:
    """Mount points of nccidfs filesystems, from /proc/self/mounts (read without touching any mount)."""
    found = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.nccidfs":
                found.append(Path(fields[1].replace("\\040", " ")))
    return found


def outside_mounts(path: str | Path) -> Path:
    """``path`` absolute with its links resolved, looking at nothing inside an nccidfs mount: links are
    followed one part at a time and resolving stops at a mount point of the mount table, so a daemon that
    does not answer cannot hold the command up here (``os.path.realpath`` would stat the mount point)."""
    mounts = {str(m) for m in mounted_nccidfs()}
    pending = list(Path(os.path.abspath(path)).parts[1:])
    resolved, hops = Path("/"), 0
    while pending:
        part = pending.pop(0)
        candidate = resolved.parent if part == ".." else resolved / part
        if str(candidate) in mounts:
            return candidate.joinpath(*pending)
        if hops < MAX_LINKS and os.path.islink(candidate):
            hops += 1
            target = Path(os.readlink(candidate))
            resolved = Path("/") if target.is_absolute() else resolved
            pending = [*target.parts[target.is_absolute():], *pending]
            continue
        resolved = candidate
    return resolved


def mount_status(mountpoint: Path) -> dict[str, Any]:
    """The daemon's status, asked through its control socket; a ConfigError if ``mountpoint`` is not an
    nccidfs mount, an NccidfsError if its daemon does not answer within :data:`control.ANSWER_SECONDS`."""
    mountpoint = outside_mounts(mountpoint)
    if mountpoint not in mounted_nccidfs():
        raise ConfigError(f"{mountpoint} is not an nccidfs mount")
    socket_path = control.lookup(mountpoint)
    if socket_path is None:  # a daemon with no runtime directory: its status file names the socket
        socket_path = Path(_read_answering(mountpoint, mountpoint / STATUS_RELATIVE)["control_socket"])
    return _ask({"mountpoint": str(mountpoint), "control_socket": str(socket_path)}, {"op": "status"})


def _read_answering(mountpoint: Path, path: Path) -> dict[str, Any]:
    """A JSON file read through the mount by a thread, given up on if the daemon does not answer in time
    (the thread stays blocked in the kernel until the daemon answers or the command exits)."""
    result: dict[str, Any] = {}

    def read() -> None:
        try:
            result["status"] = json.loads(path.read_bytes())
        except (OSError, ValueError) as error:
            result["error"] = error

    reader = threading.Thread(target=read, name="status-reader", daemon=True)
    reader.start()
    reader.join(control.ANSWER_SECONDS)
    if reader.is_alive():
        raise not_answering(mountpoint)
    if "error" in result:
        raise ConfigError(f"{mountpoint}: {getattr(result['error'], 'strerror', None) or result['error']}")
    status: dict[str, Any] = result["status"]
    return status


def not_answering(mountpoint: Path | str) -> NccidfsError:
    return NccidfsError(f"the daemon of {mountpoint} does not answer (nothing within "
                        f"{control.ANSWER_SECONDS:.0f} s); if it is stuck, restart it: fusermount3 -u -z "
                        f"{mountpoint}, then mount again")


def find_mount(path: Path) -> Path:
    """The nccidfs mount point that ``path`` lies in, from the mount table alone."""
    path = outside_mounts(path)
    for mountpoint in sorted(mounted_nccidfs(), key=lambda p: len(p.parts), reverse=True):
        if path == mountpoint or mountpoint in path.parents:
            return mountpoint
    raise ConfigError(f"{path} is not under an nccidfs mount")


def refresh(mountpoint: Path, path: str | None) -> int:
    """Drop the daemon's cached listings at and below ``path`` (in the mount); returns how many."""
    status = mount_status(mountpoint)
    mountpoint = outside_mounts(mountpoint)
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


def catalog_build(mountpoint: Path, folders: list[str] | None, relist: bool = False) -> dict[str, Any]:
    """Have the daemon build its catalog anew and show its progress until it ends; returns the last.
    ``folders`` must be image folders the mount shows, as they are named there; ``relist`` lists every
    patient folder again, not only the new ones."""
    status = mount_status(mountpoint)
    shown = [name for name in CATALOGUED_FOLDERS if (mountpoint / name).is_dir()]
    for folder in folders or ():
        if folder not in shown:
            raise ConfigError(f"--modality {folder}: not an image folder of {mountpoint} "
                              f"(choose from {', '.join(shown) or 'none'})")
    progress = _ask(status, {"op": "catalog", "folders": folders, "relist": relist})
    with tqdm(total=None, unit=" patients", desc="catalog", disable=None) as bar:
        while progress["state"] == "building":
            time.sleep(PROGRESS_POLL_SECONDS)
            progress = _ask(status, {"op": "catalog-progress"})
            bar.total = progress["patients_total"] or None
            bar.update(progress["patients_done"] - bar.n)
    return progress


def metrics(mountpoint: Path) -> str:
    """The daemon's metrics in Prometheus's text format."""
    return str(_ask(mount_status(mountpoint), {"op": "metrics"})["text"])


def _ask(status: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    try:
        reply = control.send(Path(status["control_socket"]), request)
    except TimeoutError:
        raise not_answering(status.get("mountpoint", status["control_socket"])) from None
    except (OSError, ValueError) as error:
        raise NccidfsError(f"cannot reach the daemon at {status.get('control_socket')}: {error}") from None
    if "error" in reply:
        raise NccidfsError(str(reply["error"]))
    return reply


def cache_directory(directory: Path) -> Path:
    """``directory`` if it is an nccidfs cache directory; otherwise one line saying what it is instead.

    A mount (or a path in one) is refused from the mount table without being looked at, and any other
    directory without the nccidfs marker at once, so neither a mount nor ``/`` is ever walked.
    """
    directory = outside_mounts(directory)
    if _mount_of(directory, mounted_nccidfs()) is not None:
        raise ConfigError(f"{directory} is an nccidfs mount, not a cache directory; give the --cache-dir "
                          "it was mounted with")
    if not os.path.isdir(directory):
        demo = Path(platformdirs.user_cache_dir(f"{APP_NAME}-demo"))
        raise ConfigError(f"no cache directory at {directory} (a demo keeps one per mount point under {demo}); "
                          "give one with --cache-dir")
    if not is_cache_dir(directory):
        raise ConfigError(f"{directory} is not an nccidfs cache directory (it has no {MARKER} marker)")
    return directory


def cache_stats(directory: Path) -> dict[str, Any]:
    """What a cache directory holds, read without a daemon."""
    directory = cache_directory(directory)
    try:
        return disk_usage(directory)
    except OSError as error:
        raise ConfigError(f"cache dir {directory}: {error.strerror or error}") from None


def cache_clear(directory: Path) -> int:
    """Empty a cache directory; refused (by its lock) while a daemon holds it, and anywhere without the
    nccidfs marker."""
    return clear_directory(cache_directory(directory), (*INDEX_FILES, *CATALOG_FILES))


class _SizeBar(tqdm):  # type: ignore[misc]
    """tqdm's bar with sizes named as what they are (MiB, MiB/s): its unit_scale calls 1024-based units MB."""

    total: int | None
    FORMAT = "{desc}{percentage:3.0f}%|{bar}| {done}/{size} [{elapsed}<{remaining}, {speed}]"  # desc ends ": "

    def advance(self, count: int) -> None:
        """Count bytes read. A file that reads longer than it was listed (a view built as it is read)
        raises the total with it, so the bar never runs past its end."""
        if self.n + count > (self.total or 0):
            self.total = self.n + count
        self.update(count)

    def finish(self) -> None:
        """Everything was read: the bar ends full, also when files read shorter than they were listed."""
        self.total = self.n
        self.refresh()

    @property
    def format_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = super().format_dict
        rate = values.get("rate") or (values["n"] / values["elapsed"] if values.get("elapsed") else 0)
        values.update(done=format_size(values["n"]), size=format_size(values["total"] or 0),
                      speed=f"{format_size(rate)}/s" if rate else "? B/s")
        return values


def _files(paths: list[Path]) -> Iterator[tuple[Path, int]]:
    """Every regular file under the paths, with its size. Links are followed: the mirrored tree has none,
    and those of the patient view (``.nccidfs/patients/<id>/ct``) lead to the images a prefetch of that
    patient means; a link that leads nowhere is passed over."""
    for path in paths:
        names = ([Path(root) / name for root, _dirs, files in os.walk(path, followlinks=True)
                  for name in sorted(files)] if path.is_dir() else [path])
        for name in names:
            try:
                info = os.stat(name)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield name, info.st_size


def _mount_of(path: Path, mounts: list[Path]) -> Path | None:
    inside = [m for m in mounts if path == m or m in path.parents]
    return max(inside, key=lambda m: len(m.parts)) if inside else None


def _holding(mounts: list[Path], argument: str, statuses: dict[Path, dict[str, Any]]) -> list[tuple[Path, Path]]:
    """The mounts that hold the key ``argument``, with its path in each, all asked at once by daemon
    threads: a mount of another user whose daemon is gone, stuck or slow is passed over after
    :data:`control.ANSWER_SECONDS` for its status and as long again for the look-up, for all at once."""
    found: dict[Path, Path] = {}

    def probe(mountpoint: Path) -> None:
        try:
            status = statuses.get(mountpoint) or mount_status(mountpoint)
        except NccidfsError:
            return
        statuses[mountpoint] = status
        prefix = str(status["prefix"])
        inside = mountpoint / argument[len(prefix):].strip("/")
        if argument.startswith(prefix) and os.path.lexists(inside):
            found[mountpoint] = inside

    probes = [threading.Thread(target=probe, args=(m,), name="mount-probe", daemon=True) for m in mounts]
    for thread in probes:
        thread.start()
    deadline = time.monotonic() + 2 * control.ANSWER_SECONDS
    for thread in probes:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [(mountpoint, found[mountpoint]) for mountpoint in mounts if mountpoint in found]


def resolve_prefetch_targets(arguments: list[str]) -> dict[Path, list[Path]]:
    """Each mount's targets: paths under it as given, or warehouse keys (``training/ct/<id>/...``) in the
    mount the command runs in, else in the one mount that has them.

    The mount table says at once whether a path is under a mount, and each mount's daemon must answer
    (within seconds) before anything under it is looked at.
    """
    mounts = mounted_nccidfs()
    here = _mount_of(outside_mounts(os.getcwd()), mounts)
    statuses: dict[Path, dict[str, Any]] = {}

    def answering(mountpoint: Path) -> dict[str, Any]:
        if mountpoint not in statuses:
            statuses[mountpoint] = mount_status(mountpoint)
        return statuses[mountpoint]

    targets: dict[Path, list[Path]] = {}
    for argument in arguments:
        path = outside_mounts(argument)
        mount = _mount_of(path, mounts)
        if mount is not None:
            answering(mount)
            if os.path.lexists(path):
                targets.setdefault(mount, []).append(path)
                continue
        elif os.path.isabs(argument) or os.path.lexists(path):
            raise ConfigError(f"{argument} is not under an nccidfs mount")
        if here is None:
            found = _holding(mounts, argument, statuses)
        else:
            prefix = str(answering(here)["prefix"])
            inside = here / argument[len(prefix):].strip("/")
            found = [(here, inside)] if argument.startswith(prefix) and os.path.lexists(inside) else []
        if len(found) > 1:
            raise ConfigError(f"{argument} is in more than one mount ({', '.join(str(m) for m, _ in found)}); "
                              "give a path, or run the command inside the mount to warm")
        if not found:
            raise ConfigError(f"{argument}: no such path, nor a key under a mounted prefix")
        targets.setdefault(found[0][0], []).append(found[0][1])
    return targets


def prefetch(arguments: list[str], jobs: int, force: bool) -> tuple[int, int]:
    """Read every file under the targets through the mount, in parallel, so the daemon caches them.

    Returns (files, bytes). Refuses, unless ``force``, more than a mount's cache can hold. Ctrl-C stops
    the workers after their current chunk.
    """
    files = []
    for mountpoint, targets in resolve_prefetch_targets(arguments).items():
        found = list(_files(targets))
        wanted, bound = sum(size for _, size in found), int(mount_status(mountpoint)["cache"]["bound_bytes"])
        if wanted > bound and not force:
            raise ConfigError(f"{format_size(wanted)} requested but the cache of {mountpoint} holds "
                              f"{format_size(bound)}; use --force to read anyway")
        files += found
    total = sum(size for _, size in files)
    stop = threading.Event()
    with _SizeBar(total=total, desc=f"0/{len(files)} files: ", dynamic_ncols=True,
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
                        progress.advance(len(chunk))

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
        progress.finish()
        return len(files), progress.n
