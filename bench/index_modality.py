"""How fast one whole modality can be indexed: nccidfs's listing engine against boto3's paginator.

Runs ../shared/scale/synths3.py (the warehouse's shape at any scale, without storing it) on loopback and
times, for one folder (default ``ct-metadata``):

- boto3: one flat ``list_objects_v2`` paginator over ``training/<folder>/`` (how users index today);
- nccidfs: what the daemon does for a walk of that folder: one delimited listing of the folder, then one
  flat listing per patient subtree, several at a time, each page read by nccidfs's page parser.

Both must find the same number of keys. Usage:

    python bench/index_modality.py --scale 1.0 [--folder ct-metadata] [--threads 8] [--skip-boto3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from nccidfs.config import S3Config
from nccidfs.s3.store import Boto3Store

REPO = Path(__file__).resolve().parents[1]
BUCKET = "nccid-data-warehouse-prod"


def start_synths3(shared: Path, scale: float, port: int, latency_ms: float = 0) -> subprocess.Popen[bytes]:
    server = subprocess.Popen([sys.executable, str(shared / "scale" / "synths3.py"), "--scale", str(scale),
                               "--port", str(port), "--latency-ms", str(latency_ms)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=1).read()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("synths3 did not start")


def stats(port: int) -> dict[str, object]:
    return dict(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats?reset=1").read()))


def boto3_paginator(endpoint: str, prefix: str, max_keys: int | None = None) -> int:
    """How users index today: one client, one flat paginated listing; stops after ``max_keys`` if given."""
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    keys = 0
    for page in pages:
        keys += len(page.get("Contents", ()))
        if max_keys is not None and keys >= max_keys:
            break
    return keys


def nccidfs_engine(endpoint: str, prefix: str, threads: int) -> int:
    store = Boto3Store(S3Config(bucket=BUCKET, endpoint_url=endpoint, max_connections=threads * 2))
    patients = store.list_dir(prefix).prefixes
    with ThreadPoolExecutor(threads) as pool:
        return sum(len(listing.objects) for listing in pool.map(store.list_tree, patients))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--folder", default="ct-metadata")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--port", type=int, default=9411)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder")
    parser.add_argument("--skip-boto3", action="store_true", help="time only nccidfs's engine")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    endpoint = f"http://127.0.0.1:{args.port}"
    prefix = f"training/{args.folder}/"
    server = start_synths3(args.shared, args.scale, args.port)
    results: dict[str, dict[str, float]] = {}
    try:
        runs: list[tuple[str, Callable[[], int]]] = [
            ("nccidfs", lambda: nccidfs_engine(endpoint, prefix, args.threads))]
        if not args.skip_boto3:
            runs.append(("boto3 paginator", lambda: boto3_paginator(endpoint, prefix)))
        for name, run in runs:
            stats(args.port)
            started = time.monotonic()
            keys = run()
            seconds = time.monotonic() - started
            requests = stats(args.port)["total_requests"]
            results[name] = {"keys": keys, "seconds": round(seconds, 1), "keys_per_second": round(keys / seconds),
                             "requests": float(str(requests))}
            print(f"{name:16s} {keys:>9d} keys  {seconds:8.1f} s  {keys / seconds:>9.0f} keys/s  "
                  f"{requests} requests", flush=True)
    finally:
        server.terminate()
        server.wait(10)
    if len(results) == 2:
        nccidfs, boto = results["nccidfs"], results["boto3 paginator"]
        assert nccidfs["keys"] == boto["keys"], "the two listings disagree"
        print(f"speed-up: {boto['seconds'] / nccidfs['seconds']:.1f}x at scale {args.scale} ({args.folder})")


if __name__ == "__main__":
    main()
