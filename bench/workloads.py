"""The client side of the benchmark's Python workloads, each run as a child process of bench/run.py.

A child process can be killed when a read through a mount hangs, and its own clock leaves out the
interpreter's start and its imports, which would otherwise weigh on sub-second workloads. Every
command prints one JSON object on its last line; ``seconds`` is the time of the work itself.

    python bench/workloads.py headers DIR
    python bench/workloads.py stat-missing DIR COUNT
    python bench/workloads.py md5 PATH...
    python bench/workloads.py boto3-prefix ENDPOINT BUCKET PREFIX
    python bench/workloads.py boto3-file ENDPOINT BUCKET KEY DEST
    python bench/workloads.py boto3-get ENDPOINT BUCKET KEY
    python bench/workloads.py loader LISTFILE THREADS
    python bench/workloads.py boto3-loader ENDPOINT BUCKET LISTFILE THREADS
    python bench/workloads.py boto3-store-loader ENDPOINT BUCKET LISTFILE THREADS DIR
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024


def headers(directory: str) -> dict[str, Any]:
    """Read every DICOM header of a series without its pixels, the way an indexing script does."""
    import pydicom

    started = time.monotonic()
    names = sorted(os.listdir(directory))
    numbers = [pydicom.dcmread(os.path.join(directory, name), stop_before_pixels=True).InstanceNumber
               for name in names]
    return {"seconds": time.monotonic() - started, "files": len(names), "instances": len(set(numbers))}


def stat_missing(directory: str, count: str) -> dict[str, Any]:
    """Stat names that do not exist in a listed directory: what a tool probing for sidecar files does."""
    started = time.monotonic()
    found = 0
    for n in range(int(count)):
        try:
            os.stat(os.path.join(directory, f"missing-{n:04d}.dcm"))
            found += 1
        except FileNotFoundError:
            pass
    return {"seconds": time.monotonic() - started, "found": found}


def md5(*paths: str) -> dict[str, Any]:
    """MD5 of each file (a directory stands for its files), to check the bytes a mount returns."""
    started = time.monotonic()
    files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            files.extend(os.path.join(path, name) for name in sorted(os.listdir(path)))
        else:
            files.append(path)
    digests = {}
    for path in files:
        digest = hashlib.md5()
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        digests[path] = digest.hexdigest()
    return {"seconds": time.monotonic() - started, "md5": digests}


def _client(endpoint: str, connections: int = 10) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(s3={"addressing_style": "path"}, max_pool_connections=connections))


def boto3_prefix(endpoint: str, bucket: str, prefix: str) -> dict[str, Any]:
    """List a prefix and GET each object in turn: the floor for reading a series file by file."""
    client = _client(endpoint)
    started = time.monotonic()
    total = objects = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]
            while chunk := body.read(CHUNK):
                total += len(chunk)
            objects += 1
    return {"seconds": time.monotonic() - started, "bytes": total, "objects": objects}


def boto3_file(endpoint: str, bucket: str, key: str, dest: str) -> dict[str, Any]:
    """s3transfer's parallel ranged download to a local file: the floor for one large object."""
    client = _client(endpoint)
    started = time.monotonic()
    client.download_file(bucket, key, dest)
    return {"seconds": time.monotonic() - started, "bytes": Path(dest).stat().st_size}


def boto3_get(endpoint: str, bucket: str, key: str) -> dict[str, Any]:
    """One ``get_object().read()``: a single stream, the floor a reader of one large object should reach."""
    client = _client(endpoint)
    started, cpu = time.monotonic(), _cpu()
    size = len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return {"seconds": time.monotonic() - started, "bytes": size, "cpu_seconds": _cpu() - cpu}


def _cpu() -> float:
    """CPU seconds of this process, all threads, user and system."""
    times = os.times()
    return times.user + times.system


def _threads(listfile: str, threads: str, read: Callable[[str], int]) -> dict[str, Any]:
    """Read every item listed (a line each) with ``threads`` workers, as a training job's data loader does;
    time and CPU of it."""
    items = [line for line in Path(listfile).read_text().splitlines() if line]
    started, cpu = time.monotonic(), _cpu()
    with ThreadPoolExecutor(int(threads)) as pool:
        total = sum(pool.map(read, items))
    return {"seconds": time.monotonic() - started, "bytes": total, "files": len(items), "cpu_seconds": _cpu() - cpu}


def loader(listfile: str, threads: str) -> dict[str, Any]:
    """Whole files, one after another per worker, in the order of ``listfile`` (drawn at random)."""
    def read(path: str) -> int:
        total = 0
        buffer = bytearray(CHUNK)
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                total += count
        return total
    return _threads(listfile, threads, read)


def boto3_loader(endpoint: str, bucket: str, listfile: str, threads: str) -> dict[str, Any]:
    """The same keys with ``get_object().read()`` from one client shared by the workers: the SDK floor."""
    client = _client(endpoint, int(threads))

    def read(key: str) -> int:
        return len(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return _threads(listfile, threads, read)


def boto3_store_loader(endpoint: str, bucket: str, listfile: str, threads: str, directory: str) -> dict[str, Any]:
    """The same keys, each body checked against its ETag's MD5 and written to a file of its own in
    ``directory``: the least a disk cache that verifies what it keeps must do, before any filesystem."""
    client = _client(endpoint, int(threads))

    def read(key: str) -> int:
        answer = client.get_object(Bucket=bucket, Key=key)
        body = answer["Body"].read()
        if hashlib.md5(body, usedforsecurity=False).hexdigest() != answer["ETag"].strip('"'):
            raise SystemExit(f"{key}: the body does not match its ETag")
        name = os.path.join(directory, hashlib.sha256(key.encode()).hexdigest())
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.pwrite(fd, body, 0)
        finally:
            os.close(fd)
        return len(body)
    return _threads(listfile, threads, read)


COMMANDS: dict[str, Callable[..., dict[str, Any]]] = {
    "headers": headers, "stat-missing": stat_missing, "md5": md5, "boto3-prefix": boto3_prefix,
    "boto3-file": boto3_file, "boto3-get": boto3_get, "loader": loader, "boto3-loader": boto3_loader,
    "boto3-store-loader": boto3_store_loader,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("arguments", nargs="*")
    args = parser.parse_args(argv)
    print(json.dumps(COMMANDS[args.command](*args.arguments)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
