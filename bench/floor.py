"""The floor under any FUSE walk of a folder on this machine, beside boto3's paginator over the same keys.

    python bench/floor.py --scale 1.0 --folder xray-metadata --runs 3

Runs ../shared/scale/synths3.py with an added latency per request, times boto3's paginator over
``training/FOLDER/`` (how users index today), keeps the keys it listed, and serves them as a tree from
memory through two small daemons that answer the requests a walk of nccidfs sends (no OPENDIR or
RELEASEDIR, READDIRPLUS with each sub-directory's attributes, names valid for 300 s), with no network:
``bench/floor/walkfloor.c``, libfuse's low-level API in C, and ``bench/floor/walkfloor.py``, the same
through the ctypes bindings nccidfs uses, every answer made before the mount. ``find FOLDER -type f``
over each, page cache dropped, on a new mount each run, then again on the same mount: with C, the least
a walk through FUSE costs here (the kernel's round trips and ``find``); with Python, the least it costs
a daemon written as nccidfs is. Prints the requests per directory, the CPU seconds of the daemon and of
``find``, and the ratio to boto3's time.

Needs gcc and libfuse3's headers (``apt-get install gcc pkg-config libfuse3-dev``); runs as root.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index_modality import BUCKET, REPO, boto3_paginator, start_synths3  # noqa: E402
from run import drop_caches  # noqa: E402
from views import cpu_seconds  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "floor" / "walkfloor.c"
PYTHON_FLOOR = SOURCE.with_suffix(".py")
PORT = 9417


def build(workdir: Path) -> Path:
    flags = subprocess.run(["pkg-config", "--cflags", "--libs", "fuse3"], capture_output=True, text=True,
                           check=True).stdout.split()
    binary = workdir / "walkfloor"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(SOURCE), *flags], check=True)
    return binary


def keys_of(endpoint: str, folder: str) -> list[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"training/{folder}/")
    return [item["Key"].removeprefix("training/") for page in pages for item in page.get("Contents", ())]


def timed_find(path: Path) -> tuple[float, float, int]:
    """Seconds, find's CPU seconds and the files found."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    found = subprocess.run(["find", str(path), "-type", "f"], capture_output=True, check=True).stdout.count(b"\n")
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, found


def counters(line: str) -> dict[str, int]:
    words = line.split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words) - 1, 2)}


@dataclass
class Walked:
    first: float
    find_cpu: float
    daemon_cpu: float
    found: int
    second: float
    requests: dict[str, int]


def walk_floor(command: list[str], keys: Path, mountpoint: Path, folder: str) -> Walked:
    """``find FOLDER -type f`` twice over a floor daemon mounted afresh, page cache dropped before the first."""
    mountpoint.mkdir()
    daemon = subprocess.Popen([*command, str(keys), str(mountpoint)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        while not os.path.ismount(mountpoint):
            if daemon.poll() is not None:
                raise SystemExit(f"{command[-1]} did not mount")
            time.sleep(0.05)
        drop_caches()
        cpu = cpu_seconds(daemon.pid)
        first, find_cpu, found = timed_find(mountpoint / folder)
        daemon_cpu = cpu_seconds(daemon.pid) - cpu
        second = timed_find(mountpoint / folder)[0]
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False)
        out, _ = daemon.communicate(timeout=60)
    return Walked(first, find_cpu, daemon_cpu, found, second, counters(out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--folder", default="xray-metadata")
    parser.add_argument("--latency-ms", type=float, default=20, help="added to every S3 request (default 20)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    endpoint = f"http://127.0.0.1:{PORT}"
    server = start_synths3(args.shared, args.scale, PORT, args.latency_ms)
    try:
        paginator = []
        for _ in range(args.runs):
            started = time.monotonic()
            boto3_paginator(endpoint, f"training/{args.folder}/")
            paginator.append(time.monotonic() - started)
        keys = keys_of(endpoint, args.folder)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
    folders = {key.rsplit("/", i)[0] for key in keys for i in range(1, key.count("/") + 1)}
    print(f"`training/{args.folder}/` at scale {args.scale}: {len(keys):,} keys, {len(folders):,} directories; "
          f"boto3's paginator at {args.latency_ms:g} ms a request, median of {args.runs}: "
          f"{statistics.median(paginator):.2f} s ({', '.join(f'{s:.2f}' for s in paginator)}); "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print("| daemon | run | first `find`: s | find CPU s | daemon CPU s | daemon CPU a request: us "
          "| requests a directory | second `find`: s | first / boto3 |\n|---|---|---|---|---|---|---|---|---|")
    firsts: dict[str, list[float]] = {"C": [], "Python": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        daemons = {"C": [str(build(workdir))], "Python": [sys.executable, str(PYTHON_FLOOR)]}
        (workdir / "keys").write_text("".join(key + "\n" for key in keys))
        for run in range(1, args.runs + 1):
            for name, command in daemons.items():
                walked = walk_floor(command, workdir / "keys", workdir / f"mnt-{name}-{run}", args.folder)
                assert walked.found == len(keys), f"the walk found {walked.found} files of {len(keys)}"
                requests = sum(count for kind, count in walked.requests.items() if kind != "nodes")
                firsts[name].append(walked.first)
                print(f"| {name} | {run} | {walked.first:.2f} | {walked.find_cpu:.2f} | {walked.daemon_cpu:.2f} "
                      f"| {walked.daemon_cpu / requests * 1e6:.0f} | {requests / len(folders):.2f} "
                      f"| {walked.second:.2f} | {walked.first / statistics.median(paginator):.2f} |")
    for name, times in firsts.items():
        print(f"\nfirst `find` with the {name} daemon, median of {args.runs}: {statistics.median(times):.2f} s, "
              f"{statistics.median(times) / statistics.median(paginator):.2f}x boto3's paginator")
    return 0


if __name__ == "__main__":
    sys.exit(main())
