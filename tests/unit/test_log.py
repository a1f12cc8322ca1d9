"""Logging never shows credentials, and the log file is private to its owner."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.log import setup_logging, strip_credentials


@pytest.mark.parametrize(("text", "shown"), [
    ("http://user:secret@127.0.0.1:9000", "http://127.0.0.1:9000"),
    ("https://AKIA:s%2Fcr%40t@s3.example.org/bucket?x=1", "https://s3.example.org/bucket?x=1"),
    ("cannot reach http://u:p@[::1]:9000: Could not connect to \"http://u:p@[::1]:9000/b?list-type=2\"",
     "cannot reach http://[::1]:9000: Could not connect to \"http://[::1]:9000/b?list-type=2\""),
    ("http://host/a@b and mail@example.org", "http://host/a@b and mail@example.org"),
    ("s3 in eu-west-2", "s3 in eu-west-2"),
])
def test_strip_credentials_removes_only_the_user_info_of_urls(text: str, shown: str) -> None:
    assert strip_credentials(text) == shown


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = handlers, level


@pytest.mark.usefixtures("restore_logging")
def test_the_log_file_is_0600_even_if_it_existed_and_holds_no_credentials(tmp_path: Path) -> None:
    log_file = tmp_path / "nccidfs.log"
    log_file.write_text("")
    log_file.chmod(0o644)
    setup_logging("info", log_file)
    logging.getLogger("nccidfs.test").warning("endpoint %s unreachable", "http://user:secret@127.0.0.1:9")
    logging.getLogger().handlers[0].flush()
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    text = log_file.read_text()
    assert "endpoint http://127.0.0.1:9 unreachable" in text and "secret" not in text


@pytest.mark.usefixtures("restore_logging")
def test_a_new_log_file_is_created_0600(tmp_path: Path) -> None:
    setup_logging("info", tmp_path / "new.log")
    assert stat.S_IMODE((tmp_path / "new.log").stat().st_mode) == 0o600
