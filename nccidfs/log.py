"""Logging set-up: levels, a journald-friendly form under systemd, and no credentials ever.

botocore's own DEBUG output includes signed headers, so the loggers of the libraries below nccidfs
(:data:`QUIET_LOGGERS`) stay at WARNING whatever the level; ``--log-level debug`` shows nccidfs's own
line per S3 request instead (the listing or range asked for, what came back and how long it took, or
the error it failed with). Every line passes :func:`strip_credentials`, so an endpoint URL given as
``http://user:secret@host`` is logged without its ``user:secret@``. The log file is created 0600 (logs
name patients) and opened again on SIGUSR1 (:func:`reopen_log_file`), after logrotate moved it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
# syslog priorities that journald reads from a "<N>" line prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
# Libraries whose own lines stay at WARNING: botocore's DEBUG holds signed headers, and the others (the
# HTTP pool, the demo's S3 server, the FUSE binding) would drown nccidfs's lines.
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "mfusepy", "fuse")
# The user-info part of a URL: "scheme://" then anything up to an "@" before the host's end.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")


def strip_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it removed: safe to show or log."""
    return _URL_USERINFO.sub(r"\1", text) if "@" in text else text


class _Formatter(logging.Formatter):
    """The usual formatter, with credentials stripped and, under journald, a priority prefix."""

    def __init__(self, fmt: str, journal: bool = False) -> None:
        super().__init__(fmt)
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = strip_credentials(super().format(record))
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}" if self._journal else text


def make_private(path: Path) -> None:
    """Create ``path`` 0600 before logging opens it (and make an existing one 0600): logs name patients."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def setup_logging(level: str, log_file: Path | None = None) -> None:
    """Log to stderr (or ``log_file``); journald priorities when stderr is the journal."""
    plain = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler: logging.Handler
    if log_file is not None:
        make_private(log_file)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(_Formatter(plain))
    elif os.environ.get("JOURNAL_STREAM"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter("%(name)s: %(message)s", journal=True))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(plain))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def reopen_log_file() -> None:
    """Open the log file again at its path (SIGUSR1, after logrotate moved it away), created 0600; the
    old file gets no more lines, so it can be compressed or removed."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            make_private(Path(handler.baseFilename))
            stream = open(handler.baseFilename, "a", encoding=handler.encoding)  # noqa: SIM115 (the handler's now)
            old = handler.setStream(stream)
            if old is not None:
                old.close()
