"""Start-up: the checks a user gets wrong, discovery of the readable root folders, and wiring of the parts.

Everything here runs before the mount exists, so that each mistake becomes one clear line and a
non-zero exit instead of a mount that fails later.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from nccidfs.config import Config, S3Config
from nccidfs.errors import AccessDenied, ConfigError, NotFound, TransientError
from nccidfs.log import strip_credentials
from nccidfs.store import Boto3Store, ObjectStore

log = logging.getLogger(__name__)


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


def discover_root(store: ObjectStore, s3: S3Config) -> list[str]:
    """The folders under the prefix this user may list.

    The prefix itself is listed when allowed; otherwise (the warehouse's per-modality IAM policy)
    each known folder is probed with a one-key listing and those that answer are shown.
    """
    where = f"s3://{s3.bucket}/{s3.prefix}"
    try:
        if store.probe(s3.prefix):
            listing = store.list_dir(s3.prefix)
            return [p[len(s3.prefix):].rstrip("/") for p in listing.prefixes]
    except AccessDenied:
        pass
    except NotFound as error:
        raise ConfigError(f"{where}: {error}") from None
    except TransientError as error:
        endpoint = s3.endpoint_url or f"S3 in {s3.region}"
        raise ConfigError(strip_credentials(f"cannot reach {endpoint}: {error}")) from None
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


def connect(s3: S3Config) -> tuple[ObjectStore, list[str]]:
    """Check credentials and reachability quickly (one attempt each), then the root folders."""
    probe_store = Boto3Store(s3, max_attempts=1)
    folders = discover_root(probe_store, s3)
    return Boto3Store(s3), folders


def serve(config: Config, store: ObjectStore, folders: list[str],
          on_ready: Callable[[], None] | None = None) -> None:
    """Mount in the foreground of this process and serve until unmounted."""
    from nccidfs.daemon import Daemon

    Daemon(config, store, folders).serve(on_ready)
