"""The cache directory as a place to write: checked safe, marked as nccidfs's own, and held by one daemon.

A daemon often runs as root next to other users' files, so the directory must be one that nobody else
can plant files or links in: owned by us, writable by nobody else, below no directory where another
user could swap it out. nccidfs never changes the mode of a directory it did not create; a directory
that fails a check is refused with one line saying what to do.

The marker file says "this is an nccidfs cache" (and its format): ``cache clear`` deletes only inside a
directory that carries it, so a mistyped ``--cache-dir`` can never wipe a project. The lock file is held
with ``flock`` for the daemon's lifetime: a second daemon on the same directory is refused, naming the
mount that holds it, and ``cache clear`` decides by the lock, never by whether a socket answers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from pathlib import Path

from nccidfs.config import CONTROL_SOCKET
from nccidfs.errors import ConfigError
from nccidfs.index import INDEX_FILES

MARKER = "CACHEDIR.TAG"
LOCK = "lock"
OBJECTS = "objects"
# Cohort manifests that users put here (``nccidfs cohort`` publishes them), and their packed forms.
COHORTS_FOLDER = "cohorts"
PACKED_FOLDER = "cohorts-packed"
FORMAT = 2
MARKER_SIGN = "# nccidfs cache"
# The standard tag (bford.info/cachedir) that backup tools honour, followed by our own format line.
MARKER_TEXT = f"Signature: 8a477f597d28d172789f06886806bc55\n{MARKER_SIGN}, format {FORMAT}\n"
MARKER_PEEK = 4096  # bytes of a marker read to recognise it
HOLDER_MAX = 4096  # bytes of a lock file read to name its holder
# Created so, and refused when others may write them: a daemon often runs as root beside other users.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# What a directory may hold before nccidfs marks it: what an earlier version's cache held before it
# carried the marker, and cohort manifests put in a new cache directory by hand before its first mount.
UNMARKED_NAMES = frozenset({OBJECTS, *INDEX_FILES, CONTROL_SOCKET, COHORTS_FOLDER, PACKED_FOLDER})


def _fail(path: Path, why: str) -> ConfigError:
    return ConfigError(f"cache dir {path}: {why}")


def _check_ancestors(path: Path) -> None:
    """No directory above the cache may let another user rename or replace it (a sticky bit is fine)."""
    for parent in path.parents:
        info = os.lstat(parent)
        if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
            raise _fail(path, f"{parent} is writable by every user; choose a cache dir elsewhere")


def _check_owned_private(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISDIR(info.st_mode):
        raise _fail(path, "exists and is not a directory")
    if info.st_uid != os.geteuid():
        raise _fail(path, f"is owned by uid {info.st_uid}, not by this user; choose a directory of your own")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _fail(path, "is writable by other users; use a private directory (nccidfs creates it 0700 "
                          "if it does not exist) rather than a shared one such as /tmp")


def prepare(path: Path) -> Path:
    """Create or check the cache directory and mark it; returns its resolved path."""
    path = Path(os.path.abspath(path))
    try:
        with contextlib.suppress(FileExistsError):
            os.makedirs(path.parent, exist_ok=True)
            os.mkdir(path, PRIVATE_DIR_MODE)
        path = Path(os.path.realpath(path))
        _check_ancestors(path)
        _check_owned_private(path, os.lstat(path))
        _mark(path)
    except ConfigError:
        raise
    except OSError as error:
        raise _fail(path, _explain(error)) from None
    return path


def _explain(error: OSError) -> str:
    if error.errno in (errno.EACCES, errno.EPERM):
        return "not writable by this user"
    if error.errno == errno.EROFS:
        return "on a read-only filesystem"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "the disk is full"
    if error.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    return error.strerror or str(error)


def _mark(path: Path) -> None:
    """Write the marker into a new directory (empty, an earlier version's cache, or holding cohort
    manifests only); refuse any other directory."""
    marker = path / MARKER
    if os.path.lexists(marker):
        if not is_cache_dir(path):
            raise _fail(path, f"{MARKER} is not an nccidfs marker; choose another directory")
        return
    foreign = sorted(set(os.listdir(path)) - UNMARKED_NAMES)
    if foreign:
        raise _fail(path, f"is not empty and is not an nccidfs cache (it holds {foreign[0]!r}); "
                          "choose an empty or new directory")
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        handle.write(MARKER_TEXT)


def is_cache_dir(path: Path) -> bool:
    """Whether ``path`` carries an nccidfs marker (the only kind of directory nccidfs deletes inside)."""
    try:
        fd = os.open(path / MARKER, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd) as handle:
        return MARKER_SIGN in handle.read(MARKER_PEEK)


class CacheLock:
    """An exclusive ``flock`` on ``<cache dir>/lock`` for as long as the holder lives (or until release)."""

    def __init__(self, path: Path, holder: dict[str, object]) -> None:
        self.path = path
        lock_path = path / LOCK
        try:
            self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE_MODE)
        except OSError as error:
            raise _fail(path, _explain(error)) from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = describe_holder(self._fd)
            os.close(self._fd)
            raise _fail(path, f"in use by {who}; give each mount its own --cache-dir") from None
        self.record(holder)

    def record(self, holder: dict[str, object]) -> None:
        """Say who holds the lock (a forked child records its own pid)."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def describe_holder(fd: int) -> str:
    """Who holds a cache lock, from what the holder wrote into the lock file."""
    try:
        holder = json.loads(os.pread(fd, HOLDER_MAX, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if holder.get("mountpoint"):
        return f"the nccidfs mount at {holder['mountpoint']} (pid {holder.get('pid', '?')})"
    return f"another nccidfs process (pid {holder.get('pid', '?')})"
