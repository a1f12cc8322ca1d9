from __future__ import annotations

import os
from pathlib import Path

import pytest

from nccidfs.config import (
    MIN_LISTING_TTL,
    CacheConfig,
    MountConfig,
    S3Config,
    control_socket_path,
    default_cache_dir,
    default_log_file,
    demo_cache_dir,
    format_size,
    normalize_prefix,
    parse_list,
    parse_size,
    parse_umask,
)
from nccidfs.errors import ConfigError


@pytest.mark.parametrize(("text", "expected"), [
    ("1024", 1024), ("10G", 10 * 1024**3), ("512M", 512 * 1024**2), ("1.5K", 1536), ("2t", 2 * 1024**4),
    ("64MiB", 64 * 1024**2),
])
def test_parse_size_accepts_plain_numbers_and_binary_suffixes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "ten", "10X", "-5G", "0", "G"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)


@pytest.mark.parametrize(("raw", "expected"), [
    ("training", "training/"), ("training/", "training/"), ("/training//", "training/"), ("", ""),
    ("a/b", "a/b/"),
])
def test_prefix_always_ends_with_one_slash(raw: str, expected: str) -> None:
    assert normalize_prefix(raw) == expected


@pytest.mark.parametrize("name", ["nccid-data-warehouse-prod", "abc", "a.b-c", "x" * 63])
def test_valid_bucket_names_are_accepted(name: str) -> None:
    assert S3Config(bucket=name).bucket == name


@pytest.mark.parametrize("name", ["a/b", "Bad!", "ab", "x" * 64, "-abc", "abc-", "a..b", "10.0.0.1", "UPPER"])
def test_bucket_names_outside_s3_rules_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid S3 bucket name"):
        S3Config(bucket=name)


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:9000", "ftp://host", "http://", "http://h:0",
                                 "http://h:port", "http://h:70000"])
def test_endpoint_urls_that_are_not_http_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="--endpoint-url"):
        S3Config(endpoint_url=url)


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, 0.5, -3.0])
def test_listing_ttl_is_finite_and_at_least_the_floor(seconds: float) -> None:
    with pytest.raises(ConfigError, match="--listing-ttl"):
        MountConfig(Path("/m"), listing_ttl=seconds)
    assert MountConfig(Path("/m"), listing_ttl=MIN_LISTING_TTL).listing_ttl == MIN_LISTING_TTL


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 0.0, -1.0])
def test_timeout_is_finite_and_positive(seconds: float) -> None:
    with pytest.raises(ConfigError, match="--timeout"):
        S3Config(deadline=seconds)


def test_umask_takes_bits_from_read_only_modes() -> None:
    assert (MountConfig(Path("/m")).file_mode, MountConfig(Path("/m")).dir_mode) == (0o444, 0o555)
    private = MountConfig(Path("/m"), umask=parse_umask("077"))
    assert (private.file_mode, private.dir_mode) == (0o400, 0o500)
    for text in ("8", "abc", ""):
        with pytest.raises(ConfigError, match="--umask"):
            parse_umask(text)


@pytest.mark.parametrize(("text", "expected"), [
    ("ct,mri", ("ct", "mri")), ("ct:mri", ("ct", "mri")), ("ct+mri-metadata", ("ct", "mri-metadata")),
    (" ct/ , data ", ("ct", "data")), (",,", ()),
])
def test_lists_split_on_comma_colon_or_plus(text: str, expected: tuple[str, ...]) -> None:
    assert parse_list(text) == expected


@pytest.mark.parametrize(("size", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (10 * 1024**3, "10 GiB"),
    (5 * 1024**5, "5120 TiB"),
])
def test_sizes_are_shown_in_binary_units_that_parse_back(size: int, text: str) -> None:
    assert format_size(size) == text
    if size:
        assert parse_size(text) == size


def test_a_cache_dir_too_long_for_a_socket_gets_its_socket_in_the_runtime_dir(tmp_path: Path) -> None:
    short = tmp_path / "c"
    assert control_socket_path(short) == short / "control.sock"
    long = tmp_path / ("x" * 120)
    socket = control_socket_path(long)
    assert len(os.fsencode(socket)) <= 107 and socket.name.endswith(".sock")
    assert socket == control_socket_path(long) != control_socket_path(tmp_path / ("y" * 120))
    assert CacheConfig(directory=long).control_socket == socket


def test_each_demo_mount_point_has_its_own_cache_dir(tmp_path: Path) -> None:
    first, second = demo_cache_dir(tmp_path / "a"), demo_cache_dir(tmp_path / "b")
    assert first != second and first.parent == second.parent and first.parent.name == "nccidfs-demo"


def test_platform_directories_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_cache_dir() == tmp_path / "cache" / "nccidfs"
    assert default_log_file() == tmp_path / "state" / "nccidfs" / "nccidfs.log"


@pytest.mark.parametrize("changes", [{"allow_other": True, "allow_root": True}, {"uid": -1}, {"gid": 2**32},
                                     {"attr_timeout": float("nan")}, {"max_listing_entries": 10},
                                     {"log_level": "loud"}])
def test_mount_config_refuses_contradictions_and_out_of_range_values(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        MountConfig(Path("/m"), **changes)  # type: ignore[arg-type]
