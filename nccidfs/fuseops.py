"""The only module that imports mfusepy: a thin adapter from FUSE calls to :mod:`nccidfs.fs`, whose only
state is the last few listings it handed out page by page.

libfuse3 is required (``FUSE_LIBRARY_NAME=fuse3``): only it sends 1 MiB reads; the loop stays
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
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from nccidfs import deadline
from nccidfs.config import MountConfig
from nccidfs.dicom import XATTR_PREFIX
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from nccidfs.metrics import FILESYSTEM
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
# How long a thread may hold the interpreter lock while another waits for it (Python's default is 5 ms).
# Background listings of a walk parse pages for many milliseconds; a short interval lets a user's stat
# through between their steps.
GIL_SWITCH_INTERVAL = 0.001


def libfuse_version() -> int:
    return int(mfusepy.fuse_version_major)


def _errors_to_errno(method: F) -> F:
    """Bound the call by the mount's timeout as a whole, and turn NccidfsError (and OSError) into
    FuseOSError, logging only what is unexpected."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, code = time.monotonic(), 0
        try:
            with deadline.bounded(args[0]._call_timeout):
                return method(*args, **kwargs)
        except mfusepy.FuseOSError as error:
            code = error.errno
            raise
        except NccidfsError as error:
            code = to_errno(error)
            if code != errno.ENOENT:
                log.warning("%s%r: %s", method.__name__, args[1:2], error)
            raise mfusepy.FuseOSError(code) from None
        except OSError as error:
            log.warning("%s%r: %s", method.__name__, args[1:2], error)
            code = to_errno(error)
            raise mfusepy.FuseOSError(code) from None
        finally:
            FILESYSTEM.record(method.__name__, time.monotonic() - started, code)

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

    def fill_stat(self, st: Any, entry: Entry) -> None:
        """Set the attributes of ``entry`` on a zeroed ``struct stat`` (filled in place: a dict of
        attributes per call cost a walk more than the rest of the call)."""
        st.st_uid, st.st_gid, st.st_mode = self._uid, self._gid, self.mode_of(entry)
        if entry.is_dir:
            st.st_nlink = 2
        elif entry.link is not None:
            st.st_nlink, st.st_size = 1, len(entry.link.encode())
        else:
            st.st_nlink, st.st_size, st.st_blocks = 1, entry.size, -(-entry.size // 512)
        seconds, nanoseconds = divmod(int(entry.mtime * 1e9), 10**9)
        for spec in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            spec.tv_sec, spec.tv_nsec = seconds, nanoseconds

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
    def getattr(self, path: str, fh: Any = None) -> Entry:
        """The entry itself: :class:`_Fuse` fills the kernel's struct from it with :meth:`fill_stat`."""
        return self._fs.lookup(path)

    @_errors_to_errno
    def readdir(self, path: str, fh: int) -> list[Entry]:
        return self._fs.readdir(path)

    def mode_of(self, entry: Entry) -> int:
        if entry.is_dir:
            return self._dir_mode
        return LINK_MODE if entry.link is not None else self._file_mode

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


_thread_state_kept = threading.local()


class _Fuse(mfusepy.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE with three changes, each measured on a walk of 106,000 directories.

    - Each libfuse worker thread keeps its Python thread state. ctypes otherwise creates and destroys
      one around every call, with its thread-local data.
    - ``getattr`` fills the kernel's ``struct stat`` from the entry directly, not through a dict.
    - A listing passes each sub-directory with its attributes (readdirplus), so a walk needs no lookup
      of the directory before entering it; with ``attributes_for_files`` (``--readdirplus``) files get
      theirs too. Files otherwise go without: each entry with attributes becomes a kernel inode and a
      libfuse node that a walk of millions of files would keep.

    libfuse 3.14 drops attributes given in its offset-less mode, so a listing with sub-directories is
    given with offsets, and each page the kernel asks for calls back here; :data:`READDIR_KEPT` listings
    are kept so the next page is served from the same snapshot. A listing of files alone keeps the
    offset-less mode, where libfuse serves every page from one call.
    """

    READDIR_PLUS = 1  # FUSE_READDIR_PLUS in the flags libfuse passes to readdir
    FILL_DIR_PLUS = 2
    READDIR_KEPT = 16

    def __init__(self, operations: FuseOperations, *args: Any, attributes_for_files: bool = False,
                 **kwargs: Any) -> None:
        self._attributes_for_files = attributes_for_files
        self._listings: OrderedDict[bytes, list[tuple[bytes, Entry]]] = OrderedDict()
        self._listings_lock = threading.Lock()
        super().__init__(operations, *args, **kwargs)

    def _wrapper(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        if not getattr(_thread_state_kept, "done", False):
            ctypes.pythonapi.PyGILState_Ensure()  # never released: the thread keeps its state until it ends
            _thread_state_kept.done = True
        return super()._wrapper(func, *args, **kwargs)

    def fgetattr(self, path: bytes, buf: Any, fip: Any) -> int:
        ctypes.memset(buf, 0, ctypes.sizeof(mfusepy.c_stat))
        entry = self.operations.getattr(path.decode(self.encoding, self.errors))
        self.operations.fill_stat(buf.contents, entry)
        return 0

    def readdir_fuse_3(self, path: bytes, buf: Any, filler: Any, offset: int, fip: Any, flags: int) -> int:
        with self._listings_lock:
            rows = self._listings.get(path) if offset else None
        if rows is None:
            entries = self.operations.readdir(path.decode(self.encoding, self.errors), 0)
            rows = [(b".", _DOT), (b"..", _DOT)] + [
                (entry.name.encode(self.encoding, self.errors), entry) for entry in entries]
        st = mfusepy.c_stat()
        files_too = self._attributes_for_files
        if not (files_too or any(entry.is_dir for _, entry in rows[2:])):
            for name, entry in rows:
                st.st_mode = self.operations.mode_of(entry)
                if filler(buf, name, st, 0, 0) != 0:
                    break
            return 0
        with self._listings_lock:
            self._listings[path] = rows
            self._listings.move_to_end(path)
            while len(self._listings) > self.READDIR_KEPT:
                self._listings.popitem(last=False)
        plus = flags & self.READDIR_PLUS  # the kernel asks for attributes on a listing's first page only
        for index in range(offset, len(rows)):
            name, entry = rows[index]
            fill = 0
            if plus and index >= 2 and (entry.is_dir or files_too):
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                self.operations.fill_stat(st, entry)
                fill = self.FILL_DIR_PLUS
            else:
                st.st_mode = self.operations.mode_of(entry)
            if filler(buf, name, st, index + 1, fill) != 0:
                break
        return 0


_DOT = Entry(".", True)


def run_mount(operations: FuseOperations, config: MountConfig, debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM unmount cleanly)."""
    mountpoint, ttl = str(config.mountpoint), config.listing_ttl
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if libfuse_version() != 3:
        raise NccidfsError(f"libfuse {libfuse_version()} was loaded; nccidfs needs libfuse 3 (install fuse3)")
    options: dict[str, Any] = {
        "foreground": True, "ro": True, "fsname": "nccidfs", "subtype": "nccidfs",
        "entry_timeout": min(ttl, config.attr_timeout), "attr_timeout": min(ttl, config.attr_timeout),
        "negative_timeout": min(ttl, KERNEL_NEGATIVE_TIMEOUT),
        "default_permissions": True, "debug": debug,
        "allow_other": config.allow_other, "allow_root": config.allow_root,
        "max_threads": MAX_THREADS, "max_idle_threads": MAX_THREADS,
    }
    try:
        # Files' attributes in listings are off by default: measured on a walk of 1.06 million files, they
        # cost the daemon about 120 MiB of libfuse node memory (254 against 136 MiB), for a small gain on ls -l.
        _Fuse(operations, mountpoint, raw_fi=True, attributes_for_files=config.readdirplus, **options)
    except RuntimeError as error:
        # libfuse >= 3.12 reports a loop ended by SIGINT/SIGTERM/SIGHUP as error 8 after unmounting.
        if str(error) != str(LOOP_ENDED_BY_SIGNAL) or os.path.ismount(mountpoint):
            raise
        log.info("stopped by a signal")
