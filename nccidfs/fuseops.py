"""The only module that imports mfusepy: a thin, state-free adapter from FUSE calls to :mod:`nccidfs.fs`.

libfuse3 is forced (``FUSE_LIBRARY_NAME=fuse3``) because only it sends 1 MiB reads; the loop stays
multi-threaded so a reader waiting on S3 never blocks the others. Write operations never reach us: the
mount is ``ro`` and the kernel answers them with EROFS.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable
from typing import Any, TypeVar

from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from nccidfs.namespace import Entry

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

LOOP_ENDED_BY_SIGNAL = 8
FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555


def libfuse_version() -> int:
    return int(mfusepy.fuse_version_major)


def _errors_to_errno(method: F) -> F:
    """Turn NccidfsError (and OSError) into FuseOSError, logging only what is unexpected."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except mfusepy.FuseOSError:
            raise
        except NccidfsError as error:
            code = to_errno(error)
            if code != errno.ENOENT:
                log.warning("%s%r: %s", method.__name__, args[1:2], error)
            raise mfusepy.FuseOSError(code) from None
        except OSError as error:
            log.warning("%s%r: %s", method.__name__, args[1:2], error)
            raise mfusepy.FuseOSError(to_errno(error)) from None

    return wrapper  # type: ignore[return-value]


class FuseOperations(mfusepy.Operations):  # type: ignore[misc]
    """Operations for mfusepy. Attribute names share a namespace with FUSE op names: keep them private."""

    use_ns = True

    def __init__(self, filesystem: FileSystem, on_ready: Callable[[], None] | None = None) -> None:
        self._fs = filesystem
        self._on_ready = on_ready
        self._uid = os.getuid()
        self._gid = os.getgid()

    def _stat(self, entry: Entry) -> dict[str, Any]:
        mtime_ns = int(entry.mtime * 1e9)
        attrs: dict[str, Any] = {
            "st_uid": self._uid, "st_gid": self._gid,
            "st_atime": mtime_ns, "st_mtime": mtime_ns, "st_ctime": mtime_ns,
        }
        if entry.is_dir:
            attrs.update(st_mode=DIR_MODE, st_nlink=2, st_size=0)
        else:
            attrs.update(st_mode=FILE_MODE, st_nlink=1, st_size=entry.size, st_blocks=-(-entry.size // 512))
        return attrs

    def init(self, path: str) -> None:
        log.info("mounted (libfuse %d)", libfuse_version())
        if self._on_ready is not None:
            self._on_ready()

    @_errors_to_errno
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self._stat(self._fs.lookup(path))

    @_errors_to_errno
    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, Any], int]]:
        entries = [(".", DIR_MODE), ("..", DIR_MODE)]
        listing = [(entry.name, DIR_MODE if entry.is_dir else FILE_MODE) for entry in self._fs.readdir(path)]
        return [(name, {"st_mode": mode}, 0) for name, mode in entries + listing]

    @_errors_to_errno
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        handle, keep_cache = self._fs.open(path)
        fi.fh = handle
        fi.keep_cache = 1 if keep_cache else 0
        return 0

    @_errors_to_errno
    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        return self._fs.read(fi.fh, offset, size)

    @_errors_to_errno
    def release(self, path: str, fi: Any) -> int:
        self._fs.release(fi.fh)
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        cache = self._fs.cache
        block = 4096
        return {"f_bsize": block, "f_frsize": block, "f_blocks": cache.size_bytes // block,
                "f_bfree": 0, "f_bavail": 0, "f_namemax": 255}


def run_mount(operations: FuseOperations, mountpoint: str, allow_other: bool, ttl: float,
              debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM unmount cleanly)."""
    if libfuse_version() != 3:
        log.warning("libfuse %d loaded; libfuse3 gives larger reads (install fuse3)", libfuse_version())
    options: dict[str, Any] = {
        "foreground": True, "ro": True, "fsname": "nccidfs", "subtype": "nccidfs",
        "entry_timeout": ttl, "attr_timeout": ttl, "negative_timeout": min(ttl, 60.0),
        "default_permissions": True, "debug": debug,
    }
    if allow_other:
        options["allow_other"] = True
    try:
        mfusepy.FUSE(operations, mountpoint, raw_fi=True, **options)
    except RuntimeError as error:
        # libfuse >= 3.12 reports a loop ended by SIGINT/SIGTERM/SIGHUP as error 8 after unmounting.
        if str(error) != str(LOOP_ENDED_BY_SIGNAL) or os.path.ismount(mountpoint):
            raise
        log.info("stopped by a signal")
