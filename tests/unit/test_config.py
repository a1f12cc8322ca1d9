from __future__ import annotations

import pytest

from nccidfs.config import normalize_prefix, parse_size
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
