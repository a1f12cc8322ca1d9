"""A manifest's packed tree kept in the cache directory under the manifest's SHA-256, so that mounting
the same cohort again (or showing it again under ``.nccidfs/cohorts/``) reads a few arrays instead of
decompressing and checking a million lines.

The file is the daemon's own (written whole under a temporary name, in the private cache directory),
and its name is the digest of a manifest that passed every check; a kept tree that does not read back
whole is ignored and made again. At most :data:`KEPT` are kept, the least recently used removed.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
from pathlib import Path

from nccidfs.cachedir import PACKED_FOLDER
from nccidfs.cohort import manifest
from nccidfs.cohort.tree import FrozenTree

log = logging.getLogger(__name__)

KEPT = 4
_SUFFIX = ".tree"
VERSION = 1  # of the kept tree's layout: part of its name


def file_digest(path: Path) -> str:
    """The SHA-256 of the manifest's bytes, as :func:`manifest.scan` computes it."""
    try:
        with path.open("rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise manifest.ManifestError(f"cohort manifest {path}: {error.strerror or error}") from None


def read_tree(path: Path, cache_dir: Path | None, as_of: float | None = None) -> tuple[manifest.Header, str,
                                                                                      FrozenTree]:
    """The manifest's header, digest and packed tree: the kept tree where there is one (none is kept for a
    date), else read from the manifest and kept in ``cache_dir`` when given."""
    header = manifest.read_header(path)
    kept = None
    if cache_dir is not None and as_of is None:
        digest = file_digest(path)
        kept = cache_dir / PACKED_FOLDER / f"{digest}-v{VERSION}{_SUFFIX}"
        tree = _load(kept)
        if tree is not None:
            return header, digest, tree
    tree = FrozenTree(header.warehouse.prefix, as_of)
    # The scan makes a few short-lived tuples per object and keeps almost no containers: the cyclic
    # collector would find nothing, and its passes cost about 15% of the time of a million objects.
    gc.disable()
    try:
        header, digest = manifest.scan(path, tree.add)
    finally:
        gc.enable()
    tree.finish()
    if kept is not None and kept.name.startswith(digest) and tree.objects:
        _keep(tree, kept)
    return header, digest, tree


def _load(path: Path) -> FrozenTree | None:
    try:
        with path.open("rb") as file:
            tree = FrozenTree.load(file)
        os.utime(path)  # recently used
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.info("kept cohort tree %s not used (%s); reading the manifest", path, error)
        return None
    return tree


def _keep(tree: FrozenTree, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with temporary.open("wb") as out:
            tree.dump(out)
        temporary.replace(path)
        kept = sorted(path.parent.glob(f"*{_SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEPT:]:
            old.unlink(missing_ok=True)
    except OSError as error:
        log.warning("could not keep the cohort's packed tree in %s: %s", path.parent, error)
        temporary.unlink(missing_ok=True)
