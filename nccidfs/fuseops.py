"""The only module that imports mfusepy: a thin, state-free adapter from FUSE calls to :mod:`nccidfs.fs`.

libfuse3 is forced (``FUSE_LIBRARY_NAME=fuse3``) because only it sends 1 MiB reads; the loop stays
multi-threaded so a reader waiting on S3 never blocks the others. Write operations never reach us: the
mount is ``ro`` and the kernel answers them with EROFS.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from nccidfs import deadline
from nccidfs.config import MountConfig
from nccidfs.dicom import XATTR_PREFIX
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from nccidfs.objects import Entry

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

LOOP_ENDED_BY_SIGNAL = 8
KERNEL_NEGATIVE_TIMEOUT = 1.0
# FUSE worker threads, and as many kept idle: each read waiting on S3 holds one, so libfuse's default of 10
# would cap a data loader's readers at 10. (libfuse 3.14 logs "Ignoring invalid max threads value
# 4294967295" on every mount when max_idle_threads is left unset.)
MAX_THREADS = 64
# Reads the kernel sends without waiting for earlier ones (read-ahead is such a read); its default of 12
# would queue the 13th reader of a cold file in the kernel behind the others' GETs.
MAX_BACKGROUND = 64
LINK_MODE = stat.S_IFLNK | 0o777


def libfuse_version() -> int:
    return int(mfusepy.fuse_version_major)


def _errors_to_errno(method: F) -> F:
    """Bound the call by the mount's timeout as a whole, and turn NccidfsError (and OSError) into
    FuseOSError, logging only what is unexpected."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with deadline.bounded(args[0]._call_timeout):
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


class KernelInvalidator:
    """Tells the kernel to forget the attributes and cached pages of a path (``fuse_invalidate_path``).

    Called when the daemon learns that an object it served was replaced or its cached bytes were bad.
    The notification is sent from a thread of its own: sent from inside a FUSE call on the same inode it
    could wait on a page lock that the call itself holds.
    """

    def __init__(self) -> None:
        self._fuse: ctypes.c_void_p | None = None
        self._paths: queue.SimpleQueue[tuple[str, threading.Event]] = queue.SimpleQueue()

    def start(self) -> None:
        """From FUSE's init, where the context names the session."""
        self._fuse = ctypes.c_void_p(mfusepy._libfuse.fuse_get_context().contents.fuse)
        threading.Thread(target=self._send, name="invalidate", daemon=True).start()

    def __call__(self, path: str, wait: float) -> None:
        done = threading.Event()
        self._paths.put((path, done))
        if wait:
            done.wait(wait)

    def _send(self) -> None:
        invalidate = mfusepy._libfuse.fuse_invalidate_path
        invalidate.argtypes = (ctypes.c_void_p, ctypes.c_char_p)
        while True:
            path, done = self._paths.get()
            result = invalidate(self._fuse, path.encode("utf-8", "surrogateescape"))
            done.set()
            # -ENOENT: the kernel holds nothing for that path, which is what we wanted.
            log.debug("invalidated %s in the kernel (%d)", path, result)


class FuseOperations(mfusepy.Operations):  # type: ignore[misc]
    """Operations for mfusepy. Attribute names share a namespace with FUSE op names: keep them private."""

    use_ns = True

    def __init__(self, filesystem: FileSystem, on_ready: Callable[[], None] | None = None,
                 call_timeout: float = 30.0, uid: int | None = None, gid: int | None = None,
                 file_mode: int = 0o444, dir_mode: int = 0o555) -> None:
        self._fs = filesystem
        self._on_ready = on_ready
        self._call_timeout = call_timeout
        self._invalidator = KernelInvalidator()
        self._uid = os.getuid() if uid is None else uid
        self._gid = os.getgid() if gid is None else gid
        self._file_mode = stat.S_IFREG | file_mode
        self._dir_mode = stat.S_IFDIR | dir_mode

    def _stat(self, entry: Entry) -> dict[str, Any]:
        mtime_ns = int(entry.mtime * 1e9)
        attrs: dict[str, Any] = {
            "st_uid": self._uid, "st_gid": self._gid,
            "st_atime": mtime_ns, "st_mtime": mtime_ns, "st_ctime": mtime_ns,
        }
        if entry.is_dir:
            attrs.update(st_mode=self._mode(entry), st_nlink=2, st_size=0)
        elif entry.link is not None:
            attrs.update(st_mode=self._mode(entry), st_nlink=1, st_size=len(entry.link.encode()))
        else:
            attrs.update(st_mode=self._mode(entry), st_nlink=1, st_size=entry.size,
                         st_blocks=-(-entry.size // 512))
        return attrs

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None:
            conn.max_background = MAX_BACKGROUND
            conn.congestion_threshold = MAX_BACKGROUND * 3 // 4
        log.info("mounted (libfuse %d)", libfuse_version())
        self._invalidator.start()
        self._fs.set_invalidator(self._invalidator)
        if self._on_ready is not None:
            self._on_ready()

    @_errors_to_errno
    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        return self._stat(self._fs.lookup(path))

    @_errors_to_errno
    def readdir(self, path: str, fh: int) -> list[tuple[str, int, int]]:
        """Names and their file types only: a plain readdir passes nothing else to the kernel, so full
        attributes are not built for every entry of a walk."""
        names = [(".", self._dir_mode, 0), ("..", self._dir_mode, 0)]
        return names + [(entry.name, self._mode(entry), 0) for entry in self._fs.readdir(path)]

    def _mode(self, entry: Entry) -> int:
        if entry.is_dir:
            return self._dir_mode
        return LINK_MODE if entry.link is not None else self._file_mode

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


def run_mount(operations: FuseOperations, config: MountConfig, debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM unmount cleanly)."""
    mountpoint, ttl = str(config.mountpoint), config.listing_ttl
    if libfuse_version() != 3:
        log.warning("libfuse %d loaded; libfuse3 gives larger reads (install fuse3)", libfuse_version())
    options: dict[str, Any] = {
        "foreground": True, "ro": True, "fsname": "nccidfs", "subtype": "nccidfs",
        "entry_timeout": min(ttl, config.attr_timeout), "attr_timeout": min(ttl, config.attr_timeout),
        "negative_timeout": min(ttl, KERNEL_NEGATIVE_TIMEOUT),
        "default_permissions": True, "debug": debug,
        "allow_other": config.allow_other, "allow_root": config.allow_root,
    }
    if libfuse_version() == 3:  # libfuse 2 knows neither option
        options.update(max_threads=MAX_THREADS, max_idle_threads=MAX_THREADS)
    try:
        # Off by default: measured on a walk of 1.06 million files, attributes with every entry cost the
        # daemon about 120 MiB of libfuse node memory (254 against 136 MiB), for a small gain on ls -l.
        fuse_class = _ReaddirPlusFUSE if config.readdirplus and libfuse_version() == 3 else mfusepy.FUSE
        fuse_class(operations, mountpoint, raw_fi=True, **options)
    except RuntimeError as error:
        # libfuse >= 3.12 reports a loop ended by SIGINT/SIGTERM/SIGHUP as error 8 after unmounting.
        if str(error) != str(LOOP_ENDED_BY_SIGNAL) or os.path.ismount(mountpoint):
            raise
        log.info("stopped by a signal")
