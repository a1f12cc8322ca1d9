"""The only module that imports mfusepy: the FUSE side of a mount, over libfuse 3's low-level API.

Two layers. :class:`FuseOperations` answers by path: it calls the core (:mod:`nccidfs.fs`) within the
mount's timeout and turns its errors into errnos. :class:`Kernel` is the session: it hands libfuse a
``struct fuse_lowlevel_ops`` built with ctypes, keeps the inode numbers the kernel holds
(:mod:`nccidfs.inodes`), the files open and the listings being read page by page, answers each request
with a ``fuse_reply_*`` call, and sends the kernel what the daemon learns it holds wrongly. mfusepy
only loads libfuse and lends its ctypes structures and its private library handle; it is pinned to the
release they were read from, which tests/unit/test_fuseops.py checks.

libfuse3 is required (``FUSE_LIBRARY_NAME=fuse3``): only it sends 1 MiB reads; the loop is
multi-threaded so a reader waiting on S3 never blocks the others. Write operations never reach us: the
mount is ``ro``, so the kernel answers them with EROFS, and the table leaves them out (ENOSYS).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import logging
import os
import queue
import signal
import stat
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from nccidfs import deadline
from nccidfs.config import DEFAULT_ATTR_TIMEOUT, MountConfig
from nccidfs.dicom import XATTR_PREFIX
from nccidfs.errors import NccidfsError, to_errno
from nccidfs.fs import FileSystem
from nccidfs.inodes import Inodes
from nccidfs.metrics import FILESYSTEM
from nccidfs.objects import Chunk, Entry

os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
import mfusepy  # noqa: E402

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

# How long the kernel may remember that a name does not exist (at most the listing TTL): a key put
# since then shows within a second of its listing being refreshed.
KERNEL_NEGATIVE_TIMEOUT = 1.0
# FUSE worker threads, and as many kept idle: each read waiting on S3 holds one, so libfuse's default of 10
# would cap a data loader's readers at 10. (libfuse 3.14 logs "Ignoring invalid max threads value
# 4294967295" on every mount when max_idle_threads is left unset.)
MAX_THREADS = 64
# Reads the kernel sends without waiting for earlier ones (read-ahead is such a read); its default of 12
# would queue the 13th reader of a cold file in the kernel behind the others' GETs.
MAX_BACKGROUND = 64
# Past this many of them the kernel reports the mount congested to writeback: libfuse's own ratio, 3/4.
CONGESTION_THRESHOLD = MAX_BACKGROUND * 3 // 4
# What statfs reports: the block its sizes count in, and the longest name (Linux's NAME_MAX).
STATFS_BLOCK = 4096
NAME_MAX = 255
# st_blocks counts 512-byte units whatever the block size (POSIX).
STAT_BLOCK_UNIT = 512
LINK_MODE = stat.S_IFLNK | 0o777
# How long a thread may hold the interpreter lock while another waits for it (Python's default is 5 ms).
# Background listings of a walk parse pages for many milliseconds; a short interval lets a user's stat
# through between their steps.
GIL_SWITCH_INTERVAL = 0.001


def libfuse_version() -> int:
    return int(mfusepy.fuse_version_major)


def _errors_to_errno(method: F) -> F:
    """Bound the call by the mount's timeout as a whole, turn NccidfsError (and OSError) into
    FuseOSError, logging only what is unexpected, and record the call's time and errno in the metrics."""

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


class FuseOperations:
    """The answers by path that :class:`Kernel` asks for: each call is bounded by the mount's timeout,
    and an error becomes a :class:`mfusepy.FuseOSError` with the errno of :func:`~nccidfs.errors.to_errno`."""

    def __init__(self, filesystem: FileSystem, on_ready: Callable[[], None] | None = None,
                 call_timeout: float = 30.0, uid: int | None = None, gid: int | None = None,
                 file_mode: int = 0o444, dir_mode: int = 0o555) -> None:
        self._fs = filesystem
        self._on_ready = on_ready
        self._call_timeout = call_timeout
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
            st.st_nlink, st.st_size, st.st_blocks = 1, entry.size, -(-entry.size // STAT_BLOCK_UNIT)
        seconds, nanoseconds = divmod(int(entry.mtime * 1e9), 10**9)
        for spec in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            spec.tv_sec, spec.tv_nsec = seconds, nanoseconds

    def init(self, conn: Any, kernel: Kernel) -> None:
        """The mount is up: size the kernel's queue, hand the core the kernel's invalidations, start the
        daemon's side services."""
        conn.max_background = MAX_BACKGROUND
        conn.congestion_threshold = CONGESTION_THRESHOLD
        log.info("mounted (libfuse %d)", libfuse_version())
        self._fs.set_kernel(kernel.invalidate_path, kernel.invalidate_listing, kernel.forget_name, kernel.counts)
        if self._on_ready is not None:
            self._on_ready()

    @_errors_to_errno
    def getattr(self, path: str, fh: Any = None) -> tuple[Entry, float]:
        """The entry itself (:class:`Kernel` fills the kernel's struct from it with :meth:`fill_stat`), and
        for how many seconds the daemon would answer the same (:meth:`FileSystem.lookup_fresh`)."""
        return self._fs.lookup_fresh(path)

    @_errors_to_errno
    def readdir(self, path: str, fh: int) -> tuple[list[Entry], float]:
        return self._fs.readdir_fresh(path)

    def listing_fresh(self, path: str) -> float | None:
        """How long a directory's own listing held in memory stays fresh (None: not held, or not a
        directory any more). Not bounded nor counted as a call: it only reads memory."""
        try:
            return self._fs.listing_fresh(path)
        except NccidfsError:
            return None

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
    def read(self, path: str, size: int, offset: int, fi: Any) -> Chunk:
        return self._fs.read(fi.fh, offset, size)

    @_errors_to_errno
    def release(self, path: str, fi: Any) -> int:
        self._fs.release(fi.fh)
        return 0

    def statfs(self, path: str) -> dict[str, Any]:
        """The cache's bound as the size, and nothing free: the mount is read-only."""
        blocks = self._fs.cache.size_bytes // STATFS_BLOCK
        return {"f_bsize": STATFS_BLOCK, "f_frsize": STATFS_BLOCK, "f_blocks": blocks, "f_bfree": 0, "f_bavail": 0,
                "f_namemax": NAME_MAX}


# -- the low-level session -------------------------------------------------------------------------------
# nccidfs speaks libfuse's low-level API: the high-level one (fuse_operations) cannot answer OPENDIR with
# ENOSYS (libfuse 3.14 then dereferences a null directory handle on the next READDIR) and drops
# cache_readdir and keep_cache before 3.16, and its table of paths holds a node per file the kernel keeps.

_lib = mfusepy._libfuse
_req = ctypes.c_void_p
_ino = ctypes.c_uint64
_off = ctypes.c_int64
_fi = ctypes.POINTER(mfusepy.fuse_file_info)
_UNUSED = ctypes.c_void_p  # an operation left NULL: libfuse answers it with ENOSYS
FUSE_UNKNOWN_INO = 0xFFFFFFFF  # what a listing says of an entry the kernel has no number for
# Entries made for the kernel kept as templates (see Kernel._entry): a walk of files with --readdirplus
# makes one per size and time, so the set is emptied when it reaches this many.
ENTRIES_MADE_KEPT = 4096


class _EntryParam(ctypes.Structure):
    _fields_ = [("ino", _ino), ("generation", ctypes.c_uint64), ("attr", mfusepy.c_stat),
                ("attr_timeout", ctypes.c_double), ("entry_timeout", ctypes.c_double)]


class _ForgetData(ctypes.Structure):
    _fields_ = [("ino", _ino), ("nlookup", ctypes.c_uint64)]


class _Args(ctypes.Structure):
    _fields_ = [("argc", ctypes.c_int), ("argv", ctypes.POINTER(ctypes.c_char_p)), ("allocated", ctypes.c_int)]


_ATTR_OP = ctypes.CFUNCTYPE(None, _req, _ino, _fi)
_READ_OP = ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t, _off, _fi)
_OPERATIONS: list[tuple[str, Any]] = [  # struct fuse_lowlevel_ops, in its order, up to readdirplus
    ("init", ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(mfusepy.fuse_conn_info))),
    ("destroy", _UNUSED),
    ("lookup", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p)),
    ("forget", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_uint64)),
    ("getattr", _ATTR_OP), ("setattr", _UNUSED), ("readlink", ctypes.CFUNCTYPE(None, _req, _ino)),
    *((name, _UNUSED) for name in ("mknod", "mkdir", "unlink", "rmdir", "symlink", "rename", "link")),
    ("open", _ATTR_OP), ("read", _READ_OP), ("write", _UNUSED), ("flush", _UNUSED), ("release", _ATTR_OP),
    ("fsync", _UNUSED), ("opendir", _ATTR_OP), ("readdir", _READ_OP), ("releasedir", _UNUSED),
    ("fsyncdir", _UNUSED), ("statfs", ctypes.CFUNCTYPE(None, _req, _ino)), ("setxattr", _UNUSED),
    ("getxattr", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_char_p, ctypes.c_size_t)),
    ("listxattr", ctypes.CFUNCTYPE(None, _req, _ino, ctypes.c_size_t)),
    *((name, _UNUSED) for name in ("removexattr", "access", "create", "getlk", "setlk", "bmap", "ioctl",
                                   "poll", "write_buf", "retrieve_reply")),
    ("forget_multi", ctypes.CFUNCTYPE(None, _req, ctypes.c_size_t, ctypes.POINTER(_ForgetData))),
    ("flock", _UNUSED), ("fallocate", _UNUSED), ("readdirplus", _READ_OP),
]


class _LowLevelOps(ctypes.Structure):
    _fields_ = _OPERATIONS


def _declare() -> None:
    """Argument and result types of the libfuse functions used here."""
    void_p, size, char_p = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    signatures: dict[str, tuple[Any, tuple[Any, ...]]] = {
        "fuse_session_new": (void_p, (ctypes.POINTER(_Args), ctypes.POINTER(_LowLevelOps), size, void_p)),
        "fuse_session_mount": (ctypes.c_int, (void_p, char_p)),
        "fuse_session_unmount": (None, (void_p,)),
        "fuse_session_destroy": (None, (void_p,)),
        "fuse_set_signal_handlers": (ctypes.c_int, (void_p,)),
        "fuse_remove_signal_handlers": (None, (void_p,)),
        "fuse_loop_cfg_create": (void_p, ()),
        "fuse_loop_cfg_destroy": (None, (void_p,)),
        "fuse_loop_cfg_set_max_threads": (None, (void_p, ctypes.c_uint)),
        "fuse_loop_cfg_set_idle_threads": (None, (void_p, ctypes.c_uint)),
        "fuse_session_loop_mt_312": (ctypes.c_int, (void_p, void_p)),
        "fuse_reply_err": (ctypes.c_int, (_req, ctypes.c_int)),
        "fuse_reply_none": (None, (_req,)),
        "fuse_reply_entry": (ctypes.c_int, (_req, ctypes.POINTER(_EntryParam))),
        "fuse_reply_attr": (ctypes.c_int, (_req, ctypes.POINTER(mfusepy.c_stat), ctypes.c_double)),
        "fuse_reply_readlink": (ctypes.c_int, (_req, char_p)),
        "fuse_reply_open": (ctypes.c_int, (_req, _fi)),
        "fuse_reply_buf": (ctypes.c_int, (_req, void_p, size)),
        "fuse_reply_statfs": (ctypes.c_int, (_req, ctypes.POINTER(mfusepy.c_statvfs))),
        "fuse_reply_xattr": (ctypes.c_int, (_req, size)),
        "fuse_add_direntry": (size, (_req, void_p, size, char_p, ctypes.POINTER(mfusepy.c_stat), _off)),
        "fuse_add_direntry_plus": (size, (_req, void_p, size, char_p, ctypes.POINTER(_EntryParam), _off)),
        "fuse_lowlevel_notify_inval_inode": (ctypes.c_int, (void_p, _ino, _off, _off)),
        "fuse_lowlevel_notify_inval_entry": (ctypes.c_int, (void_p, _ino, char_p, size)),
        "fuse_lowlevel_notify_delete": (ctypes.c_int, (void_p, _ino, _ino, char_p, size)),
    }
    for name, (result, arguments) in signatures.items():
        function = getattr(_lib, name)
        function.restype, function.argtypes = result, arguments


_declare()
_this_thread = threading.local()  # a libfuse worker's request counts, once it has a Python thread state


def _reply_errors(handler: F) -> F:
    """Count the request and answer it, whatever happens: FuseOSError as its errno, anything else as EIO
    (logged)."""

    name = handler.__name__.lstrip("_")

    @functools.wraps(handler)
    def wrapper(self: Kernel, req: int, *args: Any) -> None:
        counts = getattr(_this_thread, "counts", None)
        if counts is None:
            counts = self._enter_thread()
        counts[name] += 1
        try:
            handler(self, req, *args)
        except mfusepy.FuseOSError as error:
            _lib.fuse_reply_err(req, error.errno)
        except Exception:
            log.exception("%s failed", handler.__name__)
            _lib.fuse_reply_err(req, errno.EIO)

    return wrapper  # type: ignore[return-value]


class Kernel:
    """The FUSE session: inode numbers for the kernel, requests turned into :class:`FuseOperations` calls,
    and what the daemon tells the kernel (forget a file's pages, a changed listing, names past the
    ceiling), sent from a thread of its own: sent from inside a request on the same inode it could wait
    on a lock that the request holds.

    OPENDIR is answered ENOSYS, so the kernel sends no OPENDIR or RELEASEDIR for the rest of the mount
    (Linux 5.1+) and keeps the listings it reads in its page cache (FOPEN_CACHE_DIR and FOPEN_KEEP_CACHE
    are its defaults then): a directory read again costs no request until the daemon says its listing
    changed. A listing passes each sub-directory with its attributes (readdirplus), so a walk needs no
    lookup of a directory before entering it; files get theirs too with ``attributes_for_files``
    (``--readdirplus``), at the cost of a kernel inode and a number here for each.
    """

    READDIR_KEPT = 16  # listings kept so that their next page is served from the same snapshot

    def __init__(self, operations: FuseOperations, config: MountConfig, attributes_for_files: bool,
                 max_inodes: int) -> None:
        self._ops = operations
        self._attributes_for_files = attributes_for_files
        ttl = config.listing_ttl
        # Without --attr-timeout names and attributes are kept until their listing is past its TTL, and at
        # least this long; with it, this long.
        self._attr_timeout = min(ttl, DEFAULT_ATTR_TIMEOUT if config.attr_timeout is None else config.attr_timeout)
        self._until_listing_ttl = config.attr_timeout is None
        self._negative_timeout = min(ttl, KERNEL_NEGATIVE_TIMEOUT)
        self._inodes = Inodes(max_inodes)
        self._listed: set[int] = set()  # directories whose listing the kernel may hold in its cache
        # Directories the kernel was told their listing changed after it read it: their sub-directories' own
        # listings may be older than theirs (see _entry_fresh).
        self._relisted: set[int] = set()
        # Directories whose listing is being made for the kernel (how many reads at once), and how many
        # changes were reported meanwhile: such a read takes the listing again rather than have the kernel
        # drop what it is given (a directory's first listing is reported while the kernel waits for it).
        self._reading: Counter[int] = Counter()
        self._changed_while_read: Counter[int] = Counter()
        self._opened: Counter[int] = Counter()  # files open, which are never given up
        # Listings being read page by page: when they are past their TTL (monotonic time), and their rows.
        self._listings: OrderedDict[int, tuple[float, list[tuple[bytes, Entry]]]] = OrderedDict()
        self._lock = threading.Lock()
        self._notes: queue.SimpleQueue[tuple[Callable[[], object], threading.Event | None]] = queue.SimpleQueue()
        self._giving_up = threading.Event()
        self._counts: list[Counter[str]] = []  # one per libfuse worker thread: counted without a lock
        self.session: int | None = None
        # Entries made for the kernel, by kind, size and time, without their number: every directory has
        # the mount time, so a walk makes one.
        self._made: dict[tuple[bool, str | None, int, float], bytes] = {}
        # Entries without a number (".", "..", files in a plain listing), by mode; and the answer for a name
        # that does not exist.
        self._unnumbered = {mode: _unnumbered(mode) for mode in (operations.mode_of(_DOT), LINK_MODE,
                                                                  operations.mode_of(Entry("", False)))}
        self._absent = ctypes.byref(_EntryParam(entry_timeout=self._negative_timeout))
        self._table = _LowLevelOps(*(kind(getattr(self, "_" + name)) if kind is not _UNUSED else None
                                     for name, kind in _OPERATIONS))

    # -- what the daemon tells the kernel ---------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Requests by kind since the mount, and the inode numbers held."""
        total: Counter[str] = Counter()
        with self._lock:
            threads = list(self._counts)
        for counts in threads:
            total.update(dict(counts))  # a copy made under the interpreter lock: its worker may count meanwhile
        return {**total, "inodes": len(self._inodes)}

    def _enter_thread(self) -> Counter[str]:
        """A libfuse worker's first request: keep its Python thread state (ctypes otherwise makes and drops
        one around every call from the thread) and give it request counts of its own."""
        ctypes.pythonapi.PyGILState_Ensure()  # never released: the thread keeps its state until it ends
        counts: Counter[str] = Counter()
        with self._lock:
            self._counts.append(counts)
        _this_thread.counts = counts
        return counts

    def invalidate_path(self, path: str, wait: float) -> None:
        """Forget the attributes and cached pages of a file (a replaced or discarded object)."""
        ino = self._inodes.number(path)
        if ino is not None:
            self._note(lambda: _lib.fuse_lowlevel_notify_inval_inode(self.session, ino, 0, 0), wait)

    def invalidate_listing(self, path: str, subtree: bool) -> None:
        """Drop the listing the kernel holds of directory ``path`` (and, for ``subtree``, of those below it
        and every name below it: the kernel may have been told to keep them until their listing's TTL)."""
        if subtree:
            under = self._inodes.under(path)
            with self._lock:
                self._changed_while_read.update(ino for ino in under if ino in self._reading)
            numbers = [ino for ino in under if ino in self._listed]
            for name in self._inodes.names_in(path):  # the kernel drops a directory's names with its own
                self.forget_name(f"{path.rstrip('/')}/{name}")
        else:
            ino = self._inodes.number(path)
            with self._lock:
                if ino is not None and ino in self._reading:
                    self._changed_while_read[ino] += 1  # the reads under way take the new listing
                numbers = [ino] if ino in self._listed else []  # a listing the kernel was given
                self._relisted.update(number for number in numbers if number not in self._reading)
        for ino in numbers:  # still listed: a reply under way may yet put the old listing in the cache
            self._note(functools.partial(_lib.fuse_lowlevel_notify_inval_inode, self.session, ino, 0, 0), 0.0)

    def forget_name(self, path: str) -> None:
        """Have the kernel forget the name ``path`` (and all it holds below it), if it holds its directory."""
        parent_path, _, name = path.rpartition("/")
        parent = self._inodes.number(parent_path or "/")
        if parent is not None:
            encoded = name.encode("utf-8", "surrogateescape")
            self._note(functools.partial(_lib.fuse_lowlevel_notify_inval_entry, self.session, parent, encoded,
                                         len(encoded)), 0.0)

    def _note(self, send: Callable[[], object], wait: float) -> None:
        done = threading.Event() if wait else None
        self._notes.put((send, done))
        if done is not None:
            done.wait(wait)

    def _send_notes(self) -> None:
        while True:
            send, done = self._notes.get()
            result = send()  # -ENOENT: the kernel holds nothing there, which is what was wanted
            if done is not None:
                done.set()
            log.debug("kernel notified (%d)", result)

    def _give_up(self) -> None:
        """Past the ceiling, ask the kernel to drop the oldest numbers (see :mod:`nccidfs.inodes`)."""
        while True:
            self._giving_up.wait()
            self._giving_up.clear()
            for given in self._inodes.give_up(lambda ino: ino in self._opened):
                name = given.name.encode("utf-8", "surrogateescape")
                if given.is_dir:
                    self._note(functools.partial(_lib.fuse_lowlevel_notify_inval_entry, self.session,
                                                 given.parent, name, len(name)), 0.0)
                else:
                    self._note(functools.partial(_lib.fuse_lowlevel_notify_delete, self.session,
                                                 given.parent, given.ino, name, len(name)), 0.0)

    # -- requests ---------------------------------------------------------------------------------------
    def _init(self, userdata: int, conn: Any) -> None:
        threading.Thread(target=self._send_notes, name="notify", daemon=True).start()
        threading.Thread(target=self._give_up, name="give-up", daemon=True).start()
        self._ops.init(conn.contents, self)

    def _child(self, parent: int, name: bytes) -> str:
        base = self._path(parent)
        return ("" if base == "/" else base) + "/" + name.decode("utf-8", "surrogateescape")

    def _valid_for(self, fresh: float) -> float:
        """How long the kernel may keep a name and its attributes that the daemon would answer the same for
        ``fresh`` seconds (see :meth:`FileSystem.lookup_fresh`)."""
        return max(fresh, self._attr_timeout) if self._until_listing_ttl else self._attr_timeout

    def _entry(self, path: str, entry: Entry, valid_for: float) -> _EntryParam:
        """The kernel's entry for ``entry``, kept ``valid_for`` seconds, with the number the kernel has (or
        will have) for it: a copy of the one made for entries of its kind, size and time, with the number
        and times set."""
        key = (entry.is_dir, entry.link, entry.size, entry.mtime)
        made = self._made.get(key)
        if made is None:
            param = _EntryParam()
            self._ops.fill_stat(param.attr, entry)
            made = bytes(param)
            if len(self._made) >= ENTRIES_MADE_KEPT:
                self._made.clear()
            self._made[key] = made
        param = _EntryParam.from_buffer_copy(made)
        param.ino = param.attr.st_ino = self._inodes.reserve(path)
        param.attr_timeout = param.entry_timeout = valid_for
        return param

    def _looked_up(self, path: str, ino: int, entry: Entry) -> None:
        if self._inodes.looked_up(path, ino, entry.is_dir):
            self._giving_up.set()

    @_reply_errors
    def _lookup(self, req: int, parent: int, name: bytes) -> None:
        path = self._child(parent, name)
        try:
            entry, fresh = self._ops.getattr(path)
        except mfusepy.FuseOSError as error:
            if error.errno != errno.ENOENT:
                raise
            _lib.fuse_reply_entry(req, self._absent)  # number 0: the name is known not to exist
            return
        param = self._entry(path, entry, self._valid_for(fresh))
        self._looked_up(path, param.ino, entry)
        if _lib.fuse_reply_entry(req, ctypes.byref(param)) != 0:
            self._inodes.forget(param.ino, 1)  # the request was interrupted: the kernel did not take the number

    @_reply_errors
    def _forget(self, req: int, ino: int, count: int) -> None:
        self._forget_one(ino, count)
        _lib.fuse_reply_none(req)

    @_reply_errors
    def _forget_multi(self, req: int, count: int, forgets: Any) -> None:
        for index in range(count):
            self._forget_one(forgets[index].ino, forgets[index].nlookup)
        _lib.fuse_reply_none(req)

    def _forget_one(self, ino: int, count: int) -> None:
        if not self._inodes.forget(ino, count):
            self._listed.discard(ino)
            self._relisted.discard(ino)

    def _path(self, ino: int) -> str:
        try:
            return self._inodes.path(ino)
        except KeyError:
            raise mfusepy.FuseOSError(errno.ESTALE) from None  # a number the kernel was told to drop

    @_reply_errors
    def _getattr(self, req: int, ino: int, fi: Any) -> None:
        entry, fresh = self._ops.getattr(self._path(ino))
        st = mfusepy.c_stat()
        self._ops.fill_stat(st, entry)
        st.st_ino = ino
        _lib.fuse_reply_attr(req, ctypes.byref(st), self._valid_for(fresh))

    @_reply_errors
    def _readlink(self, req: int, ino: int) -> None:
        target = self._ops.readlink(self._path(ino))
        _lib.fuse_reply_readlink(req, target.encode("utf-8", "surrogateescape"))

    @_reply_errors
    def _open(self, req: int, ino: int, fi: Any) -> None:
        self._ops.open(self._path(ino), fi.contents)
        with self._lock:
            self._opened[ino] += 1
        if _lib.fuse_reply_open(req, fi) != 0:
            self._release_handle(ino, fi.contents)  # interrupted: the kernel will not release it

    @_reply_errors
    def _read(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        data = self._ops.read("", size, offset, fi.contents)
        if isinstance(data, memoryview) and not data.readonly:  # memory a generated file was made in
            _lib.fuse_reply_buf(req, (ctypes.c_char * data.nbytes).from_buffer(data), data.nbytes)
        else:
            reply = bytes(data)  # bytes already: no copy
            _lib.fuse_reply_buf(req, reply, len(reply))

    @_reply_errors
    def _release(self, req: int, ino: int, fi: Any) -> None:
        self._release_handle(ino, fi.contents)
        _lib.fuse_reply_err(req, 0)

    def _release_handle(self, ino: int, fi: Any) -> None:
        with self._lock:
            self._opened[ino] -= 1
            if self._opened[ino] <= 0:
                del self._opened[ino]
        self._ops.release("", fi)

    @_reply_errors
    def _opendir(self, req: int, ino: int, fi: Any) -> None:
        _lib.fuse_reply_err(req, errno.ENOSYS)  # no OPENDIR/RELEASEDIR from now on; the kernel caches listings

    def _rows(self, ino: int, offset: int) -> tuple[float, list[tuple[bytes, Entry]]]:
        """The listing of directory ``ino``, and when it is past its TTL (monotonic time): a new snapshot
        for its first page, the same one after."""
        with self._lock:
            snapshot = self._listings.get(ino) if offset else None
        if snapshot is None:
            entries, fresh = self._read_listing(ino)
            snapshot = time.monotonic() + fresh, [(b".", _DOT), (b"..", _DOT)] + [
                (entry.name.encode("utf-8", "surrogateescape"), entry) for entry in entries]
            with self._lock:
                self._listings[ino] = snapshot
                self._listings.move_to_end(ino)
                while len(self._listings) > self.READDIR_KEPT:
                    self._listings.popitem(last=False)
        return snapshot

    def _read_listing(self, ino: int) -> tuple[list[Entry], float]:
        """Directory ``ino``'s entries for the kernel, and how long they are fresh; taken again while a change
        is reported during the read, so that what the kernel is given is the newest listing."""
        with self._lock:
            self._reading[ino] += 1
            seen = self._changed_while_read[ino]
        finished = False
        try:
            while True:
                entries, fresh = self._ops.readdir(self._path(ino), 0)
                with self._lock:
                    if self._changed_while_read[ino] == seen:
                        self._listed.add(ino)  # given to the kernel: a change from now on is sent to it
                        self._stop_reading(ino)
                        finished = True
                        return entries, fresh
                    seen = self._changed_while_read[ino]
        finally:
            if not finished:
                with self._lock:
                    self._stop_reading(ino)

    def _stop_reading(self, ino: int) -> None:
        """One read of directory ``ino``'s listing is over. Hold ``self._lock``."""
        self._reading[ino] -= 1
        if not self._reading[ino]:
            del self._reading[ino]
            self._changed_while_read.pop(ino, None)

    @_reply_errors
    def _readdir(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        _, rows = self._rows(ino, offset)
        buf = ctypes.create_string_buffer(size)
        address, used, unnumbered = ctypes.addressof(buf), 0, self._unnumbered
        for index in range(offset, len(rows)):
            name, entry = rows[index]
            length = _lib.fuse_add_direntry(req, address + used, size - used, name,
                                            ctypes.byref(unnumbered[self._ops.mode_of(entry)].attr), index + 1)
            if used + length > size:
                break
            used += length
        _lib.fuse_reply_buf(req, buf, used)

    @_reply_errors
    def _readdirplus(self, req: int, ino: int, size: int, offset: int, fi: Any) -> None:
        expires, rows = self._rows(ino, offset)
        fresh = expires - time.monotonic()
        relisted = ino in self._relisted
        base = self._path(ino)
        base = "" if base == "/" else base
        buf = ctypes.create_string_buffer(size)
        address, used, unnumbered = ctypes.addressof(buf), 0, self._unnumbered
        files_too = self._attributes_for_files
        for index in range(offset, len(rows)):
            name, entry = rows[index]
            if index >= 2 and (entry.is_dir or files_too):
                path = f"{base}/{entry.name}"
                param = self._entry(path, entry, self._valid_for(self._entry_fresh(path, entry, fresh, relisted)))
            else:
                path, param = None, unnumbered[self._ops.mode_of(entry)]
            length = _lib.fuse_add_direntry_plus(req, address + used, size - used, name, ctypes.byref(param),
                                                 index + 1)
            if used + length > size:
                break
            used += length
            if path is not None:
                self._looked_up(path, param.ino, entry)  # the kernel counts an entry with attributes as a lookup
        _lib.fuse_reply_buf(req, buf, used)

    def _entry_fresh(self, path: str, entry: Entry, fresh: float, relisted: bool) -> float:
        """How long the daemon answers the same for an entry of a listing fresh for ``fresh`` seconds: a
        directory's attributes no longer than its own listing, which is older when its parent was listed
        again since (``relisted``). A listing not held in memory is then taken as past its TTL (reading the
        index for it would cost a walk more than it saves); otherwise it was not made yet, and will be
        fresher than its parent's."""
        if not (entry.is_dir and self._until_listing_ttl and fresh > self._attr_timeout):
            return fresh
        own = self._ops.listing_fresh(path)
        if own is None:
            return 0.0 if relisted else fresh
        return min(fresh, own)

    @_reply_errors
    def _statfs(self, req: int, ino: int) -> None:
        st = mfusepy.c_statvfs()
        for key, value in self._ops.statfs("/").items():
            setattr(st, key, value)
        _lib.fuse_reply_statfs(req, ctypes.byref(st))

    def _reply_sized(self, req: int, value: bytes, size: int) -> None:
        """An xattr answer: its size when asked for 0 bytes, ERANGE when it does not fit, else itself."""
        if size == 0:
            _lib.fuse_reply_xattr(req, len(value))
        elif size < len(value):
            _lib.fuse_reply_err(req, errno.ERANGE)
        else:
            _lib.fuse_reply_buf(req, value, len(value))

    @_reply_errors
    def _getxattr(self, req: int, ino: int, name: bytes, size: int) -> None:
        value = self._ops.getxattr(self._path(ino), name.decode("utf-8", "surrogateescape"))
        self._reply_sized(req, value, size)

    @_reply_errors
    def _listxattr(self, req: int, ino: int, size: int) -> None:
        names = self._ops.listxattr(self._path(ino))
        self._reply_sized(req, b"".join(name.encode() + b"\0" for name in names), size)

    # -- the mount --------------------------------------------------------------------------------------
    def serve(self, mountpoint: str, options: list[str], debug: bool) -> int:
        """Mount, serve with up to MAX_THREADS threads until unmounted or signalled, and unmount."""
        return serve_session(self._table, mountpoint, options, debug, on_session=self._started)

    def _started(self, session: int) -> None:
        self.session = session


def serve_session(table: _LowLevelOps, mountpoint: str, options: list[str], debug: bool = False,
                  on_session: Callable[[int], None] = lambda session: None, name: bytes = b"nccidfs") -> int:
    """Mount with the low-level operations ``table``, serve with up to MAX_THREADS threads until unmounted
    or signalled, and unmount; ``on_session`` is given the session before the mount (notifications need it).
    Returns libfuse's loop result."""
    argv = [name, b"-o", ",".join(options).encode()] + ([b"-d"] if debug else [])
    args = _Args(len(argv), (ctypes.c_char_p * len(argv))(*argv), 0)
    session = _lib.fuse_session_new(ctypes.byref(args), ctypes.byref(table), ctypes.sizeof(table), None)
    if not session:
        raise NccidfsError("libfuse refused the mount options: " + ",".join(options))
    on_session(session)
    try:
        if _lib.fuse_set_signal_handlers(session) != 0:
            raise NccidfsError("libfuse could not install its signal handlers")
        try:
            if _lib.fuse_session_mount(session, os.fsencode(mountpoint)) != 0:
                raise NccidfsError(f"could not mount on {mountpoint} (see the lines above)")
            loop = _lib.fuse_loop_cfg_create()
            _lib.fuse_loop_cfg_set_max_threads(loop, MAX_THREADS)
            _lib.fuse_loop_cfg_set_idle_threads(loop, MAX_THREADS)
            try:
                return int(_lib.fuse_session_loop_mt_312(session, loop))
            finally:
                _lib.fuse_loop_cfg_destroy(loop)
                _lib.fuse_session_unmount(session)
        finally:
            _lib.fuse_remove_signal_handlers(session)
    finally:
        _lib.fuse_session_destroy(session)


_DOT = Entry(".", True)


def _unnumbered(mode: int) -> _EntryParam:
    param = _EntryParam()
    param.attr.st_mode, param.attr.st_ino = mode, FUSE_UNKNOWN_INO
    return param


def run_mount(operations: FuseOperations, config: MountConfig, debug: bool = False) -> None:
    """Mount and serve until unmounted or signalled (SIGINT/SIGTERM unmount cleanly)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    if libfuse_version() != 3:
        raise NccidfsError(f"libfuse {libfuse_version()} was loaded; nccidfs needs libfuse 3 (install fuse3)")
    options = ["ro", "fsname=nccidfs", "subtype=nccidfs", "default_permissions"]
    options += [name for name, wanted in (("allow_other", config.allow_other),
                                          ("allow_root", config.allow_root)) if wanted]
    # Files' attributes in listings are off by default: each becomes a kernel inode and a number here.
    kernel = Kernel(operations, config, attributes_for_files=config.readdirplus, max_inodes=config.max_inodes)
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL)  # libfuse installs its handler only over the default
    try:
        result = kernel.serve(str(config.mountpoint), options, debug)
    finally:
        signal.signal(signal.SIGINT, previous)
    log.info("stopped (%d)", result)
