"""The error hierarchy of nccidfs and the one place where errors become errnos.

    NccidfsError
     ├── NotFound          the key or directory does not exist        -> ENOENT
     ├── AccessDenied      the credentials may not read or list it    -> EACCES
     ├── ObjectChanged     the object's ETag differs from the listing -> EIO (re-list and retry)
     ├── TransientError    S3 failed after retries, or timed out      -> EIO
     ├── CorruptData       bytes failed a size or checksum check      -> EIO
     └── NotReady          a derived file is still being made         -> EAGAIN

Lower layers raise these; only :func:`to_errno` decides what a FUSE caller sees.
"""

from __future__ import annotations

import errno


class NccidfsError(Exception):
    """Base of every error nccidfs raises on purpose."""

    errno_value = errno.EIO


class NotFound(NccidfsError):
    errno_value = errno.ENOENT


class AccessDenied(NccidfsError):
    errno_value = errno.EACCES


class ObjectChanged(NccidfsError):
    """The object was replaced or deleted in S3 after it was listed."""


class TransientError(NccidfsError):
    """S3 could not be reached or kept failing within the deadline."""


class CorruptData(NccidfsError):
    """Bytes that failed verification; they never reach a reader."""


class NotReady(NccidfsError):
    """A derived file whose making has not completed (the catalog): an error, never a part of it."""

    errno_value = errno.EAGAIN


class ConfigError(NccidfsError):
    """Bad input from the user: a flag, a mount point, missing credentials."""


def to_errno(error: BaseException) -> int:
    """The errno a FUSE caller sees for ``error``."""
    if isinstance(error, NccidfsError):
        return error.errno_value
    if isinstance(error, OSError) and error.errno:
        return error.errno
    return errno.EIO
