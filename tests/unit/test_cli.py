from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nccidfs.cli import SUBCOMMANDS, build_parser, from_mount_helper, main
from nccidfs.config import CacheConfig, MountConfig, S3Config
from nccidfs.errors import ConfigError
from nccidfs.layout import KNOWN_FOLDERS
from tests.mounting import daemon_env


def nccidfs(*args: str, cwd: Path | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m nccidfs ARGS`` as a user runs it."""
    return subprocess.run([sys.executable, "-m", "nccidfs", *args], capture_output=True, text=True, cwd=cwd,
                          env=daemon_env(), timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_fstab_options_become_flags() -> None:
    argv = ["nccidfs", "/mnt/nccid", "-o", "rw,_netdev,nofail,profile=nccid,cache_size=100G,allow_other,"
            "endpoint_url=http://127.0.0.1:9000,x-systemd.automount,uid=1000,umask=027,allow_root"]
    assert from_mount_helper(argv) == ["mount", "/mnt/nccid", "--profile", "nccid", "--cache-size", "100G",
                                       "--allow-other", "--endpoint-url", "http://127.0.0.1:9000", "--uid", "1000",
                                       "--umask", "027", "--allow-root"]
    assert from_mount_helper(["my-bucket", "/m", "-o", "ro"]) == ["mount", "/m", "--bucket", "my-bucket"]
    assert from_mount_helper(["nccidfs", "/m", "-o", "no_verify,no_prefetch"]) == [
        "mount", "/m", "--no-verify", "--no-prefetch"]


def test_fstab_list_values_take_a_separator_that_survives_the_option_split() -> None:
    flags = from_mount_helper(["nccidfs", "/m", "-o", "modalities=ct:mri+xray"])
    args = build_parser().parse_args(flags[1:])
    from nccidfs.cli import _s3_config

    assert _s3_config(args).folders == ("ct", "mri", "xray")
    with pytest.raises(ConfigError, match="modalities=ct:mri"):
        from_mount_helper(["nccidfs", "/m", "-o", "modalities=ct,mri"])


@pytest.mark.parametrize("argv", [["nccidfs", "/m", "-o", "cache_sise=1G"], ["/m", "-o", "ro"]])
def test_bad_fstab_lines_are_refused(argv: list[str]) -> None:
    with pytest.raises(ConfigError):
        from_mount_helper(argv)


def test_flag_defaults_come_from_the_config_dataclasses() -> None:
    args = build_parser().parse_args(["/m"])
    assert args.listing_ttl == MountConfig.listing_ttl
    assert args.timeout == S3Config.deadline
    assert args.attr_timeout == MountConfig.attr_timeout
    assert args.log_level == MountConfig.log_level
    assert args.cache_size == "10 GiB" and CacheConfig.size_bytes == 10 * 1024**3
    assert args.bucket == S3Config.bucket and S3Config.folders == KNOWN_FOLDERS


def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["/tmp", "--cache-size"])
    assert exit_info.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["nccidfs", "/mnt/x", "-o", "bogus"]) == 2


@pytest.fixture
def empty_mountpoint(tmp_path: Path) -> Path:
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    return mountpoint


# Each is refused before any server is asked (the endpoint is a closed port: reaching it would be exit 1).
@pytest.mark.parametrize(("flags", "needle"), [
    (["--endpoint-url", "notaurl"], "--endpoint-url"),
    (["--endpoint-url", "http://127.0.0.1:99999"], "--endpoint-url"),
    (["--bucket", "a/b"], "bucket name"),
    (["--bucket", "Bad!"], "bucket name"),
    (["--bucket", "192.168.1.1"], "bucket name"),
    (["--timeout", "nan"], "--timeout"),
    (["--timeout", "0"], "--timeout"),
    (["--listing-ttl", "nan"], "--listing-ttl"),
    (["--listing-ttl", "inf"], "--listing-ttl"),
    (["--listing-ttl", "0"], "at least 1"),
    (["--attr-timeout", "-1"], "--attr-timeout"),
    (["--max-listing-entries", "10"], "--max-listing-entries"),
    (["--cache-size", "0"], "size"),
    (["--umask", "999"], "--umask"),
    (["--umask", "1777"], "--umask"),
    (["--uid", "-1"], "--uid"),
    (["--uid", "root"], "--uid"),
    (["--allow-other", "--allow-root"], "--allow-root"),
    (["--log-level", "loud"], "--log-level"),
    (["--modalities", ",,"], "--modalities"),
])
def test_mistaken_flags_end_in_one_line_and_exit_2(empty_mountpoint: Path, flags: list[str], needle: str) -> None:
    result = nccidfs(str(empty_mountpoint), "--endpoint-url", "http://127.0.0.1:1", *flags)
    assert_one_line(result, 2, needle)


def test_a_log_file_that_is_a_directory_is_refused(empty_mountpoint: Path, tmp_path: Path) -> None:
    assert_one_line(nccidfs(str(empty_mountpoint), "--log-file", str(tmp_path)), 2, "--log-file")


@pytest.mark.parametrize("inside", [".", "cache"])
def test_a_cache_dir_in_the_mount_point_is_refused(empty_mountpoint: Path, inside: str) -> None:
    result = nccidfs(str(empty_mountpoint), "--cache-dir", str(empty_mountpoint / inside))
    assert_one_line(result, 2, "inside the mount point")
    assert os.listdir(empty_mountpoint) == []


def test_a_mount_point_inside_the_cache_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    assert_one_line(nccidfs(str(tmp_path / "mnt"), "--cache-dir", str(tmp_path)), 2, "inside the cache dir")


def test_an_unreachable_endpoint_is_a_runtime_failure(empty_mountpoint: Path, tmp_path: Path) -> None:
    result = nccidfs(str(empty_mountpoint), "-f", "--endpoint-url", "http://127.0.0.1:1",
                     "--cache-dir", str(tmp_path / "cache"))
    assert_one_line(result, 1, "cannot reach http://127.0.0.1:1")


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def test_an_endpoint_that_never_answers_is_reported_within_seconds(silent_endpoint: str, empty_mountpoint: Path,
                                                                   tmp_path: Path) -> None:
    started = time.monotonic()
    result = nccidfs(str(empty_mountpoint), "-f", "--endpoint-url", silent_endpoint, "--timeout", "30",
                     "--cache-dir", str(tmp_path / "cache"))
    elapsed = time.monotonic() - started
    assert_one_line(result, 1, "cannot reach")
    assert elapsed < 9, elapsed  # the probe's bound (5 s) plus start-up, never --timeout or botocore's 20 s


def test_a_mount_point_named_like_a_command_mounts_with_the_mount_command(tmp_path: Path) -> None:
    (tmp_path / "status").mkdir()
    result = nccidfs("mount", "status", "--endpoint-url", "http://127.0.0.1:1", "--bucket", "Bad!", cwd=tmp_path)
    assert_one_line(result, 2, "bucket name")  # parsed as a mount, not as 'nccidfs status'


def test_help_lists_commands_examples_and_exit_codes() -> None:
    text = nccidfs("--help").stdout
    usage = text.splitlines()[1]
    assert all(name in usage for name in SUBCOMMANDS if name != "mount"), usage
    assert "examples:" in text and "exit codes:" in text and "nccidfs mount ./status" in text
    for action in ("stats", "clear"):
        assert f"usage: nccidfs cache {action}" in nccidfs("cache", action, "--help").stdout
    demo_help = " ".join(nccidfs("demo", "--help").stdout.split())
    assert "nccidfs-demo/<hash of MOUNTPOINT>" in demo_help


def test_refresh_outside_any_mount_exits_2(tmp_path: Path) -> None:
    assert_one_line(nccidfs("refresh", str(tmp_path), "ct"), 2, "not an nccidfs mount")
