"""Logging set-up: levels, a journald-friendly form under systemd, and no credentials ever.

botocore's own DEBUG output includes signed headers, so its loggers stay at WARNING whatever the level;
``--log-level debug`` shows nccidfs's one line per S3 request instead (method, key, range, status, time).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
# syslog priorities that journald reads from a "<N>" line prefix.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>{super().format(record)}"


def setup_logging(level: str, log_file: Path | None = None) -> None:
    """Log to stderr (or ``log_file``); journald priorities when stderr is the journal."""
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    elif os.environ.get("JOURNAL_STREAM"):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "mfusepy", "fuse"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
