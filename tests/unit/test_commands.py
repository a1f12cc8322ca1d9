"""The face of the commands without a mount: mistyped words, the cache commands on what is not a cache,
and the prefetch progress bar."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nccidfs.commands import _SizeBar
from tests.mounting import daemon_env


def nccidfs(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = daemon_env()
    if home is not None:
        env.update(HOME=str(home))
        env.pop("XDG_CACHE_HOME", None)
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=home)


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    return lines[0]


def test_an_unknown_flag_is_named_as_one() -> None:
    assert "unrecognized arguments: --bogus" in one_line(nccidfs("--bogus"), 2)
    assert "required: MOUNTPOINT" in one_line(nccidfs("--foreground"), 2)


@pytest.mark.parametrize(("typed", "meant"), [("stauts", "status"), ("prefech", "prefetch"), ("damo", "demo"),
                                              ("refesh", "refresh"), ("catalgo", "catalog")])
def test_a_misspelled_command_suggests_the_command(tmp_path: Path, typed: str, meant: str) -> None:
    line = one_line(nccidfs(typed, "x", home=tmp_path), 2)
    assert f"did you mean 'nccidfs {meant}'" in line and "mkdir" not in line


def test_a_missing_mount_point_unlike_any_command_still_says_how_to_create_it(tmp_path: Path) -> None:
    assert "mkdir -p" in one_line(nccidfs("mnt", home=tmp_path), 2)
    (tmp_path / "stauts").mkdir()  # a directory of that name is a mount point, whatever it looks like
    assert "did you mean" not in nccidfs("stauts", "--endpoint-url", "http://127.0.0.1:9", home=tmp_path).stderr


def test_cache_stats_without_a_cache_says_so_in_one_line(tmp_path: Path) -> None:
    line = one_line(nccidfs("cache", "stats", home=tmp_path), 2)
    assert "no cache directory at" in line and "--cache-dir" in line


def test_cache_stats_and_clear_refuse_a_directory_without_the_marker(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "results.csv").write_text("keep")
    for action in ("stats", "clear"):
        assert "is not an nccidfs cache directory" in one_line(nccidfs("cache", action, "--cache-dir",
                                                                       str(project)), 2)
    assert (project / "results.csv").read_text() == "keep"


def test_cache_stats_of_the_root_is_refused_at_once() -> None:
    started = time.monotonic()
    assert "is not an nccidfs cache directory" in one_line(nccidfs("cache", "stats", "--cache-dir", "/"), 2)
    assert time.monotonic() - started < 10


def render(total: int, reads: list[int]) -> str:
    out = io.StringIO()
    with _SizeBar(total=total, desc="0/1 files: ", file=out, bar_format=_SizeBar.FORMAT, mininterval=0) as bar:
        for count in reads:
            bar.advance(count)
        bar.set_description("1/1 files")
        bar.finish()
    return out.getvalue().split("\r")[-1]


def test_the_prefetch_bar_says_files_once_and_ends_full_when_files_read_longer_than_listed() -> None:
    last = render(0, [10, 15])  # a view listed at 0 bytes that reads 25
    assert "1/1 files: 100%" in last and "25 B/25 B" in last, last
    assert ": :" not in last


def test_the_prefetch_bar_ends_full_when_files_read_shorter_than_listed() -> None:
    last = render(100, [40])
    assert "100%" in last and "40 B/40 B" in last, last
