"""Bench: reading a 1M-object cohort manifest into the daemon's packed tree (time and peak memory).

    python3 bench/cohort.py --objects 1000000

Writes a manifest of CT-shaped keys (two folders of 160 images per series, as the warehouse's CT and
ct-metadata), then, in a fresh interpreter, times reading and checking it into a FrozenTree and reports
that process's peak RSS (the daemon's own start-up on top of it is not measured here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nccidfs.cohort import manifest

IMAGES_PER_SERIES = 160


def make(path: Path, objects: int) -> None:
    rng = random.Random(1)
    rows: list[manifest.Row] = []
    patient = 0
    while len(rows) < objects:
        patient += 1
        study = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(100)}"
        series = f"1.2.826.0.1.3680043.8.498.{rng.getrandbits(100)}"
        for _ in range(IMAGES_PER_SERIES):
            image = f"{rng.getrandbits(128):032x}"
            for folder, ext in (("ct", "dcm"), ("ct-metadata", "json")):
                key = f"{folder}/Covid{patient}/{study}/{series}/{image}.{ext}"
                rows.append((key, rng.randrange(1 << 20), hashlib.md5(key.encode()).hexdigest(),
                             1_600_000_000.0 + rng.randrange(10**7)))
    rows = sorted(rows[:objects])
    header = manifest.Header(name="bench", warehouse=manifest.Warehouse("127.0.0.1:9400", "b", "training/"),
                             created=manifest.now_iso(), listed={}, selection={}, objects=len(rows),
                             bytes=sum(r[1] for r in rows), patients=patient)
    manifest.write(path, header, rows)


def load(path: Path) -> None:
    from nccidfs.cohort.tree import FrozenTree

    started = time.monotonic()
    tree = FrozenTree("training/")
    manifest.scan(path, tree.add)
    tree.finish()
    seconds = time.monotonic() - started
    print(json.dumps({"objects": tree.objects, "seconds": round(seconds, 2),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--load", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(args.load)
        return
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "bench.nccid-cohort"
        started = time.monotonic()
        make(path, args.objects)
        print(json.dumps({"written_seconds": round(time.monotonic() - started, 1),
                          "file_mib": round(path.stat().st_size / 1024**2, 1)}))
        for _ in range(3):
            subprocess.run([sys.executable, __file__, "--load", str(path)], check=True)


if __name__ == "__main__":
    main()
