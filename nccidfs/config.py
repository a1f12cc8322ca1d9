"""Frozen configuration of one nccidfs mount, with every default and validation in one place."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from nccidfs.errors import ConfigError

DEFAULT_BUCKET = "nccid-data-warehouse-prod"
DEFAULT_PREFIX = "training/"
DEFAULT_REGION = "eu-west-2"
# The folders the warehouse loader writes; "unknown" holds modalities outside CT/MR/DX/CR.
KNOWN_FOLDERS = ("ct", "ct-metadata", "mri", "mri-metadata", "xray", "xray-metadata", "data", "unknown",
                 "unknown-metadata")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """Bytes from ``10G``, ``512M``, ``1.5T`` or a plain number (suffixes are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"bad size {text!r}: use a number of bytes or a K/M/G/T suffix, e.g. 10G")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.upper()])
    if size <= 0:
        raise ConfigError(f"bad size {text!r}: must be greater than zero")
    return size


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nccidfs``, else ``~/.cache/nccidfs``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nccidfs"


def default_log_file() -> Path:
    """``$XDG_STATE_HOME/nccidfs/nccidfs.log``, else ``~/.local/state/nccidfs/nccidfs.log``."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "nccidfs" / "nccidfs.log"


def normalize_prefix(prefix: str) -> str:
    """Prefixes are always listed with their trailing slash (the IAM policy refuses them without)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


@dataclass(frozen=True)
class S3Config:
    bucket: str = DEFAULT_BUCKET
    prefix: str = DEFAULT_PREFIX
    region: str = DEFAULT_REGION
    profile: str | None = None
    endpoint_url: str | None = None
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    # A FUSE call that needs S3 gives EIO after this long at most.
    deadline: float = 30.0
    max_connections: int = 32
    folders: tuple[str, ...] = KNOWN_FOLDERS


@dataclass(frozen=True)
class CacheConfig:
    directory: Path = field(default_factory=default_cache_dir)
    size_bytes: int = 10 * 1024**3


@dataclass(frozen=True)
class ReadConfig:
    # Presence is tracked per block; the first fetch of a cold object is one block, so a header scan
    # downloads a few percent of each image.
    block_size: int = 32 * 1024
    initial_window: int = 256 * 1024
    max_window: int = 64 * 1024**2
    part_size: int = 8 * 1024**2
    fetch_threads: int = 16
    prefetch: bool = True
    prefetch_threads: int = 8


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    foreground: bool = False
    allow_other: bool = False
    listing_ttl: float = 300.0
    # About 1 KiB of memory each; listings beyond the bound are read back from the on-disk index, not S3.
    max_listing_entries: int = 50_000
    readdirplus: bool = False
    log_level: str = "INFO"
    log_file: Path | None = None


@dataclass(frozen=True)
class Config:
    mount: MountConfig
    s3: S3Config = field(default_factory=S3Config)
    cache: CacheConfig = field(default_factory=CacheConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
