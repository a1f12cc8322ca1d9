"""Start-up: the checks a user gets wrong, discovery of the readable root folders, and wiring of the parts.

Everything here runs before the mount exists, so that each mistake becomes one clear line and a
non-zero exit instead of a mount that fails later.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from nccidfs.config import Config, MountConfig, S3Config
from nccidfs.errors import AccessDenied, ConfigError, NotFound, TransientError
from nccidfs.log import strip_credentials
from nccidfs.objects import Listing
from nccidfs.s3.store import Boto3Store
from nccidfs.store.protocol import ObjectStore
from nccidfs.store.stats import RequestStats

log = logging.getLogger(__name__)

# The start-up probe answers within this long (or --timeout, if shorter), however the endpoint behaves.
PROBE_SECONDS = 5.0
FUSE_DEVICE = Path("/dev/fuse")
FUSE_CONF = Path("/etc/fuse.conf")
FUSERMOUNT = "fusermount3"
# Where libfuse looks for fusermount3 before PATH (its build's bin directory on Debian, Ubuntu and RHEL).
FUSERMOUNT_DIRS = ("/usr/bin", "/bin")
ASK_ADMIN = "ask an administrator, or mount as root (see docs/cluster.md)"


def check_mountpoint(path: Path) -> None:
    """Refuse a mount point that is missing, not a directory, in use or not empty."""
    try:
        if os.path.ismount(path):
            raise ConfigError(f"mount point {path} is already mounted (unmount it with: fusermount3 -u {path})")
        if not path.exists():
            raise ConfigError(f"mount point {path} does not exist (create it with: mkdir -p {path})")
        if not path.is_dir():
            raise ConfigError(f"mount point {path} is not a directory")
        with os.scandir(path) as entries:
            if any(True for _ in entries):
                raise ConfigError(f"mount point {path} is not empty")
    except OSError as error:
        raise ConfigError(f"mount point {path} is unusable ({error.strerror}); "
                          f"if a mount died, run: fusermount3 -u {path}") from None


def check_fuse(mount: MountConfig, device: Path = FUSE_DEVICE, fuse_conf: Path = FUSE_CONF,
               search: tuple[str, ...] = FUSERMOUNT_DIRS) -> None:
    """Refuse, in one line, what libfuse would report as a bare error number: a /dev/fuse this user cannot
    open, and for a user other than root a missing or unprivileged fusermount3, or --allow-other
    without ``user_allow_other`` in /etc/fuse.conf."""
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except FileNotFoundError:
        raise ConfigError(f"{device} is missing: load the fuse module (modprobe fuse), or give the container "
                          f"the device (--device {device})") from None
    except OSError as error:
        raise ConfigError(f"cannot open {device} ({error.strerror}): FUSE is closed to this user, and mounting "
                          f"needs {device} readable and writable by all (mode 0666); {ASK_ADMIN}") from None
    if os.geteuid() == 0:
        return  # root mounts with mount(2) itself, and may always let other users in
    program = next((found for found in (*(shutil.which(FUSERMOUNT, path=d) for d in search),
                                       shutil.which(FUSERMOUNT)) if found), None)
    if program is None:
        raise ConfigError(f"{FUSERMOUNT} is not installed, and a user needs it to mount (apt-get install fuse3); "
                          f"{ASK_ADMIN}")
    info = os.stat(program)
    if not (info.st_mode & stat.S_ISUID and info.st_uid == 0):
        raise ConfigError(f"{program} is not setuid root, so a user cannot mount with it (chmod u+s {program}); "
                          f"{ASK_ADMIN}")
    if (mount.allow_other or mount.allow_root) and not _allows_other(fuse_conf):
        flag = "--allow-other" if mount.allow_other else "--allow-root"
        raise ConfigError(f"{flag} needs the line user_allow_other in {fuse_conf}; {ASK_ADMIN}, "
                          f"or mount without {flag}")


def _allows_other(fuse_conf: Path) -> bool:
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        return False
    return any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines)


def check_cache_dir_placement(mountpoint: Path, cache_dir: Path) -> None:
    """Refuse a cache dir at or under the mount point (the daemon would wait on its own mount) or above it."""
    try:
        mount, cache = mountpoint.resolve(), cache_dir.resolve()
    except OSError as error:
        raise ConfigError(f"cannot resolve {cache_dir}: {error.strerror}") from None
    if cache == mount or mount in cache.parents:
        raise ConfigError(f"--cache-dir {cache_dir} is inside the mount point {mountpoint}; "
                          "choose a directory outside it")
    if cache in mount.parents:
        raise ConfigError(f"mount point {mountpoint} is inside the cache dir {cache_dir}; choose another")


def discover_root(store: ObjectStore, s3: S3Config) -> list[str] | Listing:
    """The prefix's own listing when this user may list it (the root is then that listing, with the same
    rules as any directory), else the folders under the prefix this user may list.

    Otherwise (the warehouse's per-modality IAM policy) each known folder is probed with a one-key
    listing and those that answer are shown.
    """
    where = f"s3://{s3.bucket}/{s3.prefix}"
    try:
        if store.probe(s3.prefix):
            return store.list_dir(s3.prefix)
    except AccessDenied:
        pass
    except NotFound as error:
        raise ConfigError(f"{where}: {error}") from None
    allowed: list[str] = []
    denied = 0
    for folder in s3.folders:
        try:
            if store.probe(f"{s3.prefix}{folder}/"):
                allowed.append(folder)
        except AccessDenied:
            denied += 1
    if allowed:
        log.info("listing %s is not allowed or empty; showing the folders you may list: %s", where,
                 ", ".join(allowed))
        return allowed
    if denied == len(s3.folders):
        raise ConfigError(f"{where}: access denied (these credentials may list none of its folders)")
    raise ConfigError(f"{where}: prefix not found (no objects under it)")


def open_store(s3: S3Config, fail_fast: bool = False, stats: RequestStats | None = None) -> ObjectStore:
    """The object store these settings reach: S3, through boto3 (the one backend so far; a second one is
    chosen here). ``fail_fast``: one attempt per request, for a probe that must answer in seconds;
    ``stats``: counters to share with an earlier store, instead of new ones."""
    return Boto3Store(s3, retry=not fail_fast, stats=stats)


def connect(s3: S3Config) -> tuple[ObjectStore, list[str] | Listing]:
    """Check credentials and reachability within seconds (one bounded attempt each), then the root folders.

    The probe's requests count in the returned store's statistics, so ``nccidfs status`` shows them.
    """
    limit = min(s3.deadline, PROBE_SECONDS)
    probe_config = dataclasses.replace(s3, connect_timeout=limit / 2, read_timeout=limit / 2, deadline=limit)
    probe_store = open_store(probe_config, fail_fast=True)
    try:
        folders = discover_root(probe_store, s3)
    except TransientError as error:  # a runtime failure (exit 1): the same command may work later
        endpoint = s3.endpoint_url or f"S3 in {s3.region}"
        raise TransientError(strip_credentials(f"cannot reach {endpoint}: {error}")) from None
    return open_store(s3, stats=probe_store.stats), folders


def serve(config: Config, store: ObjectStore, folders: list[str] | Listing,
          on_ready: Callable[[], None] | None = None, hangup_ends: bool = False) -> None:
    """Mount in the foreground of this process and serve until unmounted; ``hangup_ends``: SIGHUP ends the
    mount (a demo whose terminal closed) instead of dropping cached listings."""
    from nccidfs.daemon import Daemon

    daemon = Daemon(config, store, folders)  # a mount libfuse refuses is an NccidfsError from fuseops
    daemon.hangup_ends = hangup_ends
    daemon.serve(on_ready)
