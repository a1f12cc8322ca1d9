"""Frozen configuration of one nccidfs mount: the flags' defaults and validation, and the names of what
nccidfs itself keeps (the cache directory, the control socket, the log, the hidden folder in the mount).

The command line derives its flags' defaults from these dataclasses and builds them; each dataclass
checks its own fields on construction, so a bad value is refused in one place with one line naming the
flag, whether it came from the command line, an fstab line or a test. The warehouse's own folders and
names are in :mod:`nccidfs.layout`; the listing index's file names in :mod:`nccidfs.index`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from nccidfs.errors import ConfigError
from nccidfs.layout import KNOWN_FOLDERS
from nccidfs.log import LEVELS, strip_credentials

APP_NAME = "nccidfs"
DEFAULT_BUCKET = "nccid-data-warehouse-prod"
DEFAULT_PREFIX = "training/"
DEFAULT_REGION = "eu-west-2"

# Names inside the cache directory and inside the mount.
CONTROL_SOCKET = "control.sock"
CONTROL_DIR = ".nccidfs"  # hidden directory at the mount's root
STATUS_FILE = "status.json"  # inside CONTROL_DIR
LOG_FILE = "nccidfs.log"

METRICS_HOST = "127.0.0.1"  # --metrics-addr without a host listens on loopback only

# A listing trusted for less than this would send S3 a listing for nearly every lookup of a walk: with a
# TTL of 0 one `find` of 182 files cost 1,001 listings.
MIN_LISTING_TTL = 1.0
# The least the kernel trusts a name and its attributes without --attr-timeout, even when the listing it
# came from is at or past its TTL: the daemon answers from its listing cache in microseconds meanwhile.
DEFAULT_ATTR_TIMEOUT = 5.0
MIN_LISTING_ENTRIES = 1000
MIN_INODES = 100
# sun_path holds 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107
# Hex digits of SHA-256 that name a demo's cache or a control socket outside its cache directory.
DIGEST_CHARS = 16
PORT_MAX = 65535
# Separators accepted in a list flag: "," on the command line, ":" or "+" where commas split options (fstab).
LIST_SEPARATORS = re.compile(r"[,:+]")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# S3's bucket naming rules: 3 to 63 lowercase letters, digits, dots and hyphens, starting and ending
# with a letter or digit, no "..", not shaped like an IP address.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_size(text: str, allow_zero: bool = False) -> int:
    """Bytes from ``10G``, ``512M``, ``1.5T``, ``10 GiB`` or a plain number (suffixes are powers of 1024)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"bad size {text!r}: use a number of bytes or a K/M/G/T suffix, e.g. 10G")
    number, unit = match.groups()
    size = int(float(number) * _SIZE_UNITS[unit.upper()])
    if size <= 0 and not (allow_zero and size == 0):
        raise ConfigError(f"bad size {text!r}: must be greater than zero")
    return size


def format_size(size: float) -> str:
    """``10 GiB``, ``1.5 MiB``, ``512 B``: the unit named as what it is (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            break
        size /= 1024
    if unit == "B":
        return f"{int(size)} B"
    return f"{size:.1f}".removesuffix(".0") + f" {unit}"


def parse_list(text: str) -> tuple[str, ...]:
    """Names separated by ``,``, ``:`` or ``+`` (the last two survive fstab, which splits options on commas)."""
    return tuple(name.strip().strip("/") for name in LIST_SEPARATORS.split(text) if name.strip().strip("/"))


def parse_umask(text: str) -> int:
    """An octal umask such as ``022`` or ``0o077``."""
    try:
        value = int(text.removeprefix("0o"), 8)
    except ValueError:
        raise ConfigError(f"--umask {text!r}: use octal digits, e.g. 022 or 077") from None
    return value


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/nccidfs``, else ``~/.cache/nccidfs``."""
    return Path(platformdirs.user_cache_dir(APP_NAME))


def demo_cache_dir(mountpoint: Path) -> Path:
    """Each demo mount point gets its own cache, so two demos never share (or lock each other out of) one."""
    digest = hashlib.sha256(os.fsencode(mountpoint.absolute())).hexdigest()[:DIGEST_CHARS]
    return Path(platformdirs.user_cache_dir(f"{APP_NAME}-demo")) / digest


def default_log_file() -> Path:
    """``$XDG_STATE_HOME/nccidfs/nccidfs.log``, else ``~/.local/state/nccidfs/nccidfs.log``."""
    return Path(platformdirs.user_state_dir(APP_NAME)) / LOG_FILE


def runtime_dir() -> Path | None:
    """``/run/nccidfs`` for root, ``$XDG_RUNTIME_DIR/nccidfs`` (or ``/run/user/UID/nccidfs``) for others."""
    if os.geteuid() == 0:
        return Path(platformdirs.site_runtime_dir(APP_NAME))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when it falls back to a directory in /tmp
        try:
            return Path(platformdirs.user_runtime_dir(APP_NAME))
        except OSError:
            return None


def control_socket_path(cache_dir: Path) -> Path:
    """Where the daemon of ``cache_dir`` listens: in the cache dir when the path fits in a Unix socket
    address, else in the runtime directory under a name derived from the cache dir."""
    in_cache = cache_dir / CONTROL_SOCKET
    if len(os.fsencode(in_cache)) <= SOCKET_PATH_MAX:
        return in_cache
    runtime = runtime_dir()
    digest = hashlib.sha256(os.fsencode(cache_dir)).hexdigest()[:DIGEST_CHARS]
    if runtime is not None and len(os.fsencode(runtime / f"{digest}.sock")) <= SOCKET_PATH_MAX:
        return runtime / f"{digest}.sock"
    raise ConfigError(f"--cache-dir {cache_dir} is too long for the control socket's path "
                      f"({SOCKET_PATH_MAX} bytes at most) and no runtime directory fits; use a shorter --cache-dir")


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT`` (then on loopback only: the listener has no authentication)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or METRICS_HOST
    if not port.isdigit() or not 0 < int(port) <= PORT_MAX:
        raise ConfigError(f"--metrics-addr {text!r}: give HOST:PORT or PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


def normalize_prefix(prefix: str) -> str:
    """Prefixes are always listed with their trailing slash (the IAM policy refuses them without)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def check_bucket(name: str) -> None:
    if not _BUCKET_RE.match(name) or ".." in name or _is_ip_address(name):
        raise ConfigError(f"--bucket {name!r} is not a valid S3 bucket name: 3 to 63 lowercase letters, digits, "
                          "dots and hyphens, starting and ending with a letter or digit")


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return False
    return True


def check_endpoint_url(url: str) -> None:
    """``http(s)://host[:port][/path]``; anything else would reach boto3 as a ValueError."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number from 0 to 65535
        valid = False
    if not valid:
        shown = strip_credentials(url)
        raise ConfigError(f"--endpoint-url {shown!r} is not a URL: use http://HOST[:PORT] or https://HOST[:PORT]")


def check_seconds(flag: str, value: float, minimum: float, above: bool = False) -> None:
    """A finite number of seconds of at least (or, with ``above``, more than) ``minimum``."""
    ok = math.isfinite(value) and (value > minimum if above else value >= minimum)
    if not ok:
        bound = f"more than {minimum:g}" if above else f"at least {minimum:g}"
        raise ConfigError(f"{flag} must be a finite number of seconds, {bound}; got {value!r}")


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
    # Connections kept open for the next request: as many as the views read twins at once (PLAN_THREADS).
    max_connections: int = 64
    folders: tuple[str, ...] = KNOWN_FOLDERS

    def __post_init__(self) -> None:
        check_bucket(self.bucket)
        if self.endpoint_url is not None:
            check_endpoint_url(self.endpoint_url)
        check_seconds("--timeout", self.deadline, 0.0, above=True)
        check_seconds("the connect timeout", self.connect_timeout, 0.0, above=True)
        check_seconds("the read timeout", self.read_timeout, 0.0, above=True)
        if not self.folders:
            raise ConfigError("--modalities names no folder")


@dataclass(frozen=True)
class CacheConfig:
    directory: Path = field(default_factory=default_cache_dir)
    size_bytes: int = 10 * 1024**3
    # Left free on the cache's filesystem for everything else on it.
    min_free_bytes: int = 1024**3

    def __post_init__(self) -> None:
        if self.size_bytes <= 0:
            raise ConfigError("--cache-size must be greater than zero")
        if self.min_free_bytes < 0:
            raise ConfigError("--cache-min-free must not be negative")
        control_socket_path(self.directory)  # refuse a path with no room for the socket before mounting

    @property
    def control_socket(self) -> Path:
        return control_socket_path(self.directory)


@dataclass(frozen=True)
class ReadConfig:
    # Presence is tracked per block; the first fetch of a cold object is one block, so a header scan
    # downloads a few percent of each image.
    block_size: int = 32 * 1024
    initial_window: int = 256 * 1024
    max_window: int = 64 * 1024**2
    part_size: int = 8 * 1024**2
    # How far from a sequential reader's furthest read a read may be and still be the same reader's: the
    # kernel's read-ahead requests (1 MiB each) arrive out of order, several at once.
    reorder_slack: int = 8 * 1024**2
    fetch_threads: int = 16
    prefetch: bool = True
    prefetch_threads: int = 8
    # Whole objects checked against a plain-MD5 ETag: about 1.3 CPU seconds per GiB read.
    verify: bool = True


# Files and directories are never writable; a umask can only take read and search bits away.
FILE_BASE_MODE = 0o444
DIR_BASE_MODE = 0o555
_ID_MAX = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel


@dataclass(frozen=True)
class MountConfig:
    mountpoint: Path
    foreground: bool = False
    allow_other: bool = False
    allow_root: bool = False
    listing_ttl: float = 300.0
    # KiB of memory for listings (1 KiB a name, a few hundred bytes a small listing held packed); listings
    # beyond the bound are read back from the on-disk index, not S3.
    max_listing_entries: int = 50_000
    # Inode numbers held for the kernel; past it the kernel is asked to forget the oldest files.
    max_inodes: int = 250_000
    readdirplus: bool = False
    # How long the kernel trusts a file's attributes and a name's lookup before asking the daemon again. None:
    # until the listing the name came from is past its TTL (the daemon would answer the same until then),
    # at least DEFAULT_ATTR_TIMEOUT; a number: that long, as the user asked.
    attr_timeout: float | None = None
    # Owner and group shown for every file; None means the mounting user's.
    uid: int | None = None
    gid: int | None = None
    umask: int = 0o022
    log_level: str = "info"
    # None: log to stderr.
    log_file: Path | None = None
    # A frozen view instead of the bucket as it is now: a cohort manifest to mount, and a date (seconds
    # since the epoch) after which objects are left out. ``view`` names what is shown, for the listing index.
    cohort: Path | None = None
    as_of: float | None = None
    view: str = ""
    # Where Prometheus metrics are served over HTTP (host, port); None: only through 'nccidfs metrics'.
    metrics_addr: tuple[str, int] | None = None

    def __post_init__(self) -> None:
        check_seconds("--listing-ttl", self.listing_ttl, MIN_LISTING_TTL)
        if self.attr_timeout is not None:
            check_seconds("--attr-timeout", self.attr_timeout, 0.0)
        if self.max_listing_entries < MIN_LISTING_ENTRIES:
            raise ConfigError(f"--max-listing-entries must be at least {MIN_LISTING_ENTRIES}")
        if self.max_inodes < MIN_INODES:
            raise ConfigError(f"--max-inodes must be at least {MIN_INODES}")
        for flag, value in (("--uid", self.uid), ("--gid", self.gid)):
            if value is not None and not 0 <= value <= _ID_MAX:
                raise ConfigError(f"{flag} must be a number from 0 to {_ID_MAX}; got {value}")
        if not 0 <= self.umask <= 0o777:
            raise ConfigError(f"--umask must be from 000 to 777 (octal); got {self.umask:o}")
        if self.allow_other and self.allow_root:
            raise ConfigError("--allow-other and --allow-root exclude each other (allow-other includes root)")
        if self.log_level.lower() not in LEVELS:
            raise ConfigError(f"--log-level must be one of {', '.join(LEVELS)}; got {self.log_level!r}")
        if self.log_file is not None and self.log_file.is_dir():
            raise ConfigError(f"--log-file {self.log_file} is a directory; name a file")

    @property
    def file_mode(self) -> int:
        return FILE_BASE_MODE & ~self.umask

    @property
    def dir_mode(self) -> int:
        return DIR_BASE_MODE & ~self.umask


@dataclass(frozen=True)
class Config:
    mount: MountConfig
    s3: S3Config = field(default_factory=S3Config)
    cache: CacheConfig = field(default_factory=CacheConfig)
    read: ReadConfig = field(default_factory=ReadConfig)
