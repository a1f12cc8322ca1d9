"""Assembly of a frozen mount: a cohort's store and root from its manifest, or S3's as of a date.

A cohort mount sends no request while it starts: the manifest is read and checked whole (a fault is
one line and exit 2, before anything is mounted), and its root is the manifest's own.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from nccidfs import cachedir, mount
from nccidfs.cohort import manifest, packed
from nccidfs.cohort.source import AsOfStore, FrozenStore, endpoint_host
from nccidfs.config import DEFAULT_BUCKET, DEFAULT_PREFIX, Config, S3Config
from nccidfs.errors import ConfigError
from nccidfs.objects import Listing
from nccidfs.store.protocol import ObjectStore

log = logging.getLogger(__name__)


def connect(config: Config) -> tuple[Config, ObjectStore, list[str] | Listing]:
    """The config, store and root of a mount: a cohort's, the bucket as of a date, or the bucket."""
    if config.mount.cohort is not None:
        return open_cohort(config, config.mount.cohort)
    store, root = mount.connect(config.s3)
    as_of = config.mount.as_of
    if as_of is None:
        return config, store, root
    config = dataclasses.replace(config, mount=dataclasses.replace(config.mount, view=f"as of {as_of!r}"))
    return config, AsOfStore(store, as_of), root


def open_cohort(config: Config, path: Path) -> tuple[Config, FrozenStore, Listing]:
    """Read and check a manifest for a mount of it: the config with the manifest's bucket and prefix,
    the store, and the root listing. Nothing is sent to S3."""
    s3 = warehouse_config(config.s3, manifest.read_header(path), path)
    header, digest, tree = packed.read_tree(path, cachedir.prepare(config.cache.directory), config.mount.as_of)
    root = tree.list_dir(s3.prefix)
    if not root.objects and not root.prefixes:
        when = "" if config.mount.as_of is None else f" last modified by {manifest.iso(config.mount.as_of)}"
        raise ConfigError(f"cohort {path}: holds no object{when}")
    view = f"cohort {digest}" + ("" if config.mount.as_of is None else f" as of {config.mount.as_of!r}")
    config = dataclasses.replace(config, s3=s3, mount=dataclasses.replace(config.mount, view=view))
    log.info("cohort %s: %d objects, %d bytes, from %s", header.name, tree.objects, tree.bytes, path)
    return config, FrozenStore(tree, mount.open_store(s3)), root


def warehouse_config(s3: S3Config, header: manifest.Header, path: Path) -> S3Config:
    """The bucket settings that reach the manifest's warehouse: its bucket and prefix, unless flags name
    others, and an endpoint of the same host (never a mount of something else)."""
    frozen = header.warehouse
    if s3.bucket not in (DEFAULT_BUCKET, frozen.bucket) or s3.prefix not in (DEFAULT_PREFIX, frozen.prefix):
        raise ConfigError(f"cohort {path} holds objects of s3://{frozen.bucket}/{frozen.prefix}, "
                          f"not of s3://{s3.bucket}/{s3.prefix}")
    s3 = dataclasses.replace(s3, bucket=frozen.bucket, prefix=frozen.prefix)
    if endpoint_host(s3) != frozen.endpoint:
        raise ConfigError(f"cohort {path} was frozen from {frozen.endpoint}, and these settings reach "
                          f"{endpoint_host(s3)}: give --endpoint-url (or --region) for {frozen.endpoint}")
    return s3
