"""The check every mounted test ends with: errors and tracebacks in a daemon's log fail it unless declared."""

from __future__ import annotations

from tests.mounting import log_errors

LOG = """2026-12-05 08:00:00,001 INFO nccidfs.fuseops: mounted (libfuse 3)
2026-12-05 08:00:01,002 WARNING nccidfs.namespace: S3 unreachable (503); serving saved listings
2026-12-05 08:00:02,003 ERROR nccidfs.fuseops: _read failed
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom
2026-12-05 08:00:03,004 INFO nccidfs.daemon: unmounted /mnt
"""


def test_errors_and_their_tracebacks_are_found_and_warnings_are_not() -> None:
    assert log_errors(LOG) == ["2026-12-05 08:00:02,003 ERROR nccidfs.fuseops: _read failed",
                               "Traceback (most recent call last):"]


def test_a_declared_error_allows_its_traceback_too_but_not_a_stray_one() -> None:
    assert log_errors(LOG, [r"_read failed$"]) == []
    stray = LOG + "Exception in thread notify:\nTraceback (most recent call last):\n"
    assert log_errors(stray, [r"_read failed$"]) == ["Traceback (most recent call last):"]
