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

from nccidfs.dicom import XATTR_PREFIX
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from nccidfs.namespace import Entry

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

LOOP_ENDED_BY_SIGNAL = 8
# The daemon answers lookups from its listing cache in microseconds, so the kernel need not trust its own
# copy for long: short timeouts let a refreshed listing (new size, deleted or new file) show at once.
KERNEL_ATTR_TIMEOUT = 5.0
KERNEL_NEGATIVE_TIMEOUT = 1.0
FILE_MODE = stat.S_IFREG | 0o444
DIR_MODE = stat.S_IFDIR | 0o555
LINK_MODE = stat.S_IFLNK | 0o777


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
        elif entry.link is not None:
            attrs.update(st_mode=LINK_MODE, st_nlink=1, st_size=len(entry.link.encode()))
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
        return [(name, attrs, 0) for name, attrs in self.readdir_attrs(path)]

    @_errors_to_errno
    def readdir_attrs(self, path: str) -> list[tuple[str, dict[str, Any]]]:
        """Every name with its full attributes, so the kernel needs no lookup per entry (readdirplus)."""
        dot = self._stat(Entry(".", True, mtime=0.0))
        return [(".", dot), ("..", dot)] + [(entry.name, self._stat(entry)) for entry in self._fs.readdir(path)]

    @_errors_to_errno
    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        # Only user.dicom.* exists: answer the kernel's own probes (security.*, system.*) without work.
        if not name.startswith(XATTR_PREFIX):
            raise mfusepy.FuseOSError(errno.ENODATA)
        value = self._fs.xattrs(path).get(name)
        if value is None:
            raise mfusepy.FuseOSError(errno.ENODATA)
        return value.encode()

    @_errors_to_errno
    def listxattr(self, path: str) -> list[str]:
        return list(self._fs.xattrs(path))

    @_errors_to_errno
    def readlink(self, path: str) -> str:
        return self._fs.readlink(path)

    @_errors_to_errno
    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise mfusepy.FuseOSError(errno.EROFS)
        opened = self._fs.open(path)
        fi.fh = opened.handle
        fi.keep_cache = int(opened.keep_cache)
        fi.direct_io = int(opened.direct_io)
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


class _ReaddirPlusFUSE(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy 3.1 passes no attributes to libfuse3's filler; this passes them (FUSE_FILL_DIR_PLUS).

    With them, ``ls -l`` of a directory costs one READDIRPLUS round per page and no LOOKUP per entry.
    Offsets must be nonzero: libfuse 3.14 drops the attributes in its offset-less mode.
    """

    READDIR_PLUS = 1  # FUSE_READDIR_PLUS in the flags libfuse passes to readdir
    FILL_DIR_PLUS = 2

    def readdir_fuse_3(self, path: bytes, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        try:
            items = self.operations.readdir_attrs(path.decode(self.encoding, self.errors))
        except mfusepy.FuseOSError as error:
            return -int(error.errno)
        # Only when the kernel asked for READDIRPLUS (it adapts: ls -l yes, find -type f mostly not): every
        # entry returned with attributes becomes a kernel inode and a libfuse node, memory a walk then keeps.
        fill = self.FILL_DIR_PLUS if flags & self.READDIR_PLUS else 0
        for index in range(offset, len(items)):
            name, attrs = items[index]
            st = mfusepy.c_stat()
            mfusepy.set_st_attrs(st, attrs, use_ns=True)
            if filler(buf, name.encode(self.encoding, self.errors), st, index + 1, fill) != 0:
                break
        return 0


def run_mount(operations: FuseOperations, mountpoint: str, allow_other: bool, ttl: float,
              readdirplus: bool = False, debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM unmount cleanly)."""
    if libfuse_version() != 3:
        log.warning("libfuse %d loaded; libfuse3 gives larger reads (install fuse3)", libfuse_version())
    options: dict[str, Any] = {
        "foreground": True, "ro": True, "fsname": "nccidfs", "subtype": "nccidfs",
        "entry_timeout": min(ttl, KERNEL_ATTR_TIMEOUT), "attr_timeout": min(ttl, KERNEL_ATTR_TIMEOUT),
        "negative_timeout": min(ttl, KERNEL_NEGATIVE_TIMEOUT),
        "default_permissions": True, "debug": debug,
    }
    if allow_other:
        options["allow_other"] = True
    try:
        # Off by default: measured on a walk of 1.06 million files, attributes with every entry cost the
        # daemon about 120 MiB of libfuse node memory (254 against 136 MiB), for a small gain on ls -l.
        fuse_class = _ReaddirPlusFUSE if readdirplus and libfuse_version() == 3 else mfusepy.FUSE
        fuse_class(operations, mountpoint, raw_fi=True, **options)
    except RuntimeError as error:
        # libfuse >= 3.12 reports a loop ended by SIGINT/SIGTERM/SIGHUP as error 8 after unmounting.
        if str(error) != str(LOOP_ENDED_BY_SIGNAL) or os.path.ismount(mountpoint):
            raise
        log.info("stopped by a signal")
