"""What is done with manifests once made: split by patient, verify against S3, and diff two of them."""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from nccidfs.cohort.manifest import Row, patient_of
from nccidfs.errors import ConfigError
from nccidfs.layout import PATIENT_DEPTH
from nccidfs.objects import Listing
from nccidfs.store.protocol import ObjectStore

# A patient's place in [0, 1) is the first 8 bytes of SHA-256(seed, Patient_ID) over 2**64.
_HASH_BYTES = 8
LISTING_THREADS = 16


def parse_fractions(text: str) -> list[float]:
    try:
        fractions = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--fractions {text!r}: numbers separated by commas, e.g. 0.8,0.1,0.1") from None
    if len(fractions) < 2 or not all(math.isfinite(f) and f > 0 for f in fractions) or \
            abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"--fractions {text!r}: two or more positive fractions that add up to 1")
    return fractions


def part_of(patient: str, seed: str, fractions: Sequence[float]) -> int:
    """The part a patient falls in: a hash of the pseudonym with the seed, as NHSX split theirs; the
    same for the same seed and fractions in any cohort that holds the patient."""
    digest = hashlib.sha256(f"{seed}\0{patient}".encode()).digest()
    place = int.from_bytes(digest[:_HASH_BYTES], "big") / 2 ** (8 * _HASH_BYTES)
    bound = 0.0
    for number, fraction in enumerate(fractions[:-1]):
        bound += fraction
        if place < bound:
            return number
    return len(fractions) - 1


def split(rows: Sequence[Row], seed: str, fractions: Sequence[float]) -> list[list[Row]]:
    """Rows in parts by patient; a key outside a patient's folder is placed by its own hash."""
    parts: list[list[Row]] = [[] for _ in fractions]
    for row in rows:
        parts[part_of(patient_of(row[0]) or row[0], seed, fractions)].append(row)
    return parts


@dataclass
class Difference:
    added: list[str]
    removed: list[str]
    changed: list[str]


def diff(old: Sequence[Row], new: Sequence[Row]) -> Difference:
    """Keys added, removed and changed (another ETag or size) from ``old`` to ``new``."""
    before = {row[0]: row[1:3] for row in old}
    after = {row[0]: row[1:3] for row in new}
    return Difference(sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys()),
                      sorted(key for key in before.keys() & after.keys() if before[key] != after[key]))


def patients(rows: Sequence[Row]) -> set[str]:
    return {patient for row in rows if (patient := patient_of(row[0])) is not None}


def verify(rows: Sequence[Row], store: ObjectStore, prefix: str) -> Difference:
    """The manifest's objects against S3, by listings only (one flat listing per patient folder, or per
    folder for keys outside one): what vanished and what changed. ``added`` stays empty."""
    folders: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        parts = row[0].split("/")
        folders["".join(f"{part}/" for part in parts[:min(PATIENT_DEPTH, len(parts) - 1)])].append(row)

    def listing(folder: str) -> Listing:
        """A patient's folder in one flat listing; a folder above patients one level only."""
        if folder.count("/") == PATIENT_DEPTH:
            return store.list_tree(prefix + folder)
        return store.list_dir(prefix + folder)

    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        listings = dict(zip(folders, pool.map(listing, folders), strict=True))
    vanished, changed = [], []
    for folder, frozen in folders.items():
        now = {obj.key[len(prefix):]: (obj.size, obj.etag) for obj in listings[folder].objects}
        for key, size, etag, _ in frozen:
            if key not in now:
                vanished.append(key)
            elif now[key] != (size, etag):
                changed.append(key)
    return Difference([], sorted(vanished), sorted(changed))
